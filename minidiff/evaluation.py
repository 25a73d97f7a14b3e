"""Evaluation: generate images for held-out captions and measure them.

    held-out (image, caption) pairs --captions--> generator --> generated images
                  |                                               |
                  +-- real images, labels ---> judge / Inception <+--> FD, KID, IS, adherence

The captions come from images the generator never trained on (the embedded
set's test split, the eval split of flowers and birds), so the real images
are the reference the generated ones are compared with, and their labels say
what each caption asked for. The judge is `classifier.py`'s network; with the
FID Inception weights, FID, KID and IS are computed too.

Sample size matters: Fréchet distances shrink as N grows (they are biased),
so only figures computed with the same N and the same feature network are
comparable. KID is unbiased and is the better figure at small N.
"""

import numpy as np

from minidiff.classifier import (Classifier, features_and_predictions, label_agreement, load_classifier,
                                 save_classifier, train_classifier)
from minidiff.datasets import load_dataset, to_uint8, toy_dataset
from minidiff.datasets.base import CaptionedImages
from minidiff.metrics import frechet_distance_of, inception_score, kernel_distance
from minidiff.sampling import function_evaluations, sample
from minidiff.sharding import mesh_for_batch


def reference_set(name: str, image_size: int, num_images: int = 1000, data_dir=None, seed: int = 0,
                  split: str | None = None) -> CaptionedImages:
    """Held-out images with their captions and labels: the embedded set's test split
    (attribute pairs seen in training, new images) or flowers'/birds' eval split."""
    if name.startswith("toy"):
        kinds = {"toy": ("flowers", "birds"), "toy-flowers": ("flowers",), "toy-birds": ("birds",)}[name]
        return toy_dataset(kinds, split=split or "test", num_images=num_images, image_size=image_size, seed=seed + 1000)
    reference = load_dataset(name, split or "eval", image_size=image_size, data_dir=data_dir)
    # A seeded random choice, not the first N: the files are ordered by class, and the first N
    # would cover only a few classes.
    chosen = np.random.default_rng(seed).permutation(len(reference))[:num_images]
    return reference.subset(chosen)


def judge_path_beside(checkpoint, dataset_name: str, image_size: int):
    """Where a generator's judge is kept: beside its checkpoint, named by dataset and size."""
    from pathlib import Path

    return Path(checkpoint).parent / f"judge-{dataset_name}-{image_size}px.npz"


def load_or_train_judge(path, dataset_name: str, image_size: int, data_dir=None, steps: int = 800,
                        must_exist: bool = False, progress: bool = True) -> Classifier:
    """The judge saved at `path`; if there is none, one trained on the dataset's train split and saved there."""
    from pathlib import Path

    path = Path(path)
    if path.is_file():
        print(f"judge: {path}")
        return load_classifier(path)
    if must_exist:
        raise FileNotFoundError(f"no judge at {path}; leave out --judge to train one")
    training = load_dataset(dataset_name, "train", image_size=image_size, data_dir=data_dir)
    print(f"training a judge on {len(training)} images of {training.name} (once; kept at {path})")
    judge = train_classifier(training, steps=steps, progress=progress)
    save_classifier(judge, path)
    return judge


def generate(model, tokenizer, schedule, captions, *, sampler: str = "ddim", num_steps: int = 50,
             guidance_scale: float = 3.0, seed: int = 0, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """One uint8 image (H, W, 3) per caption, in batches (each split over this host's devices where it
    splits evenly), with a progress bar."""
    from tqdm.auto import tqdm

    ids = tokenizer.encode_batch(list(captions), truncate=True)
    images = []
    for start in tqdm(range(0, len(ids), batch_size), desc=f"sampling ({sampler}, {num_steps} steps)",
                      disable=not progress, unit="batch"):
        rows = ids[start : start + batch_size]
        batch = sample(model, schedule, rows, tokenizer.empty(1), seed + start, num_steps=num_steps, sampler=sampler,
                       guidance_scale=guidance_scale, mesh=mesh_for_batch(len(rows)))
        images.append(to_uint8(np.asarray(batch)))
    return np.concatenate(images)


def judge_metrics(judge: Classifier, generated, reference: CaptionedImages) -> dict:
    """Domain Fréchet distance and KID in the judge's features, and caption adherence.

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
        "adherence": adherence,
        "adherence_mean": float(np.mean(list(adherence.values()))),
        "judge_accuracy_on_real": label_agreement(predicted_real, real.labels),
    }


def inception_metrics(inception, generated, real_images, batch_size: int = 50, resize: bool = True) -> dict:
    """FID, KID and IS with the FID Inception network (see inception.py), from uint8 images."""
    from minidiff.inception import inception_outputs

    def outputs(images_uint8):
        features, probabilities = [], []
        for start in range(0, len(images_uint8), batch_size):
            batch = np.asarray(images_uint8[start : start + batch_size], np.float32) / 127.5 - 1
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


def evaluate(model, tokenizer, schedule, reference: CaptionedImages, judge: Classifier, *, num_samples: int = 256,
             sampler: str = "ddim", num_steps: int = 50, guidance_scale: float = 3.0, seed: int = 0,
             inception=None, progress: bool = True) -> tuple[dict, np.ndarray]:
    """Generate num_samples images from the first caption of each reference image; (metrics, images)."""
    if num_samples > len(reference):
        raise ValueError(f"asked for {num_samples} samples but the reference set has only {len(reference)} images")
    if num_samples < 2:
        raise ValueError("need at least 2 samples to fit the statistics")
    captions = [options[0] for options in reference.captions[:num_samples]]
    images = generate(model, tokenizer, schedule, captions, sampler=sampler, num_steps=num_steps,
                      guidance_scale=guidance_scale, seed=seed, progress=progress)
    metrics = {"sampler": sampler, "steps": num_steps, "nfe": function_evaluations(sampler, num_steps),
               "guidance": guidance_scale, "num_samples": num_samples, "reference": reference.name}
    metrics |= judge_metrics(judge, images, reference)
    if inception is not None:
        metrics |= inception_metrics(inception, images, reference.images[:num_samples])
    return metrics, images


def sampler_sweep(model, tokenizer, schedule, reference: CaptionedImages, judge: Classifier, settings, *,
                  num_samples: int = 256, guidance_scale: float = 3.0, seed: int = 0, progress: bool = True) -> list[dict]:
    """`evaluate` for each (sampler, steps) in settings, with the same captions and seed: one row each."""
    rows = []
    for sampler, num_steps in settings:
        metrics, _ = evaluate(model, tokenizer, schedule, reference, judge, num_samples=num_samples, sampler=sampler,
                              num_steps=num_steps, guidance_scale=guidance_scale, seed=seed, progress=progress)
        rows.append(metrics)
    return rows
