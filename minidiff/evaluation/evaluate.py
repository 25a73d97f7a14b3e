"""Evaluation: generate images for held-out captions and measure them.

    held-out (image, caption) pairs --captions--> generator --> generated images
                  |                                               |
                  +-- real images, labels ---> judge / Inception <+--> FD, KID, IS, adherence
                  +-- their captions ---------> caption judge <---+--> R-precision, similarity

The captions come from images the generator never trained on (the embedded
set's test split, the eval split of flowers and birds), so the real images
are the reference the generated ones are compared with, and their labels say
what each caption asked for. The judge is `judge.py`'s network, the caption
judge `caption_judge.py`'s; with the FID Inception weights, FID, KID and IS are
computed too.

Sample size matters: Fréchet distances shrink as N grows (they are biased),
so only figures computed with the same N and the same feature network are
comparable. KID is unbiased and is the better figure at small N.
"""

import dataclasses
from pathlib import Path

import numpy as np

from minidiff.corruption import to_model_range, to_uint8
from minidiff.datasets import TOY, load_dataset, toy_dataset
from minidiff.datasets.base import CaptionedImages
from minidiff.evaluation.caption_judge import (CAPTION_JUDGE_TRAINING, TrainedCaptionJudge,
                                               caption_metrics, load_caption_judge, save_caption_judge,
                                               train_caption_judge)
from minidiff.evaluation.inception import inception_outputs
from minidiff.evaluation.judge import (JUDGE_TRAINING, Judge, features_and_predictions, label_agreement, load_judge,
                                      save_judge, train_judge)
from minidiff.evaluation.metrics import frechet_distance_of, inception_score, kernel_distance
from minidiff.generator import Generator

# What a judge of flowers or birds learns from: every image the evaluation set does not hold, for more
# steps than the embedded set's judge needs. Trained on the official train split alone (10 images per
# flower class), it recognised too few real flowers for its verdicts on generated ones to mean much (the
# docs/latents.md has its accuracy each way).
JUDGE_SPLIT = "all_but_eval"
JUDGE_STEPS = {"embedded": 800, "real": 2000}


def reference_set(name: str, image_size: int, num_images: int = 1000, data_dir=None, seed: int = 0,
                  split: str | None = None) -> CaptionedImages:
    """Held-out images with their captions and labels: the embedded set's test split (attribute pairs
    seen in training; `split="held_out"`, pairs never seen), drawn from another seed than the
    training images, or flowers' and birds' eval split."""
    if name in TOY:
        return toy_dataset(TOY[name], split=split or "test", num_images=num_images, image_size=image_size,
                           seed=seed + 1000)
    reference = load_dataset(name, split or "eval", image_size=image_size, data_dir=data_dir)
    # A seeded random choice, not the first N: the files are ordered by class, and the first N
    # would cover only a few classes.
    chosen = np.random.default_rng(seed).permutation(len(reference))[:num_images]
    return reference.subset(chosen)


def judge_for(checkpoint, dataset_name: str, image_size: int, path=None, data_dir=None, progress: bool = True,
              steps: int | None = None) -> Judge:
    """The judge of a generator's images: the one at `path` (which must exist), else the one kept
    beside the generator's checkpoint, trained (`train_judge`, for `steps`, JUDGE_STEPS unless
    given) and saved there if missing: on every image of flowers or birds outside the evaluation set
    (`JUDGE_SPLIT`), on the embedded set's train split."""
    def trained(training_set, steps):
        return train_judge(training_set, dataclasses.replace(JUDGE_TRAINING, steps=steps), progress=progress)
    return _kept_beside(checkpoint, "judge", dataset_name, image_size, path, data_dir, steps, trained, load_judge,
                        save_judge)


def caption_judge_for(checkpoint, dataset_name: str, image_size: int, path=None, data_dir=None,
                      progress: bool = True, steps: int | None = None) -> TrainedCaptionJudge:
    """The caption judge of a generator's images, found or trained as `judge_for` does the judge's."""
    def trained(training_set, steps):
        return train_caption_judge(training_set, dataclasses.replace(CAPTION_JUDGE_TRAINING, steps=steps),
                                   progress=progress)
    return _kept_beside(checkpoint, "caption-judge", dataset_name, image_size, path, data_dir, steps, trained,
                        load_caption_judge, save_caption_judge)


def _kept_beside(checkpoint, kind: str, dataset_name: str, image_size: int, path, data_dir, steps, trained, load,
                 save):
    """A judge of `kind` ("judge", "caption-judge"): loaded from `path`, else from its file beside the
    checkpoint, else `trained(training_set, steps)` and saved there with `save`."""
    name = kind.replace("-", " ")
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no {name} at {path}; leave its path out to train one")
        return load(path)
    split = "train" if dataset_name in TOY else JUDGE_SPLIT
    path = Path(checkpoint).parent / f"{kind}-{dataset_name}-{split}-{image_size}px.npz"
    if path.is_file():
        print(f"{name}: {path}")
        return load(path)
    training_set = load_dataset(dataset_name, split, image_size=image_size, data_dir=data_dir)
    print(f"training a {name} on {len(training_set)} images of {training_set.name} (once; kept at {path})")
    judge = trained(training_set, steps or JUDGE_STEPS["embedded" if dataset_name in TOY else "real"])
    save(judge, path)
    return judge


def judge_metrics(judge: Judge, generated, reference: CaptionedImages) -> dict:
    """Domain Fréchet distance and KID in the judge's features, and the judge's caption adherence.

    Image i was generated from a caption of reference image i, so reference
    label i is what it should show. The judge's own accuracy on the real
    images is reported too: adherence cannot be read more finely than that.
    """
    count = len(generated)
    real = reference.subset(np.arange(count))
    generated_features, predicted = features_and_predictions(judge, generated)
    real_features, predicted_real = features_and_predictions(judge, real.images)
    kid, kid_std = kernel_distance(generated_features, real_features, num_subsets=50, subset_size=min(count, 1000))
    adherence = label_agreement(predicted, real.labels)
    return {
        "judge_fd": frechet_distance_of(generated_features, real_features),
        "judge_kid": kid,
        "judge_kid_std": kid_std,
        "judge_adherence": adherence,
        "judge_adherence_mean": float(np.mean(list(adherence.values()))),
        "judge_accuracy_on_real": label_agreement(predicted_real, real.labels),
    }


def inception_metrics(inception, generated, real_images, batch_size: int = 50, resize: bool = True) -> dict:
    """FID, KID and IS with the FID Inception network (see inception.py), from uint8 images."""
    def outputs(images_uint8):
        features, probabilities = [], []
        for start in range(0, len(images_uint8), batch_size):
            batch = to_model_range(np.asarray(images_uint8[start : start + batch_size]))
            f, p = inception_outputs(inception, batch, resize=resize)
            features.append(np.asarray(f))
            probabilities.append(np.asarray(p))
        return np.concatenate(features), np.concatenate(probabilities)

    generated_features, probabilities = outputs(generated)
    real_features, _ = outputs(real_images)
    kid, kid_std = kernel_distance(generated_features, real_features, subset_size=min(len(generated), 1000))
    score, score_std = inception_score(probabilities)
    return {"fid": frechet_distance_of(generated_features, real_features), "kid": kid, "kid_std": kid_std,
            "inception_score": score, "inception_score_std": score_std}


def evaluate(generator: Generator, reference: CaptionedImages, judge: Judge, *, num_samples: int = 256,
             caption_judge: TrainedCaptionJudge | None = None, inception=None, progress: bool = True,
             **sampling) -> tuple[dict, np.ndarray]:
    """Generate num_samples images from the first caption of each reference image; (metrics, uint8 images).
    With a caption judge, also R-precision and caption similarity (the reference must hold at least
    DISTRACTORS + 1 images: the captions each is ranked among).

    `sampling`: `Generator.sample`'s settings (sampler, sampling_steps, guidance, seed, ...)."""
    if num_samples > len(reference):
        raise ValueError(f"asked for {num_samples} samples but the reference set has only {len(reference)} images")
    if num_samples < 2:
        raise ValueError("need at least 2 samples to fit the statistics")
    captions = [options[0] for options in reference.captions[:num_samples]]
    images = to_uint8(generator.sample(captions, truncate=True, progress=progress, **sampling))
    settings = generator.sampler_settings(**{k: v for k, v in sampling.items() if k != "seed"})
    metrics = {"sampler": settings.sampler, "sampling_steps": settings.sampling_steps, "nfe": settings.network_calls,
               "guidance": settings.guidance, "num_samples": num_samples, "reference": reference.name}
    metrics |= judge_metrics(judge, images, reference)
    if caption_judge is not None:
        metrics |= caption_metrics(caption_judge, images, reference)
    if inception is not None:
        metrics |= inception_metrics(inception, images, reference.images[:num_samples])
    return metrics, images


def sampler_sweep(generator: Generator, reference: CaptionedImages, judge: Judge, samplers, *,
                  num_samples: int = 256, progress: bool = True, **sampling) -> list[dict]:
    """`evaluate` for each (sampler, sampling_steps) in `samplers`, with the same captions and the other
    settings: one row each."""
    return [evaluate(generator, reference, judge, num_samples=num_samples, progress=progress, sampler=sampler,
                     sampling_steps=steps, **sampling)[0] for sampler, steps in samplers]
