"""The judge: a small classifier of a dataset's labels."""

import dataclasses

import numpy as np
import pytest

from minidiff.datasets import toy_dataset
from minidiff.evaluation.judge import (JUDGE_TRAINING, JudgeConfig, features_and_predictions, label_agreement,
                                       load_judge, save_judge, train_judge)
from minidiff.machinery.checkpoints import CheckpointError, save_checkpoint


def test_label_agreement_skips_labels_that_do_not_apply():
    predictions = {"colour": np.array([0, 1, 2, 2]), "wings": np.array([1, 1, 0, 0])}
    labels = {"colour": np.array([0, 1, 1, 2]), "wings": np.array([1, -1, -1, 1])}
    assert label_agreement(predictions, labels) == {"colour": 0.75, "wings": 0.5}


def test_judge_learns_colours_and_round_trips_through_a_file(tmp_path):
    train = toy_dataset(("flowers",), num_images=512, image_size=16, seed=0)
    test = toy_dataset(("flowers",), split="test", num_images=128, image_size=16, seed=1)
    config = JudgeConfig.for_dataset(train)
    assert dict(config.heads)["petal_colour"] == 7 and "kind" not in dict(config.heads)  # one kind: nothing to learn
    judge = train_judge(train, dataclasses.replace(JUDGE_TRAINING, steps=150, batch_size=32), progress=False,
                        widths=(16, 32))
    features, predictions = features_and_predictions(judge, test.images)
    assert features.shape == (128, 32)
    accuracy = label_agreement(predictions, test.labels)
    chance = 1 / 7
    assert accuracy["petal_colour"] > 0.6 > chance and accuracy["background"] > 0.6, accuracy

    path = save_judge(judge, tmp_path / "judge.npz")
    again, _ = features_and_predictions(load_judge(path), test.images)
    np.testing.assert_array_equal(again, features)
    with pytest.raises(ValueError, match="trained on"):
        features_and_predictions(judge, np.zeros((2, 32, 32, 3), np.uint8))


def test_a_generator_checkpoint_is_not_a_judge(tmp_path, model):
    path = save_checkpoint(tmp_path / "generator.npz", {"step": 0}, model=model)
    with pytest.raises(CheckpointError, match="not a judge"):
        load_judge(path)
