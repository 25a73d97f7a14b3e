"""COCO captions (Lin et al. 2014; Chen et al. 2015): everyday scenes, five captions each, no classes.

The text-to-image papers' third dataset after flowers and birds (AttnGAN,
DM-GAN, and later every large model) is read from its official release:

    annotations/captions_train2017.json   {"images": [{"id", "file_name"}, ...],
    annotations/captions_val2017.json      "annotations": [{"image_id", "caption"}, ...]}
    train2017/000000000009.jpg ...  val2017/...

(the 2014 release's captions_train2014.json / train2014/ are read the same
way), or from tensorflow-datasets' `coco_captions`. Nothing here downloads
the 19 GB of images: the error says where to put them
(https://cocodataset.org/#download: 2017 Train/Val images and annotations).

Splits: `train` is the release's train set; `val`, `test` and `eval` its
val set (COCO's test captions are not public; `eval` is a fixed 1,000 of
val), `all_but_eval` every other image, `all` both. COCO has no classes, so
no class judge can be trained on it (the caption judge needs none) and it
has no class-disjoint split. Images are cropped to their centred square.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from minidiff.datasets.base import CaptionedImages
from minidiff.datasets.files import ImageRecord, Skipped, read_dataset, square_image, usable_captions
from minidiff.datasets.splits import select

RELEASES = ("2017", "2014")
# COCO's captions place things ("a dog to the left of a bench"): a mirrored image would contradict them.
FLIP_OK = False
DOWNLOAD_HINT = ("put COCO's annotations/captions_{train,val}2017.json and its train2017/ and val2017/ image folders "
                 "there (https://cocodataset.org/#download)")


def is_coco_copy(root: Path) -> bool:
    return any((root / "annotations" / f"captions_train{year}.json").is_file()
               or (root / "annotations" / f"captions_val{year}.json").is_file() for year in RELEASES)


def _official_parts(root: Path) -> dict[str, tuple[Path, Path]]:
    """{"train": (captions json, image folder), "val": ...} for the first release found in `root`."""
    for year in RELEASES:
        parts = {part: (root / "annotations" / f"captions_{part}{year}.json", root / f"{part}{year}")
                 for part in ("train", "val")}
        parts = {part: files for part, files in parts.items() if files[0].is_file()}
        if parts:
            return parts
    raise FileNotFoundError(f"no COCO captions (annotations/captions_train2017.json) in {root}: {DOWNLOAD_HINT}")


def _split_masks(part_of: np.ndarray) -> dict[str, np.ndarray]:
    """The official splits as masks; val stands in for test, whose captions COCO does not publish."""
    return {"train": part_of == "train", "val": part_of == "val", "test": part_of == "val"}


def _check_split(split: str) -> None:
    if split in ("train_classes", "test_classes"):
        raise ValueError(f"COCO has no classes, so no {split!r} split: use train, val, eval, all_but_eval or all")


def load_coco(root, split: str = "train", image_size: int = 64) -> CaptionedImages:
    """COCO captions from a local copy of the official release at `root`."""
    _check_split(split)
    root, skipped = Path(root), Skipped()
    entries, part_of = [], []  # (image file, captions) per image
    for part, (captions_file, folder) in _official_parts(root).items():
        release = json.loads(captions_file.read_text(encoding="utf-8"))
        captions: dict[int, list[str]] = {}
        for annotation in release["annotations"]:
            captions.setdefault(int(annotation["image_id"]), []).append(annotation["caption"])
        for image in sorted(release["images"], key=lambda image: int(image["id"])):
            entries.append((folder / image["file_name"], captions.get(int(image["id"]), [])))
            part_of.append(part)
    chosen = select(split, np.full(len(entries), -1), _split_masks(np.array(part_of)), set())
    records = []
    for k in chosen:
        path, lines = entries[k]
        if not path.is_file():
            skipped.add("image in the captions file with no image file", path)
            continue
        captions = usable_captions(lines, path, skipped)
        if captions:
            records.append(ImageRecord(path, captions))
        else:
            skipped.add("image with no usable caption (skipped)", path)
    if not records:
        raise FileNotFoundError(f"none of COCO's {split} images were found under {root}: {DOWNLOAD_HINT}")
    dataset = read_dataset(f"coco-{split}", records, image_size, (), skipped)
    return dataclasses.replace(dataset, labels={}, label_names={}, flip_ok=FLIP_OK)


def load_coco_tfds(builder, split: str = "train", image_size: int = 64) -> CaptionedImages:
    """COCO captions from tensorflow-datasets' prepared `coco_captions` builder
    (`minidiff.datasets.tfds_source.tfds_builder`)."""
    _check_split(split)
    parts = {"train": "train", "val": "val"}
    examples, part_of = [], []
    for part, tfds_split in parts.items():
        source = builder.as_data_source(split=tfds_split)
        examples += list(source)
        part_of += [part] * len(source)
    chosen = select(split, np.full(len(examples), -1), _split_masks(np.array(part_of)), set())
    skipped = Skipped()
    images, captions = [], []
    for k in tqdm(chosen, desc="reading coco_captions", unit="img"):
        example = examples[k]
        lines = [t.decode() if isinstance(t, bytes) else str(t) for t in example["captions"]["text"]]
        text = usable_captions(lines, example.get("image/filename", k), skipped)
        if not text:
            skipped.add("image with no usable caption (skipped)", example.get("image/filename", k))
            continue
        images.append(square_image(Image.fromarray(np.asarray(example["image"]).squeeze()), image_size))
        captions.append(text)
    skipped.report(f"coco-{split}")
    return CaptionedImages(name=f"coco-{split}",
                           images=np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8),
                           captions=tuple(captions), flip_ok=FLIP_OK, skipped=skipped.as_dict())
