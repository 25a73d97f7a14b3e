"""What the chapters share: their settings per mode, and the first model, loaded or trained."""

import types

import numpy as np
import pytest

from minidiff.course import chapters


def test_a_chapter_reads_the_settings_of_its_mode(monkeypatch):
    monkeypatch.setattr(chapters, "SMOKE", True)
    assert chapters.chapter_settings(smoke=dict(steps=3), full=dict(steps=300)).steps == 3
    monkeypatch.setattr(chapters, "SMOKE", False)
    assert chapters.chapter_settings(smoke=dict(steps=3), full=dict(steps=300)).steps == 300
    with pytest.raises(ValueError, match="batch_size"):
        chapters.chapter_settings(smoke=dict(steps=3), full=dict(steps=300, batch_size=64))


def test_the_first_model_is_loaded_when_chapter_02_trained_it_and_trained_when_not(tmp_path, monkeypatch, capsys):
    tiny = types.SimpleNamespace(image_size=16, num_images=32, preset="tiny", steps=2, batch_size=4)
    monkeypatch.setattr(chapters, "FIRST_MODEL", tiny)
    monkeypatch.setattr(chapters, "FIRST_MODEL_RUN", tmp_path / "first_model")
    captions = ["a red flower", "a blue bird"]

    trained = chapters.first_model()  # chapter 02 has not run: trained here, and saved where it saves it
    assert "training its model now" in capsys.readouterr().out
    assert (tmp_path / "first_model" / "checkpoint.npz").is_file()

    real_train = chapters.train
    monkeypatch.setattr(chapters, "train", lambda *args, **kwargs: pytest.fail("trained again"))
    loaded = chapters.first_model()
    assert "as chapter 02 trained it" in capsys.readouterr().out
    np.testing.assert_array_equal(loaded.sample(captions, steps=2), trained.sample(captions, steps=2))

    # A run of another recipe (here: fewer steps than asked now) is not taken for the first model.
    monkeypatch.setattr(chapters, "FIRST_MODEL", types.SimpleNamespace(**vars(tiny) | {"steps": 3}))
    monkeypatch.setattr(chapters, "train", real_train)
    chapters.first_model()
    assert "training its model now" in capsys.readouterr().out
