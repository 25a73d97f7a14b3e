"""The judge: a small classifier trained on a dataset's labels, to measure generated images offline.

The standard feature network, Inception-v3 trained on ImageNet (`inception.py`), needs
a weights file these machines cannot download, and at 32 x 32 pixels it sees
mostly blur. So minidiff also trains its own judge, on the real images of the
dataset the generator learned from, to recognise what captions name: the
embedded set's attributes (petal colour, wing colour, ...), or the class of a
flower or bird. It shares no weights with the generator. It serves twice:

  - its pooled features stand in for Inception's in a Fréchet distance
    (`metrics.frechet_distance_of`), a domain FID that says how far generated
    images are from real ones *as this network sees them*;
  - its predictions say whether an image shows what its caption asked for
    (the judge's caption adherence): the fraction recognised as the asked-for labels.

A judge is only as good as its accuracy on real held-out images, so that is
measured and reported beside every figure it produces. It is trained with a
little added pixel noise, so that the grain of a briefly trained generator
is not mistaken for a different class.
"""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from minidiff.corruption import to_model_range
from minidiff.datasets.base import CaptionedImages, model_inputs
from minidiff.loop import Task, TrainConfig, batch_indices, new_run, train
from minidiff.machinery.checkpoints import Checkpoint, save_checkpoint
from minidiff.machinery.initialisation import initialised, shapes_only


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    image_size: int
    heads: tuple[tuple[str, int], ...]  # (label name, number of classes) for each label it predicts
    widths: tuple[int, ...] = (32, 64, 128)  # channels at each resolution, halving the size in between
    groups: int = 8

    @classmethod
    def for_dataset(cls, dataset: CaptionedImages, **overrides) -> "JudgeConfig":
        heads = tuple((name, int(values.max()) + 1) for name, values in sorted(dataset.labels.items()) if values.max() > 0)
        return cls(image_size=dataset.image_size, heads=heads, **overrides)

    @classmethod
    def from_dict(cls, d: dict) -> "JudgeConfig":
        return cls(image_size=d["image_size"], heads=tuple((n, k) for n, k in d["heads"]),
                   widths=tuple(d["widths"]), groups=d["groups"])


class ImageFeatures(nnx.Module):
    """images (B, H, W, 3) in [-1, 1] -> features (B, widths[-1]): a small residual convolutional network,
    pooled. The judge's eyes, and the caption judge's (`caption_judge.py`)."""

    def __init__(self, widths: tuple[int, ...], groups: int, *, rngs: nnx.Rngs):
        # A 2 x 2 stride-2 stem: the network starts at half resolution, a quarter of the cost.
        self.stem = nnx.Conv(3, widths[0], (2, 2), strides=2, rngs=rngs)
        self.convs = nnx.List([nnx.Conv(w, w, (3, 3), rngs=rngs) for w in widths])
        self.norms = nnx.List([nnx.GroupNorm(w, num_groups=groups, rngs=rngs) for w in widths])
        # A stride-2 convolution between resolutions: halves the size, changes the width.
        self.downs = nnx.List([nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs) for a, b in zip(widths, widths[1:])])

    def __call__(self, images):
        x = self.stem(images)  # (B, H / 2, W / 2, widths[0])
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = x + jax.nn.silu(norm(conv(x)))  # (B, H / 2^(i+1), W / 2^(i+1), widths[i])
            if i < len(self.downs):
                x = jax.nn.silu(self.downs[i](x))
        return x.mean(axis=(1, 2))  # (B, widths[-1])


class Judge(nnx.Module):
    """images (B, H, W, 3) in [-1, 1] -> (features (B, widths[-1]), logits of every head (B, sum of classes))."""

    def __init__(self, config: JudgeConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.features = ImageFeatures(config.widths, config.groups, rngs=rngs)
        self.head = nnx.Linear(config.widths[-1], sum(k for _, k in config.heads), rngs=rngs)

    def __call__(self, images):
        features = self.features(images)
        return features, self.head(features)


def split_logits(config: JudgeConfig, logits) -> dict[str, jax.Array]:
    """The (B, sum of classes) logits as {label name: (B, classes)}."""
    ends = np.cumsum([k for _, k in config.heads])
    return {name: logits[..., end - k : end] for (name, k), end in zip(config.heads, ends)}


def classification_loss(model: Judge, images, labels: dict[str, jax.Array]):
    """Cross-entropy summed over heads; a label of -1 (does not apply) counts for nothing."""
    _, logits = model(images)
    logits = logits.astype(jnp.float32)  # the loss in float32, whatever the network computed in
    total = 0.0
    for name, head_logits in split_logits(model.config, logits).items():
        known = labels[name] >= 0
        losses = optax.softmax_cross_entropy_with_integer_labels(head_logits, jnp.maximum(labels[name], 0))
        total = total + jnp.sum(jnp.where(known, losses, 0.0)) / jnp.maximum(known.sum(), 1)
    return total


def shifted(images, key, max_shift: int):
    """Each image (B, H, W, C) moved by up to max_shift pixels each way, its edge pixels repeated into
    the gap: where a flower sits in the frame says nothing of which flower it is."""
    _, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    corners = jax.random.randint(key, (images.shape[0], 2), 0, 2 * max_shift + 1)
    crop = lambda image, corner: jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (height, width, channels))  # noqa: E731
    return jax.vmap(crop)(padded, corners)


def augmented(images, key, noise_std: float):
    """Images (B, H, W, 3) shifted by a few pixels and grained with noise of random strength (up to
    noise_std): a judge must not take where a flower sits, or a briefly trained generator's grain, for
    what it is."""
    noise_key, scale_key, shift_key = jax.random.split(key, 3)
    images = shifted(images, shift_key, max(1, images.shape[1] // 16))
    strength = jax.random.uniform(scale_key, (images.shape[0], 1, 1, 1)) * noise_std
    return images + strength * jax.random.normal(noise_key, images.shape)


def _training_loss(model: Judge, batch, constants, key, dtype):
    """The classification loss on augmented images (`augmented`)."""
    images, labels = batch
    (noise_std,) = constants
    return classification_loss(model, augmented(images, key, noise_std).astype(dtype), labels), {}


class JudgeTraining(Task):
    """The judge's part of a run (`minidiff.loop`): batches of images (mirrored where the dataset allows) and
    their labels, and the loss above."""

    kind = "judge run"
    description = "training the judge"
    loss = staticmethod(_training_loss)

    def __init__(self, dataset: CaptionedImages, config: JudgeConfig, train_config: TrainConfig, noise_std: float):
        self.dataset, self.train_config, self.noise_std = dataset, train_config, noise_std
        self.labels = {name: dataset.labels[name] for name, _ in config.heads}

    def batch(self, step: int) -> tuple:
        seed = self.train_config.seed
        index = batch_indices(len(self.dataset), self.train_config.batch_size, seed, step)
        return model_inputs(self.dataset, index, seed, step), {name: v[index] for name, v in self.labels.items()}

    def constants(self) -> tuple:
        return (np.float32(self.noise_std),)


# How a judge trains unless told otherwise: no moving average, a light weight decay.
JUDGE_TRAINING = TrainConfig(steps=800, batch_size=64, learning_rate=2e-3, warmup=0.1, weight_decay=1e-4,
                             ema_decay=0.0, checkpoint_every=0)


def train_judge(dataset: CaptionedImages, train_config: TrainConfig = JUDGE_TRAINING, noise_std: float = 0.15,
                progress: bool = True, **config_overrides) -> Judge:
    """Train a judge on every label of `dataset` (its images and labels; captions are not used), in the one
    loop (`minidiff.loop`)."""
    config = JudgeConfig.for_dataset(dataset, **config_overrides)
    if not config.heads:
        raise ValueError(f"{dataset.name} has no labels with two or more classes to train a judge on")
    run = new_run(initialised(Judge, config, train_config.seed), train_config)
    return train(run, JudgeTraining(dataset, config, train_config, noise_std), progress=progress).trained


@nnx.jit
def _features_and_predictions(model: Judge, images_uint8):
    features, logits = model(to_model_range(images_uint8))
    return features, {name: jnp.argmax(head, -1) for name, head in split_logits(model.config, logits).items()}


def features_and_predictions(model: Judge, images_uint8, batch_size: int = 256):
    """Features (N, F) and {label name: predicted class (N,)} for uint8 images (N, H, W, 3)."""
    images_uint8 = np.asarray(images_uint8)
    expected = (model.config.image_size, model.config.image_size, 3)
    if images_uint8.shape[1:] != expected:
        raise ValueError(f"the judge was trained on {expected} images, got {images_uint8.shape[1:]}")
    features, predictions = [], []
    for start in range(0, len(images_uint8), batch_size):
        f, p = _features_and_predictions(model, jnp.asarray(images_uint8[start : start + batch_size]))
        features.append(np.asarray(f))
        predictions.append({k: np.asarray(v) for k, v in p.items()})
    return np.concatenate(features), {k: np.concatenate([p[k] for p in predictions]) for k in predictions[0]}


def label_agreement(predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Per label, the fraction of images (where the label applies) predicted as that label."""
    scores = {}
    for name, predicted in predictions.items():
        known = labels[name] >= 0
        if known.any():
            scores[name] = float(np.mean(predicted[known] == labels[name][known]))
    return scores


def save_judge(model: Judge, path) -> Path:
    return save_checkpoint(path, {"kind": "judge", "judge_config": dataclasses.asdict(model.config)}, judge=model)


def load_judge(path) -> Judge:
    checkpoint = Checkpoint(path)
    (config,) = checkpoint.fields("judge_config", kind="judge")
    model = shapes_only(Judge, JudgeConfig.from_dict(config))
    checkpoint.restore("judge", model)
    return model
