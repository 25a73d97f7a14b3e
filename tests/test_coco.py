"""COCO captions, read from a small made-up copy in the official release's layout (with the bad inputs a
real copy can have) and from tensorflow-datasets' mock data; nothing here has the real COCO."""

import json

import numpy as np
import pytest
from PIL import Image

from minidiff.datasets import DATASETS, DatasetNotFound, find_local_copy, load_dataset
from minidiff.datasets.coco import load_coco


def _release(root, part, images):
    """annotations/captions_{part}2017.json and {part}2017/ for images [(id, colour or None, captions)]:
    None writes no file."""
    folder = root / f"{part}2017"
    folder.mkdir(parents=True)
    entries, annotations = [], []
    for image_id, colour, captions in images:
        name = f"{image_id:012d}.jpg"
        entries.append({"id": image_id, "file_name": name, "height": 30, "width": 40})
        annotations += [{"id": 1000 * image_id + k, "image_id": image_id, "caption": c} for k, c in enumerate(captions)]
        if colour is not None:
            Image.new("RGB", (40, 30), colour).save(folder / name)
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"captions_{part}2017.json").write_text(
        json.dumps({"images": entries, "annotations": annotations}))


@pytest.fixture()
def coco(tmp_path):
    root = tmp_path / "coco"
    _release(root, "train", [(9, (200, 0, 0), ["A red bus on a street.", "a bus parked by the road"]),
                             (25, (0, 200, 0), ["A giraffe eating leaves."]),
                             (30, None, ["an image whose file is missing"]),
                             (34, (0, 0, 200), ["  ", "{}"])])  # no usable caption
    _release(root, "val", [(139, (90, 90, 90), ["A living room with a couch."]),
                           (285, (250, 250, 0), ["A big brown bear.", "a bear sitting in grass"])])
    return root


def test_coco_official_layout_splits_and_bad_inputs(coco):
    train = load_coco(coco, "train", image_size=16)
    assert train.images.shape == (2, 16, 16, 3)
    assert train.captions == (("A red bus on a street.", "a bus parked by the road"), ("A giraffe eating leaves.",))
    assert train.skipped["image in the captions file with no image file"] == 1
    assert train.skipped["image with no usable caption (skipped)"] == 1
    assert np.allclose(train.images[0].reshape(-1, 3).mean(0), (200, 0, 0), atol=3)  # the red bus, cropped square
    assert train.labels == {} and not train.flip_ok  # no classes; "to the left of" must stay true
    held_out = load_coco(coco, "eval", image_size=16)
    assert held_out.captions[1][0] == "A big brown bear." and len(held_out) == 2
    assert len(load_coco(coco, "all", image_size=16)) == 4
    assert len(load_coco(coco, "all_but_eval", image_size=16)) == 2  # train, every val image being in eval
    with pytest.raises(ValueError, match="no classes"):
        load_coco(coco, "train_classes")


def test_coco_through_load_dataset_and_a_clear_error_without_it(coco, tmp_path, monkeypatch):
    assert "coco" in DATASETS
    assert find_local_copy("coco", coco.parent) == coco  # a folder named like the dataset, inside data_dir
    monkeypatch.setenv("MINIDIFF_CACHE_DIR", str(tmp_path / "cache"))
    dataset = load_dataset("coco", "val", image_size=8, data_dir=coco)
    assert dataset.name == "coco-val" and dataset.images.shape == (2, 8, 8, 3)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(DatasetNotFound, match="captions_train2017.json"):
        load_dataset("coco", data_dir=tmp_path / "nowhere")


def test_coco_from_tensorflow_datasets_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow", reason="tfds defines coco_captions only with TensorFlow installed")
    from minidiff.datasets.coco import load_coco_tfds
    from minidiff.datasets.tfds_source import tfds_builder

    with tfds.testing.mock_data(num_examples=3):  # mock captions are random text, images random sizes
        coco = load_coco_tfds(tfds_builder("coco"), "all", image_size=16)
    assert coco.images.shape[1:] == (16, 16, 3) and 1 <= len(coco) <= 6
    assert all(isinstance(c, str) for options in coco.captions for c in options)
