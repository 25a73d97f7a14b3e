"""CUB-200-2011 Birds (Wah et al. 2011) from a local copy in the official layout, with captions.

    CUB_200_2011/images.txt, images/<class>/<file>.jpg, image_class_labels.txt,
    train_test_split.txt, bounding_boxes.txt, classes.txt, attributes/...
    text_c10/<class>/<image stem>.txt       (optional: Reed et al. 2016's captions)

Each image is cropped to a square around the bird's bounding box, enlarged
1.5x, as text-to-image papers on CUB do, so the bird fills the picture.
Captions: the ten text_c10 sentences when present; otherwise sentences composed
from the class name and the attribute annotations (per image when
image_attribute_labels.txt is there, else the class's most common attributes).
"""

from pathlib import Path

import numpy as np

from minidiff.datasets.base import CaptionedImages, with_articles
from minidiff.datasets.files import ImageRecord, Skipped, captions_for, read_dataset
from minidiff.datasets.splits import NUM_TEST_CLASSES, seeded_test_classes, select, test_classes_from_file


# The attribute groups a caption mentions, and how their values read in a sentence.
GROUPS = ("size", "primary_color", "wing_color", "breast_color", "crown_color", "bill_shape")
WORDS = {
    "very_small_(3_-_5_in)": "very small", "small_(5_-_9_in)": "small", "medium_(9_-_16_in)": "medium-sized",
    "large_(16_-_32_in)": "large", "very_large_(32_-_72_in)": "very large", "curved_(up_or_down)": "curved",
    "hooked_seabird": "hooked", "cone": "cone-shaped", "needle": "needle-like", "specialized": "specialised",
}
CLASS_MIN_PERCENT = 25.0  # a class's attribute is mentioned if at least this share of its images show it


def find_cub_root(root: Path) -> Path | None:
    """The folder holding images.txt: `root` itself or root/CUB_200_2011."""
    for candidate in (root, root / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    return None


def _table(path: Path, skipped: Skipped) -> dict[int, list[str]]:
    """A whitespace-separated CUB metadata file as {first column (an id): the other columns}."""
    rows = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if not fields[0].isdigit() or len(fields) < 2:
            skipped.add(f"malformed line in {path.name}", f"{path}:{number}")
            continue
        rows[int(fields[0])] = fields[1:]
    return rows


def class_name(folder: str) -> str:
    """'001.Black_footed_Albatross' -> 'black footed albatross'."""
    return folder.split(".", 1)[-1].replace("_", " ").lower()


def _attribute_names(cub: Path) -> dict[int, tuple[str, str]] | None:
    """attribute id -> (group, value), e.g. 11 -> ('wing_color', 'brown'), for the groups we use."""
    path = cub / "attributes" / "attributes.txt"
    if not path.is_file():
        path = cub.parent / "attributes.txt"  # the official archive keeps it beside CUB_200_2011/
    if not path.is_file():
        return None
    names = {}
    for line in path.read_text().splitlines():
        number, _, name = line.partition(" ")
        group, _, value = name.strip().removeprefix("has_").partition("::")
        if group in GROUPS:
            names[int(number)] = (group, value)
    return names


def describe_bird(values: dict[str, str], name: str) -> tuple[str, ...]:
    """Captions for one bird from its attribute values (group -> raw value) and class name."""
    word = {g: WORDS.get(v, v.replace("_", " ")) for g, v in values.items()}
    captions = [f"a photo of a {name}, a type of bird"]
    looks = " ".join(word[g] for g in ("size", "primary_color") if g in word)
    parts = [f"{word['wing_color']} wings"] if "wing_color" in word else []
    parts += [f"a {word['bill_shape']} bill"] if "bill_shape" in word else []
    if looks or parts:
        captions.append((f"a {looks} bird" if looks else "a bird") + (" with " + " and ".join(parts) if parts else ""))
    features = [f"a {word[g]} {g.split('_')[0]}" for g in ("breast_color", "crown_color") if g in word]
    features += [f"{word['wing_color']} wings"] if "wing_color" in word else []
    if features:
        captions.append("this bird has " + (", ".join(features[:-1]) + " and " if len(features) > 1 else "") + features[-1])
    return tuple(with_articles(c) for c in captions)


def _class_attributes(cub: Path, attributes, num_classes: int) -> list[dict[str, str]]:
    """Each class's most common value in each group, from class_attribute_labels_continuous.txt."""
    path = cub / "attributes" / "class_attribute_labels_continuous.txt"
    if attributes is None or not path.is_file():
        return [{} for _ in range(num_classes)]
    percent = np.loadtxt(path, ndmin=2)  # (200 classes, 312 attributes), % of images showing each
    described = []
    for row in percent:
        best = {}
        for number, (group, value) in attributes.items():
            share = row[number - 1]
            if share >= CLASS_MIN_PERCENT and share > best.get(group, ("", -1.0))[1]:
                best[group] = (value, share)
        described.append({g: v for g, (v, _) in best.items()})
    return described


def _image_attributes(cub: Path, attributes) -> dict[int, dict[str, str]] | None:
    """Per-image attribute values (the most certain present value per group), if the copy has them."""
    path = cub / "attributes" / "image_attribute_labels.txt"
    if attributes is None or not path.is_file():
        return None
    best = {}  # image id -> group -> (certainty, value)
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "1" or int(fields[1]) not in attributes:
            continue
        image_id, (group, value), certainty = int(fields[0]), attributes[int(fields[1])], int(fields[3])
        if certainty > best.setdefault(image_id, {}).get(group, (0, ""))[0]:
            best[image_id][group] = (certainty, value)
    return {i: {g: v for g, (_, v) in groups.items()} for i, groups in best.items()}


def load_birds(root, split: str = "train", image_size: int = 64) -> CaptionedImages:
    """CUB-200-2011 from a local copy at `root` (the folder holding CUB_200_2011/, or that folder)."""
    root = Path(root)
    cub = find_cub_root(root)
    if cub is None:
        raise FileNotFoundError(f"no CUB-200-2011 copy at {root}: expected {root / 'CUB_200_2011' / 'images.txt'}")
    skipped = Skipped()
    images = _table(cub / "images.txt", skipped)
    labels_table = _table(cub / "image_class_labels.txt", skipped)
    is_train = _table(cub / "train_test_split.txt", skipped)
    boxes = _table(cub / "bounding_boxes.txt", skipped) if (cub / "bounding_boxes.txt").is_file() else {}
    folders = [fields[0] for _, fields in sorted(_table(cub / "classes.txt", skipped).items())]
    names = tuple(class_name(f) for f in folders)

    ids = np.array(sorted(i for i in images if i in labels_table), np.int64)
    for missing in sorted(set(images) - set(labels_table)):
        skipped.add("image with no class in image_class_labels.txt", images[missing][0])
    labels = np.array([int(labels_table[i][0]) - 1 for i in ids], np.int64)
    train_mask = np.array([is_train.get(i, ["?"])[0] == "1" for i in ids])
    test_mask = np.array([is_train.get(i, ["?"])[0] == "0" for i in ids])
    official = {"train": train_mask, "test": test_mask}
    class_ids = {folder: k for k, folder in enumerate(folders)}
    test_classes = test_classes_from_file(root, class_ids) or seeded_test_classes(len(names), NUM_TEST_CLASSES["birds"])

    attributes = _attribute_names(cub)
    per_class = _class_attributes(cub, attributes, len(names))
    per_image = _image_attributes(cub, attributes)
    text_dir = next((d for d in (root / "text_c10", cub / "text_c10") if d.is_dir()), None)
    records = []
    for k in select(split, labels, official, test_classes):
        image_id, label = int(ids[k]), int(labels[k])
        relative = images[image_id][0]
        text = (text_dir / relative).with_suffix(".txt") if text_dir is not None else None
        values = per_image.get(image_id, {}) if per_image is not None else per_class[label]
        captions = captions_for(relative, text, lambda: describe_bird(values, names[label]), skipped)
        if captions is None:
            continue
        box = tuple(float(v) for v in boxes[image_id][:4]) if image_id in boxes else None
        if image_id not in boxes:
            skipped.add("no bounding box (centre crop used)", relative)
        records.append(ImageRecord(cub / "images" / relative, captions, label, box))
    return read_dataset(f"birds-{split}", records, image_size, names, skipped)
