"""What every dataset is: images as uint8 arrays, captions, optional labels.

A dataset is decoded once into memory (N, H, W, 3) uint8; a training batch is
drawn from it by index, so nothing is decoded or re-tokenised per step.
"""

import dataclasses
import re

import numpy as np

from minidiff.captions import words
from minidiff.corruption import to_model_range


@dataclasses.dataclass(frozen=True)
class CaptionedImages:
    """N images with one or more captions each, and optional attribute labels.

    images:      (N, H, W, 3) uint8; or, with `latent`, an autoencoder's latents
                 (N, h, w, c) float32 (`minidiff.latents.latent_dataset`).
    captions:    N tuples of strings; training draws one of them per use, as
                 with the ten captions per image of Reed et al. 2016.
    labels:      attribute name -> (N,) int array, indexing label_names[name];
                 -1 where an attribute does not apply to an image.
    label_names: attribute name -> the names of its values.
    flip_ok:     whether a mirrored image still matches its captions (not for
                 the embedded birds, whose captions say which way they face),
                 so training may flip images at random.
    skipped:     what the loader could not use, by reason, with counts.
    latent:      whether `images` holds latents rather than pixels.
    """

    name: str
    images: np.ndarray
    captions: tuple[tuple[str, ...], ...]
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    label_names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    flip_ok: bool = False
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    latent: bool = False

    def __post_init__(self):
        if not self.latent:
            check_images(self.images, what=f"dataset {self.name!r}")
        elif self.images.ndim != 4 or self.images.shape[1] != self.images.shape[2] or self.images.dtype != np.float32:
            raise ValueError(f"dataset {self.name!r}: latents must be float32 (N, h, w, c) with h = w, got "
                             f"{self.images.dtype} {self.images.shape}")
        if len(self.captions) != len(self.images):
            raise ValueError(
                f"dataset {self.name!r} has {len(self.images)} images but "
                f"{len(self.captions)} caption lists; give one list per image"
            )
        for i, options in enumerate(self.captions):
            if not options:
                raise ValueError(f"dataset {self.name!r}: image {i} has no caption")
            for caption in options:
                if not words(caption):
                    raise ValueError(f"dataset {self.name!r}: image {i} has a caption with no words, {caption!r}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return self.images.shape[1]

    def all_captions(self) -> list[str]:
        return [c for options in self.captions for c in options]

    def subset(self, indices) -> "CaptionedImages":
        indices = np.asarray(indices)
        return dataclasses.replace(
            self,
            images=self.images[indices],
            captions=tuple(self.captions[i] for i in indices),
            labels={k: v[indices] for k, v in self.labels.items()},
        )


def combine(*datasets: CaptionedImages, name: str | None = None) -> CaptionedImages:
    """Several datasets of the same image size as one, e.g. flowers and birds for one model.

    Their own labels do not line up, so the result keeps one: "dataset", which
    of the inputs each image came from.
    """
    sizes = {d.image_size for d in datasets}
    if len(sizes) != 1:
        raise ValueError(f"cannot combine datasets of different image sizes {sorted(sizes)}; load them at one size")
    return CaptionedImages(
        name=name or "+".join(d.name for d in datasets),
        images=np.concatenate([d.images for d in datasets]),
        captions=tuple(c for d in datasets for c in d.captions),
        labels={"dataset": np.concatenate([np.full(len(d), i) for i, d in enumerate(datasets)]).astype(np.int64)},
        label_names={"dataset": tuple(d.name for d in datasets)},
        flip_ok=all(d.flip_ok for d in datasets),
    )


def check_images(images, what: str = "images") -> None:
    """Raise a clear error unless `images` is an (N, H, W, 3) uint8 array of square images."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{what}: expected shape (N, H, W, 3) (RGB, channels last), got {images.shape}"
        )
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"{what}: expected square images, got {images.shape[1]}x{images.shape[2]}")
    if images.dtype != np.uint8:
        raise ValueError(
            f"{what}: expected uint8 pixels in [0, 255], got {images.dtype}; "
            "convert with (x * 255).round().astype(np.uint8) if they are floats in [0, 1]"
        )


def with_articles(sentence: str) -> str:
    """'a orange beak' -> 'an orange beak' (for captions filled in from templates)."""
    return re.sub(r"\ba (?=[aeiou])", "an ", sentence)


def caption_choices(captions_per_image: np.ndarray, seed: int, step: int) -> np.ndarray:
    """Which of each image's captions batch `step` uses (one drawn per image per use)."""
    rng = np.random.default_rng([seed, step, 1])
    return (rng.random(len(captions_per_image)) * captions_per_image).astype(np.int64)


def mirror_some(images: np.ndarray, seed: int, step: int) -> np.ndarray:
    """Flip about half of batch `step`'s images left to right (a pure function of seed and step)."""
    flip = np.random.default_rng([seed, step, 2]).random(len(images)) < 0.5
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def model_inputs(dataset: CaptionedImages, indices, seed: int, step: int) -> np.ndarray:
    """The images of training batch `step` as a model takes them: pixels in [-1, 1] (float32), about half
    of them mirrored where the dataset's captions allow it (`flip_ok`); a latent dataset's latents as
    they are (a mirrored latent is not the latent of the mirrored image)."""
    images = dataset.images[indices]
    if dataset.latent:
        return images
    if dataset.flip_ok:
        images = mirror_some(images, seed, step)
    return to_model_range(images)


def tokenize_dataset(dataset: CaptionedImages, tokenizer):
    """All captions as ids once, (N, max captions per image, L), and each image's caption count.
    `tokenizer`: a `minidiff.captions.Tokenizer`."""
    counts = np.array([len(c) for c in dataset.captions])
    ids = np.zeros((len(dataset), counts.max(), tokenizer.max_length), np.int32)
    for i, options in enumerate(dataset.captions):
        ids[i, : len(options)] = tokenizer.encode_batch(options, truncate=True)
    return ids, counts
