"""Which images of a real dataset form each split.

  train / val / test   the dataset's official split (Oxford-102's setid.mat,
                       CUB's train_test_split.txt);
  train_classes /      the class-disjoint split of text-to-image papers (Reed
  test_classes         et al. 2016): no test class is ever seen in training,
                       so test captions name flowers or birds the model never
                       drew;
  eval                 a fixed held-out evaluation set: up to EVAL_SIZE images
                       of the official test split, the same ones every time;
  all_but_eval         every other image: what a model judged on eval trains on
                       (text-to-image papers train on every image for quality),
                       and the judge too (the eval images' classes all appear);
  all                  everything.
"""

from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test", "eval", "all_but_eval", "train_classes", "test_classes", "all")
EVAL_SIZE = 1000
# Reed et al. 2016's class-disjoint split: 82 train+val and 20 test classes of Oxford-102,
# 150 train+val and 50 test classes of CUB-200-2011.
NUM_TEST_CLASSES = {"flowers": 20, "birds": 50}


def test_classes_from_file(root: Path, class_ids: dict[str, int]) -> set[int] | None:
    """The test classes listed in Reed et al.'s `testclasses.txt`, if the user's copy has it.

    Its lines name class folders ("class_00001" or "001.Black_footed_Albatross");
    `class_ids` maps such names to class indices.
    """
    for path in (root / "testclasses.txt", root / "text_c10" / "testclasses.txt"):
        if path.is_file():
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            unknown = [n for n in names if n not in class_ids]
            if unknown:
                raise ValueError(f"{path}: unknown class name(s) {unknown[:3]}; expected names like {next(iter(class_ids))!r}")
            return {class_ids[n] for n in names}
    return None


def seeded_test_classes(num_classes: int, num_test: int, seed: int = 0) -> set[int]:
    """A fixed choice of `num_test` class indices (at most all but one), used when no testclasses.txt is given."""
    num_test = min(num_test, num_classes - 1)
    return set(np.random.default_rng([seed, num_classes]).choice(num_classes, num_test, replace=False).tolist())


def select(split: str, labels: np.ndarray, official: dict[str, np.ndarray], test_classes: set[int]) -> np.ndarray:
    """Indices of the images in `split`.

    labels: (N,) class index of each image; official: split name -> (N,) bool
    mask for the splits the dataset defines; test_classes: the held-out classes.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    everything = np.arange(len(labels))
    if split == "all":
        return everything
    if split in ("train_classes", "test_classes"):
        held_out = np.isin(labels, sorted(test_classes))
        return everything[held_out if split == "test_classes" else ~held_out]
    if split == "all_but_eval":
        return np.setdiff1d(everything, select("eval", labels, official, test_classes))
    source = "test" if split == "eval" else split
    if source not in official:
        raise ValueError(f"this copy of the dataset has no official {source!r} split; it has {sorted(official) + ['all']}")
    chosen = everything[official[source]]
    if split == "eval" and len(chosen) > EVAL_SIZE:
        chosen = np.sort(np.random.default_rng(0).choice(chosen, EVAL_SIZE, replace=False))
    return chosen
