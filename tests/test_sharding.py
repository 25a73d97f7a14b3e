"""Data-parallel training over 4 simulated CPU devices equals single-device training
on the same global batch (and refuses a batch that does not split evenly), and so
does sampling with the rows split over the devices; the CPU
splits into one device per core unless the user chose a count."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# The device count is fixed when JAX starts, so the comparison runs in a fresh interpreter.
SCRIPT = textwrap.dedent("""
    import dataclasses
    import sys
    import jax, numpy as np
    from flax import nnx
    from minidiff.captions import Tokenizer
    from minidiff.datasets import toy_dataset
    from minidiff.model import preset
    from minidiff.sharding import data_mesh
    from minidiff.training import new_train_state, train
    sys.path.insert(0, "tests")
    from conftest import TINY_TRAIN  # also turns on the tests' compilation cache

    assert jax.device_count() == 4, jax.devices()
    data = toy_dataset(num_images=64, image_size=16, seed=0)
    tokenizer = Tokenizer.from_captions(data.all_captions(), max_length=24)
    model_config = preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length)
    config = TINY_TRAIN  # the single-device step is the one the other tests compile
    single = train(new_train_state(model_config, tokenizer, config), data, progress=False)
    sharded = train(new_train_state(model_config, tokenizer, config), data, progress=False, mesh=data_mesh())
    kernel = sharded.model.unet.out.kernel[...]
    assert len(kernel.sharding.device_set) == 4, kernel.sharding  # replicated on every device
    a = jax.tree.leaves(nnx.state(single.model, nnx.Param))
    b = jax.tree.leaves(nnx.state(sharded.model, nnx.Param))
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))
    print("largest difference", worst, "losses", single.losses, sharded.losses)
    assert worst < 1e-4, worst
    np.testing.assert_allclose([l for _, l in single.losses], [l for _, l in sharded.losses], rtol=1e-4)
    from minidiff.sharding import mesh_for_batch
    assert mesh_for_batch(6).size == 3 and mesh_for_batch(8).size == 4 and mesh_for_batch(7) is None

    # Sampling with the rows split over the devices draws the same images (DDPM: fresh noise at every step).
    from minidiff.corruption import make_schedule
    from minidiff.sampling import sample
    schedule = make_schedule(config.schedule, config.num_timesteps)
    ids, empty = tokenizer.encode_batch([c[0] for c in data.captions[:8]]), tokenizer.empty(1)
    settings = dict(num_steps=3, sampler="ddpm", guidance_scale=2.0)
    alone = sample(single.ema, schedule, ids, empty, **settings)
    split = sample(single.ema, schedule, ids, empty, **settings, mesh=mesh_for_batch(8))
    assert len(split.sharding.device_set) == 4, split.sharding
    np.testing.assert_allclose(np.asarray(alone), np.asarray(split), atol=1e-5)
    # Without a mesh again, the replicated model is gathered onto one device: the batch runs once, not 4 times.
    again = sample(single.ema, schedule, ids, empty, **settings)
    assert len(again.sharding.device_set) == 1, again.sharding
    np.testing.assert_allclose(np.asarray(alone), np.asarray(again), atol=1e-5)
    uneven = dataclasses.replace(config, batch_size=6)
    try:
        train(new_train_state(model_config, tokenizer, uneven), data, progress=False, mesh=data_mesh())
        raise AssertionError("a batch of 6 over 4 devices was accepted")
    except ValueError as error:
        assert "split evenly" in str(error), error
""")


def test_sharded_training_equals_single_device_training(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


CORES_SCRIPT = textwrap.dedent("""
    import os, sys, jax
    from minidiff.sharding import one_device_per_cpu_core
    expected = int(sys.argv[1]) if len(sys.argv) > 1 else len(os.sched_getaffinity(0))
    assert one_device_per_cpu_core() == expected == len(jax.devices()), (expected, jax.devices())
    assert one_device_per_cpu_core() == expected  # JAX has started: nothing changes
""")


def test_the_cpu_splits_into_one_device_per_core_unless_the_count_was_chosen():
    def devices(chosen: dict, *args):
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
        result = subprocess.run([sys.executable, "-c", CORES_SCRIPT, *args], env=env | {"JAX_PLATFORMS": "cpu"} | chosen,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]

    devices({})  # one per core
    devices({"JAX_NUM_CPU_DEVICES": "3"}, "3")  # the user's choice stands
    devices({"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}, "5")
