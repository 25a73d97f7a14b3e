"""Data parallelism on 4 simulated CPU devices. JAX fixes its device count when it starts, so
`test_sharding.py` runs this file in a pytest of its own, started with 4 CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m pytest tests/on_four_devices.py -n 0
"""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import minidiff.generator
from minidiff.generator import Generator
from minidiff.machinery.sharding import data_mesh, mesh_for_batch
from minidiff.training import start_run, train


@pytest.fixture(autouse=True, scope="module")
def four_devices():
    assert jax.device_count() == 4, f"run with XLA_FLAGS=--xla_force_host_platform_device_count=4 ({jax.devices()})"


@pytest.fixture(scope="module")
def single(dataset, tokenizer, model_config, train_config):
    """Training on one device: the step the other tests compile."""
    return train(start_run(model_config, train_config), dataset, tokenizer, progress=False)


def test_sharded_training_equals_single_device_training(single, dataset, tokenizer, model_config, train_config):
    sharded = train(start_run(model_config, train_config), dataset, tokenizer, progress=False, mesh=data_mesh())
    kernel = sharded.model.denoiser.out.kernel[...]
    assert len(kernel.sharding.device_set) == 4, kernel.sharding  # replicated on every device
    a = jax.tree.leaves(nnx.state(single.model, nnx.Param))
    b = jax.tree.leaves(nnx.state(sharded.model, nnx.Param))
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))
    assert worst < 1e-4, worst
    np.testing.assert_allclose([l for _, l in single.losses], [l for _, l in sharded.losses], rtol=1e-4)


def test_a_batch_is_split_over_as_many_devices_as_divide_it():
    assert mesh_for_batch(6).size == 3 and mesh_for_batch(8).size == 4 and mesh_for_batch(7) is None


def test_a_batch_that_does_not_split_evenly_is_refused(dataset, tokenizer, model_config, train_config):
    uneven = dataclasses.replace(train_config, batch_size=6)
    with pytest.raises(ValueError, match="split evenly"):
        train(start_run(model_config, uneven), dataset, tokenizer, progress=False, mesh=data_mesh())


def test_sampling_split_over_devices_draws_the_same_images(single, dataset, tokenizer, monkeypatch):
    """DDPM draws fresh noise at every step: the rows split over 4 devices, or all on one, give the
    same images; and afterwards the model is gathered back, so a batch that does not split runs once."""
    generator = Generator.from_training(single, tokenizer)
    captions = [c[0] for c in dataset.captions[:8]]
    settings = dict(sampling_steps=3, sampler="ddpm", guidance=2.0)
    split = generator.sample(captions, **settings)
    assert len(generator.model.denoiser.out.kernel[...].sharding.device_set) == 4
    with monkeypatch.context() as patch:
        patch.setattr(minidiff.generator, "mesh_for_batch", lambda batch_size: None)
        alone = generator.sample(captions, **settings)
    assert len(generator.model.denoiser.out.kernel[...].sharding.device_set) == 1
    np.testing.assert_allclose(alone, split, atol=1e-5)
