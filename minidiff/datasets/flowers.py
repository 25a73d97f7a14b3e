"""Oxford-102 Flowers (Nilsback & Zisserman 2008) from a local copy, with captions.

Two layouts are read, and mixtures of them:
  original     jpg/image_00001.jpg ... + imagelabels.mat (+ setid.mat for the splits)
  per class    jpg/<label>/image_00001.jpg (or <label>/... at the top) + cat_to_name.json
Captions: Reed et al. 2016's text_c10/class_00001/image_00001.txt (ten per
image) when the copy has them; otherwise sentences made from the class name.
Images are cropped to their centred square and resized.
"""

import json
import re
from pathlib import Path

import numpy as np

from minidiff.datasets.base import CaptionedImages, with_articles
from minidiff.datasets.files import ImageRecord, Skipped, captions_for, read_dataset
from minidiff.datasets.splits import NUM_TEST_CLASSES, seeded_test_classes, select, test_classes_from_file

# Class names in label order (label 1 = "pink primrose"), for copies without cat_to_name.json.
CLASS_NAMES = (
    'pink primrose', 'hard-leaved pocket orchid', 'canterbury bells', 'sweet pea',
    'english marigold', 'tiger lily', 'moon orchid', 'bird of paradise', 'monkshood',
    'globe thistle', 'snapdragon', "colt's foot", 'king protea', 'spear thistle', 'yellow iris',
    'globe-flower', 'purple coneflower', 'peruvian lily', 'balloon flower',
    'giant white arum lily', 'fire lily', 'pincushion flower', 'fritillary', 'red ginger',
    'grape hyacinth', 'corn poppy', 'prince of wales feathers', 'stemless gentian', 'artichoke',
    'sweet william', 'carnation', 'garden phlox', 'love in the mist', 'mexican aster',
    'alpine sea holly', 'ruby-lipped cattleya', 'cape flower', 'great masterwort', 'siam tulip',
    'lenten rose', 'barbeton daisy', 'daffodil', 'sword lily', 'poinsettia', 'bolero deep blue',
    'wallflower', 'marigold', 'buttercup', 'oxeye daisy', 'common dandelion', 'petunia',
    'wild pansy', 'primula', 'sunflower', 'pelargonium', 'bishop of llandaff', 'gaura', 'geranium',
    'orange dahlia', 'pink-yellow dahlia', 'cautleya spicata', 'japanese anemone',
    'black-eyed susan', 'silverbush', 'californian poppy', 'osteospermum', 'spring crocus',
    'bearded iris', 'windflower', 'tree poppy', 'gazania', 'azalea', 'water lily', 'rose',
    'thorn apple', 'morning glory', 'passion flower', 'lotus lotus', 'toad lily', 'anthurium',
    'frangipani', 'clematis', 'hibiscus', 'columbine', 'desert-rose', 'tree mallow', 'magnolia',
    'cyclamen', 'watercress', 'canna lily', 'hippeastrum', 'bee balm', 'ball moss', 'foxglove',
    'bougainvillea', 'camellia', 'mallow', 'mexican petunia', 'bromelia', 'blanket flower',
    'trumpet creeper', 'blackberry lily',
)

TEMPLATES = (
    "a photo of a {name}, a type of flower",
    "a {name} in bloom",
    "a close-up photo of a {name}",
)

_FILE_ID = re.compile(r"image_(\d+)\.jpe?g$", re.IGNORECASE)


def is_flowers_copy(root: Path) -> bool:
    return (root / "imagelabels.mat").is_file() or (root / "jpg").is_dir() or (root / "cat_to_name.json").is_file()


def class_captions(name: str) -> tuple[str, ...]:
    return tuple(with_articles(t.format(name=name)) for t in TEMPLATES)


def _image_files(root: Path) -> dict[int, tuple[Path, int | None]]:
    """image id -> (path, label from its folder or None), for every image_XXXXX.jpg in either layout."""
    found = {}
    folders = [root / "jpg"] if (root / "jpg").is_dir() else [root]
    for folder in folders:
        for path in folder.rglob("*"):
            match = _FILE_ID.search(path.name)
            if not match or not path.is_file():
                continue
            parent = path.parent.name
            found[int(match.group(1))] = (path, int(parent) if parent.isdigit() else None)
    return found


def _mat_vector(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat  # scipy comes with jax

    return np.asarray(loadmat(path)[key]).ravel().astype(np.int64)


def load_flowers(root, split: str = "train", image_size: int = 64) -> CaptionedImages:
    """Oxford-102 from a local copy at `root` (see the module docstring for the layouts)."""
    root = Path(root)
    skipped = Skipped()
    files = _image_files(root)
    if not files:
        raise FileNotFoundError(f"no Oxford-102 images (image_XXXXX.jpg) under {root / 'jpg'} or {root}")

    # Every image id with its label: from imagelabels.mat when present, else from the folders.
    if (root / "imagelabels.mat").is_file():
        all_labels = _mat_vector(root / "imagelabels.mat", "labels")
        ids = np.arange(1, len(all_labels) + 1)
        for extra in sorted(set(files) - set(ids.tolist())):
            skipped.add("image file with no entry in imagelabels.mat (ignored)", files[extra][0])
    else:
        ids = np.array(sorted(i for i, (_, label) in files.items() if label is not None), np.int64)
        if len(ids) == 0:
            raise FileNotFoundError(f"{root}: no imagelabels.mat and no per-class folders jpg/<label>/, so no labels")
        all_labels = np.array([files[i][1] for i in ids], np.int64)
    labels = all_labels - 1  # labels 1..102 -> class indices 0..101

    official = {}
    if (root / "setid.mat").is_file():
        position = {int(image_id): k for k, image_id in enumerate(ids)}
        for name, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
            mask = np.zeros(len(ids), bool)
            mask[[position[i] for i in _mat_vector(root / "setid.mat", key) if i in position]] = True
            official[name] = mask
    names = _class_names(root)
    class_ids = {f"class_{k + 1:05d}": k for k in range(len(names))}
    test_classes = test_classes_from_file(root, class_ids) or seeded_test_classes(len(names), NUM_TEST_CLASSES["flowers"])

    records = []
    text_dir = root / "text_c10"
    for k in select(split, labels, official, test_classes):
        image_id, label = int(ids[k]), int(labels[k])
        if image_id not in files:
            skipped.add("id in the metadata with no image file", f"image_{image_id:05d}.jpg")
            continue
        path = files[image_id][0]
        text = text_dir / f"class_{label + 1:05d}" / f"image_{image_id:05d}.txt" if text_dir.is_dir() else None
        captions = captions_for(path, text, lambda: class_captions(names[label]), skipped)
        if captions is not None:
            records.append(ImageRecord(path, captions, label))
    return read_dataset(f"flowers-{split}", records, image_size, names, skipped)


def _class_names(root: Path) -> tuple[str, ...]:
    path = root / "cat_to_name.json"
    if not path.is_file():
        return CLASS_NAMES
    names = list(CLASS_NAMES)
    for label, name in json.loads(path.read_text()).items():
        names[int(label) - 1] = name
    return tuple(names)
