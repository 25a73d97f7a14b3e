"""The benchmark's PyTorch peer is the same network: diffusers' UNet2DConditionModel, configured
by `diffusers_unet` and given minidiff's parameters, computes minidiff's U-Net output; diffusers'
PixArtTransformer2DModel, in `PeerDiT`, computes minidiff's DiT output.

Needs the bench extra (PyTorch and diffusers); skipped without it.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from minidiff.denoiser import depth_to_space, space_to_depth
from minidiff.model import count_parameters, create_model, preset
from minidiff.loop import TrainConfig
from minidiff.command.pytorch_peer import (PeerDiT, PeerTextToImage, benchmark_peer, diffusers_unet, dit_state_dict,
                                           unet_state_dict)
from minidiff.dit import sincos_positions


def randomised(module, seed=0):
    """Every parameter random (the zero-initialised last convs would make any two U-Nets agree)."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(module)
    flat = nnx.to_flat_state(state)
    for path, variable in flat:
        centre = 1.0 if path[-1] == "scale" else 0.0
        variable.set_value(jnp.asarray(centre + rng.normal(0, 0.2, variable.shape), jnp.float32))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


@pytest.mark.parametrize("overrides", [{}, {"blocks_per_level": 2, "patch_size": 1}])
def test_diffusers_computes_the_same_unet(overrides):
    config = preset("tiny", vocab_size=20, image_size=16, max_length=8, modulated_output_norm=False, **overrides)
    unet = randomised(create_model(config).denoiser)
    peer = diffusers_unet(config.denoiser)
    peer.load_state_dict(unet_state_dict(unet), strict=True)  # every name and shape matches, none left over
    assert sum(p.numel() for p in peer.parameters()) == count_parameters(unet)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    t = np.array([0.3, 0.8], np.float32)
    tokens = rng.normal(size=(2, 8, config.denoiser.caption_dim)).astype(np.float32)
    mask = np.ones((2, 8), bool)
    mask[0, 5:] = False  # padding must be ignored the same way
    expected = np.asarray(unet(jnp.asarray(x), jnp.asarray(t), jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(tokens[:, 0])))

    p = config.denoiser.patch_size
    patches = np.asarray(space_to_depth(jnp.asarray(x), p)).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        out = peer(torch.tensor(patches), torch.tensor(1000 * t), encoder_hidden_states=torch.tensor(tokens),
                   class_labels=torch.tensor(tokens[:, 0]), encoder_attention_mask=torch.tensor(mask, dtype=torch.float32)).sample
    got = np.asarray(depth_to_space(jnp.asarray(out.numpy().transpose(0, 2, 3, 1)), p))
    assert np.abs(expected).max() > 1.0  # a real signal, not two zeros
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("size, patch_size", [(16, 4), (8, 2)])
def test_diffusers_pixart_computes_the_same_dit(size, patch_size):
    config = preset("tiny", vocab_size=20, image_size=size, max_length=8, backbone="dit", patch_size=patch_size)
    dit = randomised(create_model(config).denoiser)
    peer = PeerDiT(config.denoiser)
    peer.load_state_dict(dit_state_dict(dit), strict=True)  # every name and shape matches, none left over
    assert sum(p.numel() for p in peer.parameters()) == count_parameters(dit)
    # The fixed positions are the same too (diffusers keeps them as a buffer, not a parameter).
    np.testing.assert_allclose(peer.transformer.pos_embed.pos_embed[0].numpy(),
                               sincos_positions(config.denoiser.grid, config.denoiser.width), atol=1e-6)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    t = np.array([0.3, 0.8], np.float32)
    tokens = rng.normal(size=(2, 8, config.denoiser.caption_dim)).astype(np.float32)
    mask = np.ones((2, 8), bool)
    mask[0, 5:] = False  # padding must be ignored the same way
    expected = np.asarray(dit(*map(jnp.asarray, (x, t, tokens, mask, tokens[:, 0]))))
    with torch.no_grad():
        out = peer(torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(1000 * t), torch.tensor(tokens),
                   torch.tensor(mask), torch.tensor(tokens[:, 0]))
    got = out.numpy().transpose(0, 2, 3, 1)
    assert np.abs(expected).max() > 1.0  # a real signal, not two zeros
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())  # as for the U-Net


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_the_whole_peer_is_within_a_few_percent_of_minidiffs_size_and_trains(backbone):
    config = preset("tiny", vocab_size=20, image_size=16, max_length=8, backbone=backbone)
    peer = PeerTextToImage(config)
    ours = count_parameters(create_model(config))
    theirs = sum(p.numel() for p in peer.parameters())
    assert abs(theirs - ours) / ours < 0.05  # PyTorch's encoder has biases on its attention projections
    x0 = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)  # images in the model's range
    ids = np.tile(np.array([1, 5, 6, 7, 0, 0, 0, 0]), (4, 1))  # BOS, three words, padding
    result = benchmark_peer(config, TrainConfig(), x0, ids, np.array([1, 0, 0, 0, 0, 0, 0, 0]), steps=1,
                            sampling=True)
    assert result["peer_parameters"] == theirs
    assert result["peer_train_images_per_s"] > 0 and result["peer_sample_images_per_s"] > 0
