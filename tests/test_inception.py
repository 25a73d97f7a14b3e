"""The FID Inception network: names, shapes and layout of the weights it reads."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from minidiff.evaluation.inception import (FIDInception, convert_weights, from_torch_state_dict, inception_outputs,
                                           read_weights, torch_shapes)


@pytest.fixture(scope="module")
def shapes():
    return torch_shapes(nnx.eval_shape(lambda: FIDInception(rngs=nnx.Rngs(0))))


def test_parameter_names_and_count_match_the_pytorch_network(shapes):
    # Names and shapes as pytorch-fid's state dict has them.
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch5x5_1.conv.weight"] == (48, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_6e.branch7x7dbl_2.conv.weight"] == (192, 192, 7, 1)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
    assert shapes["fc.weight"] == (1008, 2048)
    # torchvision's Inception-v3 has 27,161,264 parameters; without its auxiliary
    # classifier (3,326,696) and with 1008 instead of 1000 classes (+16,392): 23,850,960.
    learned = [s for name, s in shapes.items() if not name.endswith(("running_mean", "running_var"))]
    assert sum(math.prod(s) for s in learned) == 23_850_960


def _random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith(("running_var", "bn.weight")):  # near 1, so activations keep their scale through ~95 layers
            state[name] = rng.uniform(0.8, 1.2, shape).astype(np.float32)
        elif name.endswith("conv.weight") or name == "fc.weight":
            fan_in = math.prod(shape[1:])
            state[name] = (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            state[name] = (rng.normal(size=shape) * 0.1).astype(np.float32)
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)  # PyTorch keeps this; it is ignored
    return state


@pytest.fixture(scope="module")
def state(shapes):
    return _random_state_dict(shapes)


def test_loads_a_state_dict_and_gives_features_and_logits(state, tmp_path):
    np.savez(tmp_path / "weights.npz", **state)
    model = from_torch_state_dict(read_weights(tmp_path / "weights.npz"))
    images = jax.random.uniform(jax.random.key(0), (2, 75, 75, 3), minval=-1, maxval=1)
    features, probabilities = inception_outputs(model, images, resize=False)  # 75 px: the smallest it takes
    assert features.shape == (2, 2048) and probabilities.shape == (2, 1008)
    assert np.all(np.isfinite(features)) and np.all(np.asarray(features) >= 0)  # pooled ReLUs
    assert float(np.std(np.asarray(features))) > 1e-3  # the signal survives the depth
    # The PyTorch layout (out, in, h, w) is transposed, not reshaped: one output of the
    # first convolution (no padding, stride 2), recomputed by hand.
    weight = state["Conv2d_1a_3x3.conv.weight"]
    bn = {k: state[f"Conv2d_1a_3x3.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
    patch = np.asarray(images[0, 2:5, 4:7, :])  # output position (1, 2)
    conv = np.einsum("hwc,ochw->o", patch, weight)
    expected = np.maximum((conv - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"], 0)
    np.testing.assert_allclose(model.Conv2d_1a_3x3(images)[0, 1, 2], expected, atol=1e-4)
    # A 1 x 7 kernel must act along the width: check against the same convolution written out.
    layer = model.Mixed_6b.branch7x7_2.conv
    x = jax.random.normal(jax.random.key(1), (1, 5, 9, 128))
    w = state["Mixed_6b.branch7x7_2.conv.weight"]  # (128, 128, 1, 7)
    padded = np.pad(np.asarray(x[0]), ((0, 0), (3, 3), (0, 0)))
    np.testing.assert_allclose(layer(x)[0, 2, 4], np.einsum("wc,ocw->o", padded[2, 4:11], w[:, :, 0]), atol=1e-3)


def test_rejects_a_file_with_wrong_names_or_shapes(shapes, tmp_path):
    state = _random_state_dict(shapes)
    del state["fc.bias"]
    with pytest.raises(ValueError, match="no array 'fc.bias'"):
        from_torch_state_dict(state)
    state = _random_state_dict(shapes)
    state["fc.weight"] = state["fc.weight"][:1000]
    with pytest.raises(ValueError, match="fc.weight: shape"):
        from_torch_state_dict(state)
    (tmp_path / "other.pth").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="SHA-256"):
        convert_weights(tmp_path / "other.pth", tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()
    with pytest.raises(FileNotFoundError, match="download"):
        read_weights(tmp_path / "missing.pth")


def test_fid_kid_and_is_from_the_network(state):
    from minidiff.evaluation.evaluate import inception_metrics

    model = from_torch_state_dict(state)
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (6, 75, 75, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (6, 75, 75, 3), dtype=np.uint8) // 4  # darker images
    same = inception_metrics(model, real, real, batch_size=2, resize=False)  # batches of 2: compiled above
    assert same["fid"] == pytest.approx(0.0, abs=1e-3) and 1.0 <= same["inception_score"] <= 1008
    assert inception_metrics(model, other, real, batch_size=2, resize=False)["fid"] > 1.0
