"""Preprocess once: a decoded, resized dataset saved as uint8 arrays, with a manifest.

Decoding thousands of JPEGs takes seconds to minutes; reading the same images
back from one .npz takes a fraction of a second, so epochs never decode a
JPEG. The cache is keyed by what produced it (dataset, split, size, where the
files are and when they last changed), written atomically (a half-written
file never has the final name), and read without pickle.

    <cache dir>/<dataset>-<split>-<size>px-<key>.npz     images, captions, labels
    <cache dir>/<dataset>-<split>-<size>px-<key>.json    the manifest: source, size, counts
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from minidiff.datasets.base import CaptionedImages
from minidiff.machinery.atomic import atomic_write

CACHE_VERSION = 2  # 2: captions with no words are dropped


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINIDIFF_CACHE_DIR", Path.home() / ".cache" / "minidiff"))


def source_fingerprint(root: Path) -> list:
    """Names, sizes and modification times of the source's top two folder levels: adding,
    removing or replacing files there (or in the folders right below) changes it."""
    entries = []
    for path in sorted([root, *root.iterdir(), *(p for d in root.iterdir() if d.is_dir() for p in d.iterdir())]):
        info = path.stat()
        entries.append([str(path.relative_to(root)), info.st_size, info.st_mtime_ns])
    return entries


def save_dataset(dataset: CaptionedImages, path: Path, manifest: dict) -> None:
    arrays = {
        "images": dataset.images,
        "captions": np.array([c for options in dataset.captions for c in options], dtype=str),
        "captions_per_image": np.array([len(options) for options in dataset.captions], np.int64),
    }
    for name, values in dataset.labels.items():
        arrays[f"label/{name}"] = values
        arrays[f"label_names/{name}"] = np.array(dataset.label_names.get(name, ()), dtype=str)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    # The manifest goes last: its presence says the arrays beside it are complete.
    text = json.dumps(manifest, indent=2).encode()
    atomic_write(path.with_suffix(".json"), lambda f: f.write(text))


def load_cached(path: Path, manifest: dict) -> CaptionedImages:
    with np.load(path, allow_pickle=False) as data:
        captions, counts = list(data["captions"]), data["captions_per_image"]
        starts = np.concatenate([[0], np.cumsum(counts)])
        labels = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("label/")}
        names = {k.split("/", 1)[1]: tuple(data[k].tolist()) for k in data.files if k.startswith("label_names/")}
        return CaptionedImages(
            name=manifest["dataset"],
            images=data["images"],
            captions=tuple(tuple(captions[a:b]) for a, b in zip(starts[:-1], starts[1:])),
            labels=labels,
            label_names=names,
            flip_ok=manifest["flip_ok"],
            skipped=manifest["skipped"],
        )


def cached(build, *, dataset: str, split: str, image_size: int, root: Path, cache_dir=None) -> CaptionedImages:
    """`build()` the first time; afterwards the saved arrays, as long as the source is unchanged."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = Path(root).resolve()
    key_source = json.dumps([CACHE_VERSION, dataset, split, image_size, str(root), source_fingerprint(root)])
    key = hashlib.sha256(key_source.encode()).hexdigest()[:12]
    path = cache_dir / f"{dataset}-{split}-{image_size}px-{key}.npz"
    if path.is_file() and path.with_suffix(".json").is_file():
        manifest = json.loads(path.with_suffix(".json").read_text())
        result = load_cached(path, manifest)
        skipped = sum(manifest["skipped"].values())
        print(f"{dataset} {split}: {len(result)} images from the cache {path}"
              + (f" ({skipped} problem(s) noted when it was built: see {path.with_suffix('.json').name})" if skipped else ""))
        return result
    start = time.perf_counter()
    result = build()
    manifest = {
        "dataset": result.name, "source": str(root), "split": split, "image_size": image_size,
        "images": len(result), "captions": sum(len(c) for c in result.captions),
        "classes": len(set(result.labels["class"].tolist())) if "class" in result.labels else 0,
        "skipped": result.skipped, "flip_ok": result.flip_ok,
        "seconds_to_build": round(time.perf_counter() - start, 2), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cache_version": CACHE_VERSION,
    }
    save_dataset(result, path, manifest)
    print(f"{dataset} {split}: {len(result)} images decoded in {manifest['seconds_to_build']} s, cached at {path}")
    return result
