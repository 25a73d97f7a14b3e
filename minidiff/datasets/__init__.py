"""Datasets: every one is a `CaptionedImages` (uint8 images, captions, labels)."""

from minidiff.datasets.base import CaptionedImages, check_images, to_model_range, to_uint8
from minidiff.datasets.toy import toy_dataset

DATASETS = {
    "toy": ("flowers", "birds"),
    "toy-flowers": ("flowers",),
    "toy-birds": ("birds",),
}


def load_dataset(name: str, split: str = "train", image_size: int = 32, num_images: int = 8000, seed: int = 0):
    """Load a dataset by name. The embedded ones ("toy", "toy-flowers", "toy-birds") need no download."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {sorted(DATASETS)}")
    return toy_dataset(DATASETS[name], split=split, num_images=num_images, image_size=image_size, seed=seed)


__all__ = ["CaptionedImages", "DATASETS", "check_images", "load_dataset", "to_model_range", "to_uint8", "toy_dataset"]
