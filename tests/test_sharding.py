"""Data-parallel training over 4 simulated CPU devices equals single-device training
on the same global batch (and refuses a batch that does not split evenly)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# The device count is fixed when JAX starts, so the comparison runs in a fresh interpreter.
SCRIPT = textwrap.dedent("""
    import dataclasses
    import jax, numpy as np
    from flax import nnx
    from minidiff.compilation import enable_compilation_cache
    from minidiff.captions import Tokenizer
    from minidiff.datasets import toy_dataset
    from minidiff.model import preset
    from minidiff.sharding import data_mesh
    from minidiff.training import TrainConfig, new_train_state, train

    enable_compilation_cache(".jax_cache")
    assert jax.device_count() == 4, jax.devices()
    data = toy_dataset(num_images=64, image_size=16, seed=0)
    tokenizer = Tokenizer.from_captions(data.all_captions(), max_length=24)
    model_config = preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length)
    config = TrainConfig(steps=3, batch_size=8, learning_rate=3e-3, warmup_steps=1, log_every=1)
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
