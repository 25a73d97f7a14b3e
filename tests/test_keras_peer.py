"""Keras' DDIM example as the race's peer (needs the `keras` extra: Keras 3 and TensorFlow; skipped without)."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")
from minidiff.command.keras_peer import MAX_SIGNAL_RATE, MIN_SIGNAL_RATE, KerasDDIM, diffusion_schedule  # noqa: E402


def test_the_schedule_runs_between_the_examples_signal_rates():
    noise, signal = (np.asarray(r) for r in diffusion_schedule(np.array([0.0, 0.5, 1.0])))
    assert signal[0] == pytest.approx(MAX_SIGNAL_RATE) and signal[-1] == pytest.approx(MIN_SIGNAL_RATE)
    assert np.allclose(noise**2 + signal**2, 1.0)


def test_a_short_run_keeps_raw_and_ema_weights_and_generates_images():
    images = (np.random.default_rng(0).random((70, 64, 64, 3)) * 255).astype(np.uint8)
    peer = KerasDDIM(images)
    noisy = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    assert np.all(peer.network([noisy, np.full((2, 1, 1, 1), 0.5, np.float32)]).numpy() == 0)  # last layer zeros
    (snapshot,) = peer.train(images, [0.0], log=lambda *a, **k: None)  # one step, then kept
    assert snapshot["steps"] == 1 and len(snapshot["raw"]) == len(snapshot["ema"]) == len(peer.network.weights)
    samples = peer.generate(snapshot["ema"], 3, diffusion_steps=2)
    assert samples.shape == (3, 64, 64, 3) and samples.dtype == np.uint8
