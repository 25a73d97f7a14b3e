"""The caption judge: a small CLIP trained here, to say whether an image shows what its caption says.

The class judge (`judge.py`) reads a flower's class, but a caption says more
than a class ("pink petals with a yellow centre"), and a model can draw the
right class in the wrong colours. Text-to-image papers measure that with a
network that has learnt which captions go with which images. CLIP (Radford et
al. 2021) learns it contrastively: in a batch of B image–caption pairs, each
image must pick out its own caption among the B, and each caption its image
(a symmetric cross-entropy over the B x B cosine similarities, sharpened by a
learned temperature). Here in miniature, on the dataset's own images and
captions: the judge's convolutional network for the images, the course's
transformer for the captions, each projected to a shared unit sphere.

Two figures come of it (`caption_metrics`):

  - R-precision (Xu et al. 2018, AttnGAN sec. 5.1): each image's own caption
    is ranked among it and 99 captions of other images by similarity; the
    score is the fraction of images whose caption comes first (chance: 1 %).
    Measured on real held-out images, it is the ceiling a generator can reach.
  - the caption–image similarity: the mean cosine between each image and its
    caption, times 100 (the "CLIP score" of Hessel et al. 2021, without its clipping at 0).

Like the class judge, it shares no weights with any generator and is trained on
images the evaluation never shows.
"""

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from minidiff.captions import TextEncoder, TextEncoderConfig, Tokenizer
from minidiff.corruption import to_model_range
from minidiff.datasets.base import CaptionedImages, caption_choices, model_inputs, tokenize_dataset
from minidiff.evaluation.judge import ImageFeatures, augmented
from minidiff.loop import Task, TrainConfig, batch_indices, new_run, train
from minidiff.machinery.checkpoints import Checkpoint, save_checkpoint
from minidiff.machinery.initialisation import initialised, shapes_only

# CLIP's initial temperature (0.07), and the cap on the logit scale it learns (100), sec. 2.5.
INITIAL_LOGIT_SCALE, MAX_LOGIT_SCALE = 1 / 0.07, 100.0
DISTRACTORS = 99  # AttnGAN's R-precision: the true caption among 100


@dataclasses.dataclass(frozen=True)
class CaptionJudgeConfig:
    image_size: int
    text: TextEncoderConfig
    widths: tuple[int, ...] = (32, 64, 128)
    groups: int = 8
    embedding_dim: int = 128  # the shared space both sides are projected to

    @classmethod
    def from_dict(cls, d: dict) -> "CaptionJudgeConfig":
        return cls(image_size=d["image_size"], text=TextEncoderConfig(**d["text"]), widths=tuple(d["widths"]),
                   groups=d["groups"], embedding_dim=d["embedding_dim"])


class CaptionJudge(nnx.Module):
    """Images (B, H, W, 3) in [-1, 1] and caption ids (B, L) -> unit vectors (B, embedding_dim) each."""

    def __init__(self, config: CaptionJudgeConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.image_encoder = ImageFeatures(config.widths, config.groups, rngs=rngs)
        self.text_encoder = TextEncoder(config.text, rngs=rngs)
        self.image_projection = nnx.Linear(config.widths[-1], config.embedding_dim, rngs=rngs)
        self.text_projection = nnx.Linear(config.text.dim, config.embedding_dim, rngs=rngs)
        self.log_logit_scale = nnx.Param(jnp.log(jnp.float32(INITIAL_LOGIT_SCALE)))

    def embed_images(self, images):
        return unit(self.image_projection(self.image_encoder(images)))  # (B, E)

    def embed_captions(self, caption_ids):
        _, _, pooled = self.text_encoder(caption_ids)  # the output at BOS, which attends to every word
        return unit(self.text_projection(pooled))  # (B, E)


def unit(x):
    """Each row scaled to length 1 (in float32: the similarities below are compared to the third digit)."""
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)


def contrastive_loss(model: CaptionJudge, images, caption_ids):
    """CLIP's symmetric loss: row i of the (B, B) similarities should pick column i, and column i row i."""
    logit_scale = jnp.exp(jnp.minimum(model.log_logit_scale[...], jnp.log(MAX_LOGIT_SCALE)))
    logits = logit_scale * model.embed_images(images) @ model.embed_captions(caption_ids).T  # (B, B)
    pairs = jnp.arange(logits.shape[0])
    image_to_caption = optax.softmax_cross_entropy_with_integer_labels(logits, pairs).mean()
    caption_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, pairs).mean()
    return (image_to_caption + caption_to_image) / 2


def _training_loss(model: CaptionJudge, batch, constants, key, dtype):
    """The contrastive loss on augmented images (`judge.augmented`: shifted, grained)."""
    images, caption_ids = batch
    (noise_std,) = constants
    return contrastive_loss(model, augmented(images, key, noise_std).astype(dtype), caption_ids), {}


class CaptionJudgeTraining(Task):
    """The caption judge's part of a run: images (mirrored where the captions allow) with one of their
    captions each, drawn anew every time an image comes round."""

    kind = "caption judge run"
    description = "training the caption judge"
    loss = staticmethod(_training_loss)

    def __init__(self, dataset: CaptionedImages, tokenizer: Tokenizer, train_config: TrainConfig, noise_std: float):
        self.dataset, self.train_config, self.noise_std = dataset, train_config, noise_std
        self.ids, self.counts = tokenize_dataset(dataset, tokenizer)  # (N, captions per image, L), (N,)

    def batch(self, step: int) -> tuple:
        seed = self.train_config.seed
        index = batch_indices(len(self.dataset), self.train_config.batch_size, seed, step)
        choice = caption_choices(self.counts[index], seed, step)
        return model_inputs(self.dataset, index, seed, step), self.ids[index, choice]

    def constants(self) -> tuple:
        return (np.float32(self.noise_std),)


# How a caption judge trains unless told otherwise: large batches (more captions to tell apart per step,
# as CLIP's), no moving average.
CAPTION_JUDGE_TRAINING = TrainConfig(steps=2000, batch_size=128, learning_rate=2e-3, warmup=0.1, weight_decay=1e-4,
                                     ema_decay=0.0, checkpoint_every=0)


@dataclasses.dataclass
class TrainedCaptionJudge:
    """A caption judge and the tokenizer its captions are read with."""

    model: CaptionJudge
    tokenizer: Tokenizer


def train_caption_judge(dataset: CaptionedImages, train_config: TrainConfig = CAPTION_JUDGE_TRAINING,
                        noise_std: float = 0.15, progress: bool = True, text_dim: int = 128, text_depth: int = 2,
                        **config_overrides) -> TrainedCaptionJudge:
    """Train a caption judge on `dataset`'s images and captions, with a vocabulary of the words its captions
    use twice or more (Reed's captions are longer than a denoiser's: up to 47 words are read)."""
    tokenizer = Tokenizer.from_captions(dataset.all_captions(), max_length=48, min_count=2)
    text = TextEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=tokenizer.max_length, dim=text_dim,
                             depth=text_depth)
    config = CaptionJudgeConfig(image_size=dataset.image_size, text=text, **config_overrides)
    run = new_run(initialised(CaptionJudge, config, train_config.seed), train_config)
    task = CaptionJudgeTraining(dataset, tokenizer, train_config, noise_std)
    return TrainedCaptionJudge(train(run, task, progress=progress).trained, tokenizer)


@nnx.jit
def _embed_images(model: CaptionJudge, images_uint8):
    return model.embed_images(to_model_range(images_uint8))


@nnx.jit
def _embed_captions(model: CaptionJudge, caption_ids):
    return model.embed_captions(caption_ids)


def embed(judge: TrainedCaptionJudge, images_uint8, captions: list[str], batch_size: int = 256):
    """Unit vectors for uint8 images (N, H, W, 3) and for N captions: (N, E) each, as numpy."""
    expected = (judge.model.config.image_size,) * 2 + (3,)
    if np.shape(images_uint8)[1:] != expected:
        raise ValueError(f"the caption judge was trained on {expected} images, got {np.shape(images_uint8)[1:]}")
    ids = judge.tokenizer.encode_batch(captions, truncate=True)
    image_vectors = [np.asarray(_embed_images(judge.model, jnp.asarray(images_uint8[i : i + batch_size])))
                     for i in range(0, len(images_uint8), batch_size)]
    caption_vectors = [np.asarray(_embed_captions(judge.model, jnp.asarray(ids[i : i + batch_size])))
                       for i in range(0, len(ids), batch_size)]
    return np.concatenate(image_vectors), np.concatenate(caption_vectors)


def r_precision(image_vectors, caption_vectors, distractor_vectors, distractor_owner, owner,
                seed: int = 0, repeats: int = 10) -> float:
    """AttnGAN's R-precision: how often image i's caption (row i of caption_vectors) is more similar to it
    than each of DISTRACTORS captions drawn from `distractor_vectors` (D, E) of images other than i's own
    (`distractor_owner` (D,) names the image each came from, `owner` (N,) image i's), averaged over
    `repeats` draws. All vectors are unit length."""
    rng = np.random.default_rng(seed)
    true_similarity = np.sum(image_vectors * caption_vectors, axis=1)  # (N,)
    hits = []
    for _ in range(repeats):
        for i in range(len(image_vectors)):
            others = np.flatnonzero(distractor_owner != owner[i])
            chosen = distractor_vectors[rng.choice(others, DISTRACTORS, replace=False)]  # (99, E)
            hits.append(np.all(true_similarity[i] > chosen @ image_vectors[i]))
    return float(np.mean(hits))


def caption_metrics(judge: TrainedCaptionJudge, generated, reference: CaptionedImages, seed: int = 0) -> dict:
    """R-precision and caption–image similarity of generated images (image i drawn from reference image i's
    first caption) and, as their ceiling, of the reference's real images with the same captions. The
    distractors are the first captions of every other reference image."""
    count = len(generated)
    if len(reference) < DISTRACTORS + 1:
        raise ValueError(f"R-precision ranks a caption among {DISTRACTORS + 1}: the reference set has only "
                         f"{len(reference)} images")
    first_captions = [options[0] for options in reference.captions]
    generated_vectors, all_caption_vectors = embed(judge, generated, first_captions)
    real_vectors, _ = embed(judge, reference.images[:count], first_captions[:count])
    owner, captions = np.arange(len(reference)), all_caption_vectors[:count]
    metrics = {}
    for name, vectors in (("generated", generated_vectors), ("real", real_vectors)):
        metrics[f"r_precision_{name}"] = r_precision(vectors, captions, all_caption_vectors, owner, owner[:count],
                                                     seed)
        metrics[f"caption_similarity_{name}"] = float(100 * np.mean(np.sum(vectors * captions, axis=1)))
    return metrics


def save_caption_judge(judge: TrainedCaptionJudge, path) -> Path:
    config = dataclasses.asdict(judge.model.config)
    return save_checkpoint(path, {"kind": "caption judge", "caption_judge_config": config,
                                  "tokenizer": judge.tokenizer.to_dict()}, caption_judge=judge.model)


def load_caption_judge(path) -> TrainedCaptionJudge:
    checkpoint = Checkpoint(path)
    config, tokenizer = checkpoint.fields("caption_judge_config", "tokenizer", kind="caption judge")
    model = shapes_only(CaptionJudge, CaptionJudgeConfig.from_dict(config))
    checkpoint.restore("caption_judge", model)
    return TrainedCaptionJudge(model, Tokenizer.from_dict(tokenizer))
