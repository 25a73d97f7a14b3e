"""Oxford-102 and CUB-200-2011 through tensorflow-datasets (`oxford_flowers102`, `caltech_birds2011`).

We read them with `builder.as_data_source` (the array_record format): random
access to decoded examples without TensorFlow, which is ~1.3 GB and is only
needed by `tfds.load`. tensorflow-datasets itself is an optional extra
(`pip install "minidiff[tfds]"`): the local layouts need nothing beyond PIL.

Offline, tfds would retry a download for minutes before giving up. So nothing
is downloaded unless asked (`download=True`), and then only after a
three-second check that the download server can be reached.
"""

import socket

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from minidiff.datasets.base import CaptionedImages
from minidiff.datasets.birds import class_name, describe_bird
from minidiff.datasets.files import Skipped, captions_for, square_image
from minidiff.datasets.flowers import class_captions
from minidiff.datasets.splits import NUM_TEST_CLASSES, seeded_test_classes, select

TFDS_NAMES = {"flowers": "oxford_flowers102", "birds": "caltech_birds2011", "coco": "coco_captions"}
TFDS_SPLITS = {"flowers": {"train": "train", "val": "validation", "test": "test"}, "birds": {"train": "train", "test": "test"},
               "coco": {"train": "train", "val": "val"}}


class DatasetNotFound(FileNotFoundError):
    """A dataset that is neither on disk nor prepared by tensorflow-datasets."""


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _readable(builder, split: str) -> bool:
    """Whether the builder's examples can be read (prepared on disk, or mocked in tests)."""
    try:
        builder.as_data_source(split=split)
        return True
    except KeyError:  # tfds: "`splits` is empty ... the dataset has not been generated yet"
        return False


def tfds_builder(name: str, data_dir=None, download: bool = False):
    """The prepared tfds builder of `name` ("flowers", "birds" or "coco"), or DatasetNotFound at once."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DatasetNotFound(
            f"tensorflow-datasets is not installed, so {name} can only be read from local files "
            f'(--data-dir); or pip install "minidiff[tfds]"'
        ) from error
    try:
        builder = tfds.builder(TFDS_NAMES[name], data_dir=data_dir, file_format="array_record")
    except ImportError as error:  # some builders (coco_captions) import TensorFlow to be defined at all
        raise DatasetNotFound(f"tensorflow-datasets' {TFDS_NAMES[name]} needs {error.name or 'TensorFlow'}, which is "
                              "not installed") from error
    if _readable(builder, TFDS_SPLITS[name]["train"]):
        return builder
    where = f"tensorflow-datasets ({builder.data_dir})"
    if not download:
        raise DatasetNotFound(f"{TFDS_NAMES[name]} is not prepared in {where}; pass download=True (--download) to fetch it")
    if not _online():
        raise DatasetNotFound(f"cannot download {TFDS_NAMES[name]}: this machine cannot reach the internet")
    builder.download_and_prepare(file_format="array_record")
    return builder


def _class_captions(name: str, label_name: str, example) -> tuple[str, ...]:
    """Captions made from the class name, when no caption file is given."""
    if name == "flowers":
        return class_captions(label_name)
    bird = example.get("label_name", label_name)  # caltech_birds2011 carries the name per example
    return describe_bird({}, class_name(bird.decode() if isinstance(bird, bytes) else str(bird)))


def load_tfds(name: str, split: str = "train", image_size: int = 64, data_dir=None, download: bool = False,
              text_dir=None) -> CaptionedImages:
    """A split of flowers or birds from tensorflow-datasets, cropped and resized like the local copies.

    text_dir: a text_c10 folder to take captions from (matched by file name);
    otherwise captions are made from the class names.
    """
    builder = tfds_builder(name, data_dir, download)
    names = tuple(builder.info.features["label"].names)
    # Read only the tfds split(s) the requested split needs (see minidiff.datasets.splits).
    wanted = TFDS_SPLITS[name]
    official_name = "test" if split == "eval" else split
    parts = [official_name] if official_name in wanted else list(wanted)
    examples, part_of = [], []
    for part in parts:
        source = builder.as_data_source(split=wanted[part])
        examples += list(source)
        part_of += [part] * len(source)
    labels = np.array([int(e["label"]) for e in examples], np.int64)
    official = {part: np.array(part_of) == part for part in parts}  # each official split read, as a mask
    chosen = select(split, labels, official, seeded_test_classes(len(names), NUM_TEST_CLASSES[name]))

    skipped = Skipped()
    images, captions, kept = [], [], []
    for k in tqdm(chosen, desc=f"reading {TFDS_NAMES[name]}", unit="img"):
        example, label = examples[k], int(labels[k])
        file_name = example.get("file_name", example.get("image/filename", b""))
        file_name = file_name.decode() if isinstance(file_name, bytes) else str(file_name)
        folder = f"class_{label + 1:05d}/" if name == "flowers" else ""
        text_file = f"{text_dir}/{folder}{file_name.rsplit('.', 1)[0]}.txt" if text_dir is not None else None
        text = captions_for(file_name, text_file, lambda: _class_captions(name, names[label], example), skipped)
        if text is None:
            continue
        pixels = np.asarray(example["image"])
        box = None
        if "bbox" in example:  # normalised (ymin, xmin, ymax, xmax) -> pixel (x, y, width, height)
            height, width = pixels.shape[:2]
            ymin, xmin, ymax, xmax = np.asarray(example["bbox"], np.float64)
            box = (xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height)
        images.append(square_image(Image.fromarray(pixels.squeeze()), image_size, box))
        captions.append(text)
        kept.append(k)
    skipped.report(f"{name}-{split}")
    return CaptionedImages(
        name=f"{name}-{split}",
        images=np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8),
        captions=tuple(captions),
        labels={"class": labels[np.asarray(kept, np.int64)]},
        label_names={"class": names},
        flip_ok=True,
        skipped=skipped.as_dict(),
    )
