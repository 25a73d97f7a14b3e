"""The Inception-v3 network that FID, KID and the Inception Score are defined with.

FID figures are only comparable when everyone uses the same network with the
same weights: the Inception-v3 of TensorFlow's 2015-12-05 release, which the
original FID code used. Its port to PyTorch (pytorch-fid) is the file people
use today; this is the same network in flax.nnx, reading that file's weights.

    pt_inception-2015-12-05-6726825d.pth   (95.6 MB)
    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    the first 8 hex digits of its SHA-256 are 6726825d (checked when loaded)

It cannot be downloaded here: fetch it on a machine with internet, then pass
its path (`minidiff evaluate --inception FILE`). Reading a .pth needs PyTorch
(`torch.load(..., weights_only=True)`, which refuses to run code from the file);
`convert_weights` writes an .npz that minidiff reads without PyTorch.

The FID variant differs from torchvision's Inception-v3 in three places, all
kept here: average pools ignore their zero padding (as TensorFlow's do), the
last block max-pools where the paper says average, and there are 1008 classes.
Input: images in [-1, 1], resized to 299 x 299 (bilinear). Output: the 2048
pooled features (for FID and KID) and the 1008 logits (for IS).
"""

import hashlib
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.machinery.atomic import atomic_write

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
SHA256_PREFIX = "6726825d"
NUM_CLASSES = 1008
FEATURES = 2048
INPUT_SIZE = 299


class ConvBN(nnx.Module):
    """Convolution (no bias) -> batch norm (inference statistics, eps 1e-3) -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel, stride=1, padding=0, *, rngs: nnx.Rngs):
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(in_channels, out_channels, kernel, strides=stride,
                             padding=[(padding[0], padding[0]), (padding[1], padding[1])], use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(out_channels, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def average_pool_3x3(x):
    """3 x 3 average, stride 1, padded, averaging only the real pixels (as TensorFlow does)."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x, stride):
    padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


# The blocks, as torchvision names them (the weight files use these names). Every
# block runs branches side by side and concatenates them along the channels.


class InceptionA(nnx.Module):  # 35 x 35
    def __init__(self, cin, pool_features, *, rngs):
        self.branch1x1 = ConvBN(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = ConvBN(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = ConvBN(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(average_pool_3x3(x)),
        ], axis=-1)


class InceptionB(nnx.Module):  # 35 x 35 -> 17 x 17
    def __init__(self, cin, *, rngs):
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            max_pool_3x3(x, stride=2),
        ], axis=-1)


class InceptionC(nnx.Module):  # 17 x 17, 7 x 7 convolutions factored into 1 x 7 and 7 x 1
    def __init__(self, cin, c7, *, rngs):
        row, column = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = ConvBN(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = ConvBN(c7, c7, **row, rngs=rngs)
        self.branch7x7_3 = ConvBN(c7, 192, **column, rngs=rngs)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **column, rngs=rngs)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row, rngs=rngs)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **column, rngs=rngs)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row, rngs=rngs)
        self.branch_pool = ConvBN(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(average_pool_3x3(x)),
        ], axis=-1)


class InceptionD(nnx.Module):  # 17 x 17 -> 8 x 8
    def __init__(self, cin, *, rngs):
        self.branch3x3_1 = ConvBN(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), seven, max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nnx.Module):  # 8 x 8
    def __init__(self, cin, pool: str, *, rngs):
        self.pool = pool  # "average" in Mixed_7b, "max" in Mixed_7c (the FID network's quirk)
        self.branch1x1 = ConvBN(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = ConvBN(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = ConvBN(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = average_pool_3x3(x) if self.pool == "average" else max_pool_3x3(x, stride=1)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], axis=-1)


class FIDInception(nnx.Module):
    """Inception-v3 as the FID literature uses it: images -> (features (B, 2048), logits (B, 1008))."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, "average", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)
        self.fc = nnx.Linear(FEATURES, NUM_CLASSES, rngs=rngs)

    def __call__(self, images, resize: bool = True):
        """images (B, H, W, 3) in [-1, 1]; resize to 299 x 299 first unless told not to."""
        x = images
        if resize:
            x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 147, 147, 64)
        x = max_pool_3x3(x, stride=2)  # (B, 73, 73, 64)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 71, 71, 192)
        x = max_pool_3x3(x, stride=2)  # (B, 35, 35, 192)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ... (B, 8, 8, 2048)
        features = x.mean(axis=(1, 2))
        return features, self.fc(features)


# --- Weights -------------------------------------------------------------------------
#
# PyTorch names a parameter "Mixed_5b.branch1x1.conv.weight"; here the same parameter
# is at the path ("Mixed_5b", "branch1x1", "conv", "kernel"). PyTorch stores
# convolution kernels as (out, in, height, width) and linear ones as (out, in);
# flax as (height, width, in, out) and (in, out).

TORCH_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_name(path) -> str:
    return ".".join(map(str, path[:-1])) + "." + TORCH_NAMES[path[-1]]


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array.T if array.ndim == 2 else array


def torch_shapes(model: FIDInception) -> dict[str, tuple[int, ...]]:
    """{PyTorch name: PyTorch shape} of every array the weights file must hold."""
    shapes = {}
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        shape = variable.get_value().shape
        shapes[_torch_name(path)] = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    return shapes


def from_torch_state_dict(state_dict: dict[str, np.ndarray]) -> FIDInception:
    """A FIDInception holding the given PyTorch-named arrays; every name and shape is checked."""
    model = nnx.eval_shape(lambda: FIDInception(rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    extra = set(state_dict) - {_torch_name(p) for p, _ in flat} - {k for k in state_dict if k.endswith("num_batches_tracked")}
    if extra:
        raise ValueError(f"the weights hold arrays the FID Inception network does not have: {sorted(extra)[:5]}")
    for path, variable in flat:
        name = _torch_name(path)
        if name not in state_dict:
            raise ValueError(f"the weights have no array {name!r}: is this the FID Inception file ({WEIGHTS_FILE})?")
        value = _to_flax_layout(np.asarray(state_dict[name], np.float32))
        if value.shape != variable.shape:
            raise ValueError(f"{name}: shape {value.shape} after transposing, the network expects {variable.shape}")
        variable.set_value(jnp.asarray(value))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def read_weights(path) -> dict[str, np.ndarray]:
    """The arrays of the FID Inception weights: the original .pth (needs PyTorch) or an .npz."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights at {path}; download {WEIGHTS_URL} on a machine with internet")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(SHA256_PREFIX):
        raise ValueError(f"{path} has SHA-256 {digest[:8]}..., the FID Inception weights have {SHA256_PREFIX}...: "
                         f"a different or damaged file (download {WEIGHTS_URL} again)")
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path.name} needs PyTorch; or convert it once with "
                          "minidiff.evaluation.inception.convert_weights on a machine that has it") from None
    return {name: tensor.numpy() for name, tensor in torch.load(path, map_location="cpu", weights_only=True).items()}


def convert_weights(pth_path, npz_path) -> Path:
    """Write the .pth weights as an .npz that loads without PyTorch (and without pickle)."""
    arrays = read_weights(pth_path)
    return atomic_write(npz_path, lambda f: np.savez(f, **arrays))


def load_fid_inception(path) -> FIDInception:
    return from_torch_state_dict(read_weights(path))


@partial(nnx.jit, static_argnames="resize")
def inception_outputs(model: FIDInception, images, resize: bool = True):
    """(features (B, 2048), class probabilities (B, 1008)) for images in [-1, 1]."""
    features, logits = model(images, resize=resize)
    return features, jax.nn.softmax(logits)
