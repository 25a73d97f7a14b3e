"""How good are the samples? The statistics behind FID, KID and the Inception Score.

All three compare what a pretrained network sees in generated images with
what it sees in real ones (the network lives elsewhere: `inception.py` for
the standard one, `judge.py` for a small one trained here). This file
holds only the statistics, in numpy float64, on feature vectors (N, D) and
class probabilities (N, K):

  - Fréchet distance (Heusel et al. 2017, "GANs trained by a two time-scale
    update rule", eq. 6 — FID when the features are Inception's): fit a
    Gaussian to each set of features and measure the 2-Wasserstein distance
    between the Gaussians. Biased at small N (it shrinks as N grows), so only
    compare figures computed with the same N.
  - Kernel distance (Bińkowski et al. 2018, "Demystifying MMD GANs", eq. 4 —
    KID with Inception's features): the squared maximum mean discrepancy with
    a cubic polynomial kernel, estimated without bias over random subsets.
    Unbiased, so it can be slightly negative, and small N is fine.
  - Inception Score (Salimans et al. 2016, sec. 4): exp E_x KL(p(y|x) || p(y)),
    high when each image is confidently one class and the classes are varied.
    It never looks at real images at all.

Two pixel statistics besides: PSNR, how close an image is to the one it should
be (an upscaler's output against the real image), and saturation, how much of
an image sits at the ends of the range (what strong guidance does).
"""

import numpy as np


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features of shape (N, D) with N >= 2, got {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def _symmetric_sqrt(matrix) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2).

    The usual formula writes tr((S_a S_b)^1/2); S_a S_b is not symmetric, but it
    has the same eigenvalues as the symmetric S_a^1/2 S_b S_a^1/2, whose square
    root is stable to compute from its eigenvalues (no complex parts to discard).
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    root_a = _symmetric_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_of_sqrt = np.sqrt(np.clip(cross, 0.0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_of_sqrt
    return float(max(distance, 0.0))  # rounding can leave -1e-12 for identical sets


def frechet_distance_of(features_a, features_b) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features."""
    return frechet_distance(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


def polynomial_kernel(x, y) -> np.ndarray:
    """k(x, y) = (x . y / D + 1)^3, the kernel KID uses."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd_squared_unbiased(x, y) -> float:
    """The unbiased estimate of MMD^2 between the distributions of x (m, D) and y (n, D):
    mean k(x, x') over distinct pairs + mean k(y, y') over distinct pairs - 2 mean k(x, y)."""
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_distance(features_a, features_b, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: the mean and standard deviation of MMD^2 over random subsets of both sets.

    Subsets bound the cost (the kernel matrix is quadratic in N). With no more
    than subset_size features in either set, the subsets would all be the
    whole sets: then the estimate is made once and its std reported as 0.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"need at least 2 features in each set, got {len(a)} and {len(b)}")
    if size == len(a) == len(b):
        num_subsets = 1
    rng = np.random.default_rng(seed)
    estimates = [
        mmd_squared_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(estimates)), float(np.std(estimates))


def inception_score(probabilities, num_splits: int = 10) -> tuple[float, float]:
    """IS: exp(mean_x KL(p(y|x) || p(y))) in each of num_splits parts; their mean and std.

    It ranges from 1 (every image gets the same prediction, or every prediction
    is uniform) to K (confident predictions spread evenly over all K classes).
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("inception_score needs class probabilities (N, K) whose rows sum to 1")
    scores = []
    for part in np.array_split(p, min(num_splits, len(p))):  # no empty parts when N < num_splits
        marginal = part.mean(0, keepdims=True)
        # 0 log 0 = 0: classes an image gives no probability add nothing.
        kl = np.sum(np.where(part > 0, part * (np.log(np.where(part > 0, part, 1.0)) - np.log(marginal + 1e-30)), 0.0), 1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def psnr(images_uint8, reference_uint8) -> float:
    """Peak signal-to-noise ratio, 10 log10(255^2 / MSE) in dB, of each image (N, H, W, C) against its
    reference, averaged over the images. Higher is closer; it rewards a blurred guess over a sharp wrong one."""
    images, reference = (np.asarray(x, np.float64) for x in (images_uint8, reference_uint8))
    if images.shape != reference.shape or images.ndim != 4:
        raise ValueError(f"need two arrays of images of one shape (N, H, W, C), got {images.shape} and "
                         f"{reference.shape}")
    mse = np.mean((images - reference) ** 2, axis=(1, 2, 3))
    return float(np.mean(10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def saturation(images_uint8) -> dict[str, float]:
    """How far images (N, H, W, C) are pushed to the ends of their range: the mean |x| in [-1, 1] units
    (0: all mid-grey, 1: every value at an end), and the fraction of values at 0 or 255."""
    images = np.asarray(images_uint8)
    return {"mean_abs": float(np.mean(np.abs(images / 127.5 - 1.0))),
            "at_the_ends": float(np.mean((images == 0) | (images == 255)))}
