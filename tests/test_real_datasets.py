"""Oxford-102, CUB-200-2011 and user folders, read from small copies the tests write in each
layout (with the bad inputs real data has), from tfds's mock data, and from ../shared/data
when it is there."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from minidiff.datasets import DatasetNotFound, find_local_copy, load_dataset
from minidiff.datasets.base import mirror_some
from minidiff.datasets.birds import load_birds
from minidiff.datasets.files import square_crop
from minidiff.datasets.flowers import load_flowers
from minidiff.datasets.folder import load_folder
from minidiff.datasets.splits import EVAL_SIZE, select

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _photo(path, colour, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


def _truncated_jpeg(path):
    _photo(path, (10, 200, 10), size=(64, 64))
    path.write_bytes(path.read_bytes()[:300])


@pytest.fixture()
def flowers_original(tmp_path):
    """jpg/image_0000k.jpg for ids 1..6 (3 missing-file and bad-file cases), labels 1,1,2,2,3,3."""
    root = tmp_path / "flowers"
    _photo(root / "jpg" / "image_00001.jpg", (200, 0, 0))
    _photo(root / "jpg" / "image_00002.jpg", (120, 120, 120), mode="L")  # grayscale
    _photo(root / "jpg" / "image_00003.jpg", (0, 0, 200), mode="CMYK")
    _truncated_jpeg(root / "jpg" / "image_00004.jpg")
    (root / "jpg" / "image_00005.jpg").write_bytes(b"not a jpeg at all")
    # id 6 is in the metadata but has no file
    savemat(root / "imagelabels.mat", {"labels": np.array([[1, 1, 2, 2, 3, 3]])})
    savemat(root / "setid.mat", {"trnid": np.array([[1, 2, 4]]), "valid": np.array([[5]]), "tstid": np.array([[3, 6]])})
    text = root / "text_c10"
    (text / "class_00001").mkdir(parents=True)
    (text / "class_00001" / "image_00001.txt").write_text("a red flower\n\nwith round petals\n{}\n")
    (text / "class_00001" / "image_00002.txt").write_text("{}\n  \n")  # no usable caption: the image is skipped
    return root  # only images 1 and 2 have caption files: the others get class-name captions


def test_flowers_original_layout_with_bad_files(flowers_original):
    all_images = load_flowers(flowers_original, "all", image_size=16)
    assert len(all_images) == 2 and all_images.images.shape == (2, 16, 16, 3)
    assert all_images.skipped == {
        "unreadable image file": 2, "id in the metadata with no image file": 1,
        "caption with no words (dropped)": 4, "image with no usable caption (skipped)": 1,
        "missing caption file (class-name captions used)": 3,
    }
    assert all_images.captions[0] == ("a red flower", "with round petals")  # text_c10, blank and {} lines dropped
    assert all_images.labels["class"].tolist() == [0, 1]
    cmyk = all_images.images[1]
    assert cmyk[8, 8, 2] > 150 and cmyk[8, 8, 0] < 60  # CMYK blue stays blue
    assert all_images.captions[1][0] == "a photo of a hard-leaved pocket orchid, a type of flower"  # label 2 by name
    assert len(load_flowers(flowers_original, "train", image_size=16)) == 1  # ids 1, 2 (4 is unreadable, 2 uncaptioned)
    assert len(load_flowers(flowers_original, "test", image_size=16)) == 1


def test_a_grayscale_image_becomes_equal_rgb(flowers_original):
    (flowers_original / "text_c10" / "class_00001" / "image_00002.txt").unlink()  # captioned by its class name
    gray = load_flowers(flowers_original, "all", image_size=16).images[1]
    assert np.all(gray == gray[..., :1]) and abs(int(gray[8, 8, 0]) - 120) <= 2


def test_flowers_per_class_layout_and_names(tmp_path):
    root = tmp_path / "flowers"
    _photo(root / "jpg" / "7" / "image_00010.jpg", (0, 200, 0))
    _photo(root / "jpg" / "9" / "image_00011.jpg", (0, 0, 200))
    (root / "cat_to_name.json").write_text(json.dumps({"7": "my orchid", "9": "my monkshood"}))
    data = load_flowers(root, "all", image_size=8)
    assert data.labels["class"].tolist() == [6, 8]
    assert data.captions[0][0] == "a photo of a my orchid, a type of flower"
    with pytest.raises(ValueError, match="no official 'train' split"):
        load_flowers(root, "train", image_size=8)  # no setid.mat


@pytest.fixture()
def cub(tmp_path):
    """Two classes, four images; image 1 is 200x100 with a red box where bounding_boxes.txt says."""
    root = tmp_path / "birds"
    cub = root / "CUB_200_2011"
    picture = np.full((100, 200, 3), 255, np.uint8)
    picture[40:60, 120:140] = (255, 0, 0)  # the "bird": x 120..140, y 40..60
    (cub / "images" / "001.Red_Bird").mkdir(parents=True)
    Image.fromarray(picture).save(cub / "images" / "001.Red_Bird" / "Red_Bird_0001.jpg", quality=95)
    _photo(cub / "images" / "001.Red_Bird" / "Red_Bird_0002.jpg", (200, 0, 0))
    _photo(cub / "images" / "002.Blue_Jay" / "Blue_Jay_0003.jpg", (0, 0, 200))
    files = ["001.Red_Bird/Red_Bird_0001.jpg", "001.Red_Bird/Red_Bird_0002.jpg", "002.Blue_Jay/Blue_Jay_0003.jpg",
             "002.Blue_Jay/Blue_Jay_0004.jpg"]  # the last has no file
    (cub / "images.txt").write_text("".join(f"{i} {f}\n" for i, f in enumerate(files, 1)))
    (cub / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n")
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 0\n")
    (cub / "bounding_boxes.txt").write_text("1 120.0 40.0 20.0 20.0\n2 0 0 40 30\n3 0 0 40 30\n4 0 0 5 5\n")
    (cub / "classes.txt").write_text("1 001.Red_Bird\n2 002.Blue_Jay\n")
    attributes = cub / "attributes"
    attributes.mkdir()
    (attributes / "attributes.txt").write_text(
        "1 has_wing_color::black\n2 has_wing_color::blue\n3 has_size::small_(5_-_9_in)\n4 has_primary_color::red\n")
    (attributes / "class_attribute_labels_continuous.txt").write_text("60 10 80 90\n5 70 10 0\n")
    return root


def test_cub_crop_around_the_enlarged_box(cub):
    data = load_birds(cub, "all", image_size=30)
    first = data.images[0].astype(int)
    # The crop is the 30x30 square centred on the 20x20 box: the red box fills the middle 20x20.
    assert np.all(np.abs(first[15, 15] - (255, 0, 0)) < 40)
    assert np.all(first[2, 2] > 200) and np.all(first[15, 2] > 200)  # white margin all round
    assert square_crop(200, 100, (120, 40, 20, 20)) == (115, 35, 145, 65)


def test_cub_captions_from_class_attributes_and_text_c10(cub):
    data = load_birds(cub, "all", image_size=8)
    assert len(data) == 3 and data.skipped == {"missing image file": 1}
    assert data.captions[0] == (
        "a photo of a red bird, a type of bird", "a small red bird with black wings", "this bird has black wings")
    assert data.captions[2][1] == "a bird with blue wings"  # class 2: only its wing colour passes 25 %
    text = cub / "text_c10" / "001.Red_Bird"
    text.mkdir(parents=True)
    (text / "Red_Bird_0001.txt").write_text("this red bird perches\n")
    assert load_birds(cub, "all", image_size=8).captions[0] == ("this red bird perches",)
    (text / "Red_Bird_0002.txt").write_text("{}\n")  # no usable caption: skipped
    assert load_birds(cub, "all", image_size=8).skipped == {
        "missing image file": 1, "caption with no words (dropped)": 1, "image with no usable caption (skipped)": 1,
        "missing caption file (class-name captions used)": 2}
    (text / "Red_Bird_0002.txt").unlink()
    (cub / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt").write_text("2 2 1 3 0.0\n2 1 1 2 0.0\n")
    per_image = load_birds(cub, "all", image_size=8)
    assert per_image.captions[1][1] == "a bird with blue wings"  # per image: the more certain wing colour
    assert load_birds(cub, "train", image_size=8).labels["class"].tolist() == [0, 1]


def test_user_folder_with_jsonl_and_txt_captions(tmp_path):
    _photo(tmp_path / "cat.jpg", (90, 60, 30))
    Image.new("RGBA", (20, 20), (0, 0, 255, 0)).save(tmp_path / "glass.png")  # fully transparent
    _photo(tmp_path / "sub" / "dog.png", (10, 10, 10))
    (tmp_path / "sub" / "dog.txt").write_text("a black dog\n")
    _photo(tmp_path / "nocaption.jpg", (0, 0, 0))
    _truncated_jpeg(tmp_path / "broken.jpg")
    (tmp_path / "captions.jsonl").write_text(
        '{"file": "cat.jpg", "caption": "a brown cat"}\n{"file": "glass.png", "captions": ["clear glass", ""]}\n'
        '{"file": "gone.jpg", "caption": "lost"}\nnot json\n{"file": "broken.jpg", "caption": "broken"}\n'
        '{"file": "nocaption.jpg", "caption": "{}"}\n')
    data = load_folder(tmp_path, image_size=8)
    assert [c[0] for c in data.captions] == ["a brown cat", "clear glass", "a black dog"]
    assert np.all(data.images[1] == 255)  # transparency laid on white
    assert data.skipped == {
        "caption for an image that is not in the folder": 1, "malformed line in captions.jsonl "
        '(expected {"file": ..., "caption": ...})': 1, "caption with no words (dropped)": 2,
        "image with no usable caption (skipped)": 1, "unreadable image file": 1,
    }
    with pytest.raises(ValueError, match="no captioned images"):
        load_folder(_empty(tmp_path), image_size=8)


def _empty(tmp_path):
    folder = tmp_path / "empty"
    _photo(folder / "a.jpg", (1, 2, 3))
    return folder


def test_cache_is_used_and_never_half_written(flowers_original, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_dataset("flowers", "all", image_size=16, data_dir=flowers_original, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npz")  # no temporary files
    manifest = json.loads(next(cache.glob("*.json")).read_text())
    assert manifest["images"] == 2 and manifest["captions"] == 5 and manifest["skipped"]["unreadable image file"] == 2

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr("minidiff.datasets.files.read_image", must_not_decode)
    second = load_dataset("flowers", "all", image_size=16, data_dir=flowers_original, cache_dir=cache)
    assert np.array_equal(first.images, second.images) and first.captions == second.captions
    assert np.array_equal(first.labels["class"], second.labels["class"]) and second.flip_ok
    # A build that fails part-way leaves nothing behind under the final names.
    with pytest.raises(AssertionError):
        load_dataset("flowers", "all", image_size=8, data_dir=flowers_original, cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == files


def test_splits_class_disjoint_and_fixed_eval():
    labels = np.repeat(np.arange(10), 300)
    official = {"test": np.arange(3000) % 2 == 0}
    train, test = (select(s, labels, official, {2, 5}) for s in ("train_classes", "test_classes"))
    assert set(labels[test]) == {2, 5} and not set(labels[train]) & {2, 5} and len(train) + len(test) == 3000
    evaluation = select("eval", labels, official, set())
    assert len(evaluation) == EVAL_SIZE and np.all(official["test"][evaluation])
    assert np.array_equal(evaluation, select("eval", labels, official, set()))


def test_mirror_flips_about_half_reproducibly():
    images = np.arange(64 * 4 * 4 * 3, dtype=np.uint8).reshape(64, 4, 4, 3)
    mirrored = mirror_some(images, seed=0, step=3)
    flipped = [i for i in range(64) if not np.array_equal(mirrored[i], images[i])]
    assert 16 < len(flipped) < 48
    assert all(np.array_equal(mirrored[i], images[i, :, ::-1]) for i in flipped)
    assert np.array_equal(mirrored, mirror_some(images, seed=0, step=3))


def test_missing_dataset_fails_fast_with_a_way_forward(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    start = time.perf_counter()
    with pytest.raises(DatasetNotFound, match="--data-dir"):
        load_dataset("birds", data_dir=tmp_path, download=True)
    assert time.perf_counter() - start < 10  # not tfds's minutes of retries
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("folder")


def test_tfds_mock_data_through_the_same_interface():
    tfds = pytest.importorskip("tensorflow_datasets")
    from minidiff.datasets.tfds_source import load_tfds

    with tfds.testing.mock_data(num_examples=6):  # mock images have random sizes
        flowers = load_tfds("flowers", "train", image_size=16)
        birds = load_tfds("birds", "all", image_size=16)
    assert flowers.images.shape == (6, 16, 16, 3) and birds.images.shape == (12, 16, 16, 3)
    assert flowers.captions[0][0].startswith("a photo of") and flowers.captions[0][0].endswith("a type of flower")
    assert birds.captions[0][0].endswith("a type of bird") and birds.flip_ok


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not on this machine")
def test_shared_data_is_read_completely(tmp_path):
    """All of Oxford-102 with Reed's captions, 13 of whose 81,890 lines are "{}"; the CUB subset."""
    flowers_root, birds_root = find_local_copy("flowers", SHARED), find_local_copy("birds", SHARED)
    assert flowers_root == SHARED / "oxford_flowers102"  # the whole dataset, not the old 128-px subset
    flowers = load_dataset("flowers", "all", image_size=8, data_dir=flowers_root, use_cache=False)
    assert len(flowers) == 8189 and len(set(flowers.labels["class"].tolist())) == 102
    assert flowers.skipped == {"caption with no words (dropped)": 13}
    assert sum(len(c) for c in flowers.captions) == 81890 - 13
    birds = load_dataset("birds", "all", image_size=16, data_dir=birds_root, use_cache=False)
    assert len(birds) == 543 and sum(len(c) for c in birds.captions) == 5430 and not birds.skipped
    assert len(set(birds.labels["class"].tolist())) == 10
