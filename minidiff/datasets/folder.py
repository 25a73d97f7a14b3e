"""A reader's own images: a folder of pictures and their captions.

Captions come from either
  captions.jsonl   one JSON object per line: {"file": "cat.jpg", "caption": "a cat"}
                   ("captions": [...] for several; "file" relative to the folder), or
  cat.txt          a text file beside cat.jpg, one caption per line.
A folder has no splits: every captioned image is used. Images are cropped
to their centred square and resized. An image with no
caption, or a caption naming a missing image, is skipped and counted.
"""

import json
from pathlib import Path

from minidiff.datasets.base import CaptionedImages
from minidiff.datasets.files import (IMAGE_SUFFIXES, NO_USABLE_CAPTION, ImageRecord, Skipped, read_caption_file,
                                     read_dataset, usable_captions)


def _jsonl_captions(path: Path, skipped: Skipped) -> dict[Path, list[str]]:
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
            texts = row["captions"] if "captions" in row else [row["caption"]]
            texts = [texts] if isinstance(texts, str) else list(texts)
            file = path.parent / row["file"]
        except (json.JSONDecodeError, KeyError, TypeError):
            skipped.add('malformed line in captions.jsonl (expected {"file": ..., "caption": ...})', where)
            continue
        captions.setdefault(file, []).extend(usable_captions(texts, where, skipped))
    return captions


def load_folder(root, image_size: int = 64) -> CaptionedImages:
    """Every image under `root` that has a caption (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    skipped = Skipped()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    jsonl = root / "captions.jsonl"
    from_jsonl = _jsonl_captions(jsonl, skipped) if jsonl.is_file() else {}
    for named in sorted(set(from_jsonl) - set(files)):
        skipped.add("caption for an image that is not in the folder", named)

    records = []
    for path in files:
        captions = list(from_jsonl.get(path, []))
        if path.with_suffix(".txt").is_file():
            captions += read_caption_file(path.with_suffix(".txt"), skipped) or ()
        if not captions:
            skipped.add(NO_USABLE_CAPTION, path)
            continue
        records.append(ImageRecord(path, tuple(captions)))
    if not records:
        skipped.report(f"folder {root}")
        raise ValueError(
            f"no captioned images in {root}: add captions.jsonl ({{\"file\": \"a.jpg\", \"caption\": \"...\"}} "
            "per line) or a .txt file beside each image"
        )
    return read_dataset(f"folder-{root.name}", records, image_size, (), skipped)
