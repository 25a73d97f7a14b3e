"""The DiT denoiser (`minidiff.dit`): shapes, adaLN-Zero's identity blocks at initialisation, the patch
positions, configs and checkpoints that say which backbone and process they hold."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.corruption import to_model_range
from minidiff.dit import DiTConfig, sincos_positions
from minidiff.flows import StraightFlow
from minidiff.loss import denoising_loss
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError, save_checkpoint
from minidiff.model import ModelConfig, create_model, preset
from minidiff.training import start_run, train


def inputs(model, batch=2, size=16, seed=0):
    xt = jax.random.normal(jax.random.key(seed), (batch, size, size, 3))
    ids = jnp.tile(jnp.arange(1, 7, dtype=jnp.int32), (batch, 1))
    return xt, jnp.linspace(0.1, 0.9, batch), model.encode_captions(ids)


@pytest.mark.parametrize("patch_size", [2, 4])
def test_a_dit_maps_images_to_images_and_starts_at_zero(tokenizer, patch_size):
    config = preset("tiny", tokenizer.vocab_size, image_size=16, backbone="dit", patch_size=patch_size)
    model = create_model(config)
    xt, t, caption = inputs(model)
    out = model.denoise(xt, t, caption)
    assert out.shape == xt.shape and config.backbone == "dit" and config.denoiser.grid == 16 // patch_size
    np.testing.assert_array_equal(out, 0.0)  # the last layer starts at zero (adaLN-Zero)


def test_every_block_is_the_identity_at_initialisation(tokenizer):
    """adaLN-Zero: the gates, the cross-attention's output and the modulation start at zero, so each block
    passes its input through unchanged, whatever the input."""
    model = create_model(preset("tiny", tokenizer.vocab_size, image_size=16, backbone="dit"))
    dit = model.denoiser
    tokens, mask, pooled = model.encode_captions(jnp.tile(jnp.arange(1, 7, dtype=jnp.int32), (2, 1)))
    x = jax.random.normal(jax.random.key(1), (2, dit.config.grid**2, dit.config.width))
    cond = jax.random.normal(jax.random.key(3), (2, dit.config.width))
    modulation = dit.modulation(jax.nn.silu(cond)).reshape(2, 6, -1)  # the shared projection, for any conditioning
    np.testing.assert_array_equal(modulation, 0.0)
    context = dit.caption_out(jax.nn.gelu(dit.caption_in(tokens), approximate=True))
    for block in dit.blocks:
        np.testing.assert_array_equal(block(x, modulation, context, mask), x)
    # ... but not once the gates are open: the branches themselves are not zero.
    opened = modulation.at[:, 2].set(1.0)  # the self-attention's gate
    assert float(jnp.abs(dit.blocks[0](x, opened, context, mask) - x).max()) > 1e-3


def test_a_dit_trained_as_a_flow_learns_and_moves_every_block(dataset, tokenizer, train_config):
    """Zero-initialised gates do not freeze the network: after a few steps every block's table has moved,
    and the flow loss on a fixed batch has dropped."""
    config = preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length, backbone="dit",
                    process=StraightFlow())
    images = dataset.subset(np.arange(8))
    batch = (jnp.asarray(to_model_range(images.images)),
             (jnp.asarray(tokenizer.encode_batch([c[0] for c in images.captions])),))
    constants = ((jnp.asarray(tokenizer.empty(1)[0]),),)
    loss = nnx.jit(denoising_loss)
    fixed_loss = lambda model: np.mean(  # noqa: E731
        [float(loss(model, batch, constants, jax.random.key(k))[0]) for k in range(16)])
    run = start_run(config, train_config)
    before = fixed_loss(run.model)
    run = train(run, images, tokenizer, progress=False)
    assert fixed_loss(run.model) < 0.98 * before
    for block in run.model.denoiser.blocks:
        assert float(jnp.abs(block.table[...]).max()) > 0


def test_patch_positions_are_sines_and_cosines_of_column_then_row():
    positions = sincos_positions(grid=3, dim=8)  # 2 frequencies: 1 and 1/100
    assert positions.shape == (9, 8)
    row, column = 1, 2
    expected = [np.sin(2), np.sin(0.02), np.cos(2), np.cos(0.02), np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)]
    np.testing.assert_allclose(positions[row * 3 + column], expected, rtol=1e-6)
    assert len({tuple(p) for p in np.round(positions, 6)}) == 9  # every patch has its own


def test_bad_dit_configs_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="multiple of patch_size 4"):
        DiTConfig(image_size=18, patch_size=4)
    with pytest.raises(ValueError, match="divisible by 4 .* and by 3 heads"):
        DiTConfig(width=64, heads=3)
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        preset("tiny", 10, backbone="vit")
    with pytest.raises(ValueError, match="the process must be one of"):
        preset("tiny", 10, process="score")
    with pytest.raises(ValueError, match="a dit has no setting attention_resolutions"):
        preset("tiny", 10, backbone="dit", attention_resolutions=(8,))


def test_a_checkpoint_says_which_backbone_and_process_it_holds(tmp_path, tokenizer):
    config = preset("tiny", tokenizer.vocab_size, image_size=16, backbone="dit", process=StraightFlow())
    assert ModelConfig.from_dict(config.to_dict()) == config
    header = config.to_dict()
    assert (header["backbone"], header["process"]) == ("dit", {"kind": "flow", "time_sampling": "logit_normal"})
    # A DiT's arrays do not fit a U-Net: a clear error, not a crash.
    path = save_checkpoint(tmp_path / "dit.npz", {}, model=create_model(config))
    unet = create_model(preset("tiny", tokenizer.vocab_size, image_size=16))
    with pytest.raises(CheckpointError, match=r"model/denoiser/.*(saved from a different model|the model expects)"):
        Checkpoint(path).restore("model", unet)
