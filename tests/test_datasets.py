import numpy as np
import pytest

from minidiff.datasets import CaptionedImages, load_dataset, toy_dataset
from minidiff.datasets.base import caption_choices
from minidiff.datasets.toy import HELD_OUT
from minidiff.loop import batch_indices


def test_toy_dataset_is_deterministic_and_well_formed():
    a = toy_dataset(num_images=40, image_size=32, seed=5)
    b = toy_dataset(num_images=40, image_size=32, seed=5)
    assert a.images.shape == (40, 32, 32, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, toy_dataset(num_images=40, image_size=32, seed=6).images)
    assert set(a.labels["kind"]) == {0, 1}  # both flowers and birds


def test_captions_name_the_drawn_attributes():
    d = toy_dataset(num_images=30)
    for i in range(30):
        caption = d.captions[i][0]
        for name, values in d.label_names.items():
            if name != "kind" and d.labels[name][i] >= 0:
                assert values[d.labels[name][i]] in caption, (name, caption)


@pytest.mark.parametrize("kind", ["flowers", "birds"])
def test_held_out_pairs_appear_only_in_the_held_out_split(kind):
    (first, second), pairs = HELD_OUT[kind]
    for split, expect_held_out in (("train", False), ("test", False), ("held_out", True)):
        d = toy_dataset((kind,), split=split, num_images=300)
        seen = {(d.label_names[first][a], d.label_names[second][b]) for a, b in zip(d.labels[first], d.labels[second])}
        assert bool(seen & pairs) == expect_held_out
        if expect_held_out:
            assert seen <= pairs


def test_any_image_size():
    assert toy_dataset(num_images=4, image_size=48).images.shape == (4, 48, 48, 3)


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match="unknown split"):
        toy_dataset(split="validation")
    with pytest.raises(ValueError, match="unknown kind"):
        toy_dataset(("fish",))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def test_captioned_images_rejects_bad_images_and_captions():
    good = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        CaptionedImages("x", good.astype(np.float32), (("a",), ("b",)))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        CaptionedImages("x", np.zeros((2, 8, 8), np.uint8), (("a",), ("b",)))
    with pytest.raises(ValueError, match="square"):
        CaptionedImages("x", np.zeros((2, 8, 6, 3), np.uint8), (("a",), ("b",)))
    for no_words in ("  ", "{}"):
        with pytest.raises(ValueError, match="caption with no words"):
            CaptionedImages("x", good, (("a",), (no_words,)))
    with pytest.raises(ValueError, match="no caption"):
        CaptionedImages("x", good, (("a",), ()))
    with pytest.raises(ValueError, match="caption lists"):
        CaptionedImages("x", good, (("a",),))


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    n, batch = 10, 4
    drawn = np.concatenate([batch_indices(n, batch, seed=1, step=s) for s in range(5)])  # two epochs
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:20]) == list(range(10))
    assert np.array_equal(batch_indices(n, batch, 1, 3), batch_indices(n, batch, 1, 3))
    choice = caption_choices(np.array([1, 3, 10]), seed=0, step=0)
    assert choice[0] == 0 and 0 <= choice[1] < 3 and 0 <= choice[2] < 10
