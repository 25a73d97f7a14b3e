"""Datasets: every one is a `CaptionedImages` (uint8 images, captions, labels).

    toy, toy-flowers, toy-birds   the embedded generated set (no download)
    flowers                       Oxford-102, from a local copy or tensorflow-datasets
    birds                         CUB-200-2011, from a local copy or tensorflow-datasets
    coco                          COCO captions, from a local copy or tensorflow-datasets
    folder                        your own images with captions (data_dir = the folder)
"""

import os
from pathlib import Path

from minidiff.datasets.base import CaptionedImages, check_images
from minidiff.datasets.birds import find_cub_root, load_birds
from minidiff.datasets.cache import cached
from minidiff.datasets.coco import is_coco_copy, load_coco, load_coco_tfds
from minidiff.datasets.flowers import is_flowers_copy, load_flowers
from minidiff.datasets.folder import load_folder
from minidiff.datasets.tfds_source import DatasetNotFound, load_tfds, tfds_builder
from minidiff.datasets.toy import toy_dataset

TOY = {"toy": ("flowers", "birds"), "toy-flowers": ("flowers",), "toy-birds": ("birds",)}
DATASETS = (*TOY, "flowers", "birds", "coco", "folder")

# Where a local copy is looked for when no data_dir is given.
DATA_DIR_VARIABLE = "MINIDIFF_DATA_DIR"
LAYOUTS = {
    "flowers": "jpg/image_00001.jpg + imagelabels.mat + setid.mat, or jpg/<label>/image_00001.jpg + cat_to_name.json",
    "birds": "CUB_200_2011/images.txt, images/, image_class_labels.txt, train_test_split.txt, bounding_boxes.txt, classes.txt",
    "coco": "annotations/captions_train2017.json, annotations/captions_val2017.json, train2017/, val2017/",
}
# Words in a folder's name that say which dataset it may hold, and how to tell that it does.
HINTS = {"flowers": ("flower", "102"), "birds": ("cub", "bird"), "coco": ("coco",)}
IS_COPY = {"flowers": is_flowers_copy, "birds": lambda p: find_cub_root(p) is not None, "coco": is_coco_copy}
LOADERS = {"flowers": load_flowers, "birds": load_birds, "coco": load_coco}


def find_local_copy(name: str, data_dir=None) -> Path | None:
    """A folder holding a local copy of flowers, birds or COCO: `data_dir` itself or a folder in it
    whose name mentions the dataset; without data_dir, $MINIDIFF_DATA_DIR and ./data are searched."""
    if data_dir is not None:
        places = [Path(data_dir)]
    else:
        places = [Path(p) for p in (os.environ.get(DATA_DIR_VARIABLE), "data") if p]
    hints, is_copy = HINTS[name], IS_COPY[name]
    for place in places:
        if not place.is_dir():
            continue
        candidates = [place] + sorted(p for p in place.iterdir() if p.is_dir() and any(h in p.name.lower() for h in hints))
        for candidate in candidates:
            if is_copy(candidate):
                return candidate
    return None


def load_dataset(name: str, split: str = "train", image_size: int = 32, num_images: int = 8000, seed: int = 0,
                 data_dir=None, cache_dir=None, use_cache: bool = True, download: bool = False) -> CaptionedImages:
    """Load a dataset by name (see the module docstring).

    Flowers and birds are read from a local copy when one is found (see
    `find_local_copy`), else from tensorflow-datasets if it has them prepared
    (or downloads them, with download=True). Local copies and folders are
    decoded once and cached (see `minidiff.datasets.cache`).
    num_images and seed apply to the embedded set only; a folder has no splits (all its images are used).
    """
    if name in TOY:
        return toy_dataset(TOY[name], split=split, num_images=num_images, image_size=image_size, seed=seed)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {DATASETS}")
    if name == "folder":
        if data_dir is None:
            raise ValueError("the folder dataset needs data_dir (--data-dir): the folder of images and captions")
        build = lambda: load_folder(data_dir, image_size)  # noqa: E731
        return cached(build, dataset=name, split="all", image_size=image_size, root=data_dir, cache_dir=cache_dir) if use_cache else build()

    root = find_local_copy(name, data_dir)
    if root is not None:
        build = lambda: LOADERS[name](root, split, image_size)  # noqa: E731
        return cached(build, dataset=name, split=split, image_size=image_size, root=root, cache_dir=cache_dir) if use_cache else build()
    looked = f"in {data_dir}" if data_dir is not None else f"in ${DATA_DIR_VARIABLE} and ./data"
    try:
        if name == "coco":
            return load_coco_tfds(tfds_builder(name, download=download), split, image_size)
        return load_tfds(name, split, image_size, download=download)
    except DatasetNotFound as error:
        raise DatasetNotFound(
            f"{name}: no local copy found {looked}, and {error}.\n"
            f"Point minidiff at a local copy with --data-dir PATH (or ${DATA_DIR_VARIABLE}); "
            f"the layout it reads: {LAYOUTS[name]}"
        ) from None


__all__ = ["CaptionedImages", "DATASETS", "DatasetNotFound", "TOY", "check_images", "find_local_copy", "load_dataset",
           "toy_dataset"]
