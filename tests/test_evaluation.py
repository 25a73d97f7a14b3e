"""Choosing the held-out set that generated images are compared with."""

import numpy as np

from minidiff.datasets import CaptionedImages
from minidiff.evaluation import evaluate


def test_reference_set_draws_across_classes_not_the_first_files(monkeypatch):
    # Real datasets list their files class by class: the first 20 would be 2 classes.
    labels = np.repeat(np.arange(10), 10)
    ordered = CaptionedImages(name="flowers-eval", images=np.zeros((100, 8, 8, 3), np.uint8),
                              captions=tuple((f"a flower of class {k}",) for k in labels), labels={"class": labels},
                              label_names={"class": tuple(map(str, range(10)))})
    monkeypatch.setattr(evaluate, "load_dataset", lambda *args, **kwargs: ordered)
    chosen = evaluate.reference_set("flowers", 8, num_images=20, seed=0)
    assert len(chosen) == 20 and len(set(chosen.labels["class"].tolist())) >= 6
    assert all(c[0] == f"a flower of class {k}" for c, k in zip(chosen.captions, chosen.labels["class"]))  # kept together
    again = evaluate.reference_set("flowers", 8, num_images=20, seed=0)
    assert np.array_equal(again.labels["class"], chosen.labels["class"])  # the same set every time
