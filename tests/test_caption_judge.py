"""The caption judge (a small CLIP) and R-precision: the ranking against closed forms, the loss against its
value for embeddings that tell nothing apart, and a short training run that learns to pair captions."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.datasets import TOY, toy_dataset
from minidiff.evaluation.caption_judge import (CAPTION_JUDGE_TRAINING, DISTRACTORS, caption_metrics, contrastive_loss,
                                               load_caption_judge, r_precision, save_caption_judge,
                                               train_caption_judge, unit)


def _unit_rows(rng, n, dim=16):
    return np.asarray(unit(jnp.asarray(rng.normal(size=(n, dim)))))


def test_r_precision_is_one_when_each_image_is_its_caption_and_chance_when_unrelated():
    rng = np.random.default_rng(0)
    captions = _unit_rows(rng, 300)
    owner = np.arange(300)
    assert r_precision(captions, captions, captions, owner, owner, repeats=2) == 1.0
    unrelated = _unit_rows(rng, 300)
    chance = r_precision(unrelated, captions, captions, owner, owner, repeats=5)
    assert abs(chance - 1 / (DISTRACTORS + 1)) < 0.01  # 1,500 draws: the standard error is 0.26 %


def test_r_precision_counts_a_caption_beaten_by_any_distractor_as_a_miss():
    """Images 0..149 match their caption exactly; images 150..299 are the negative of theirs, which every
    other caption beats unless it is as far: half the images are hits."""
    rng = np.random.default_rng(1)
    captions = _unit_rows(rng, 300)
    images = captions.copy()
    images[150:] *= -1
    owner = np.arange(300)
    assert r_precision(images, captions, captions, owner, owner, repeats=1) == 0.5


class _Stub:
    """Embeddings given outright, to check the loss alone."""

    def __init__(self, image_vectors, caption_vectors, logit_scale):
        self.image_vectors, self.caption_vectors = image_vectors, caption_vectors
        self.log_logit_scale = jnp.log(jnp.float32(logit_scale))

    def embed_images(self, _):
        return self.image_vectors

    def embed_captions(self, _):
        return self.caption_vectors


def test_contrastive_loss_is_log_batch_when_nothing_is_told_apart_and_small_when_all_is():
    same = jnp.ones((8, 4)) / 2.0  # every image and caption the same unit vector
    assert float(contrastive_loss(_Stub(same, same, 10.0), None, None)) == pytest.approx(np.log(8), rel=1e-5)
    distinct = jnp.eye(8)
    # Each row: logits 100 on the diagonal, 0 elsewhere: the loss is log(1 + 7 e^-100), about 0.
    assert float(contrastive_loss(_Stub(distinct, distinct, 1000.0), None, None)) < 1e-6  # capped at 100


def test_a_short_run_learns_to_pair_images_with_their_captions(tmp_path):
    """On the embedded set, 150 steps of a tiny judge: captions of held-out images ranked well above chance,
    and the saved file gives the same figures."""
    training = toy_dataset(TOY["toy"], split="train", num_images=600, image_size=16, seed=0)
    judge = train_caption_judge(training, dataclasses.replace(CAPTION_JUDGE_TRAINING, steps=150, batch_size=32),
                                progress=False, text_dim=32, text_depth=1, widths=(16, 32), groups=4,
                                embedding_dim=32)
    held_out = toy_dataset(TOY["toy"], split="test", num_images=200, image_size=16, seed=1000)
    metrics = caption_metrics(judge, held_out.images[:120], held_out)
    assert metrics["r_precision_real"] > 5 / (DISTRACTORS + 1)  # chance is 1 %
    assert metrics["caption_similarity_real"] > 0
    path = save_caption_judge(judge, tmp_path / "caption-judge.npz")
    assert caption_metrics(load_caption_judge(path), held_out.images[:120], held_out) == metrics
