"""Chapter 07, How good, how fast: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import numpy as np


def _frechet_parts(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
    trace_root = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    return mu_a - mu_b, cov_a, cov_b, trace_root


def _frechet(a, b, square_means: bool = True, root: bool = True, twice: bool = True):
    mean_gap, cov_a, cov_b, trace_root = _frechet_parts(a, b)
    means = np.sum(mean_gap**2) if square_means else np.linalg.norm(mean_gap)
    cross = trace_root if root else np.trace(cov_a @ cov_b)
    return means + np.trace(cov_a) + np.trace(cov_b) - (2 if twice else 1) * cross


FRECHET_DISTANCE = {
    "the distance between the means is not squared: ||mu_a - mu_b||^2":
        lambda a, b: _frechet(a, b, square_means=False),
    "the square root of Sigma_a Sigma_b is missing in the cross term":
        lambda a, b: _frechet(a, b, root=False),
    "the cross term is subtracted once: it is 2 tr((Sigma_a Sigma_b)^1/2)":
        lambda a, b: _frechet(a, b, twice=False),
}


def _mean_kl(p, reverse: bool = False):
    marginal = p.mean(0, keepdims=True)
    if reverse:
        return np.mean(np.sum(marginal * (np.log(marginal) - np.log(p)), axis=1))
    return np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))


INCEPTION_SCORE = {
    "the exp is missing: that is the mean KL divergence, the log of the score":
        lambda p: _mean_kl(p),
    "the KL divergence the wrong way round: KL(p(y|x) || p(y)), each image's prediction first":
        lambda p: np.exp(_mean_kl(p, reverse=True)),
}


def _mmd(x, y, drop_diagonals: bool = True, cross_weight: float = 2.0):
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
    within = []
    for z in (x, y):
        kzz, n = k(z, z), len(z)
        within.append((kzz.sum() - np.trace(kzz)) / (n * (n - 1)) if drop_diagonals else kzz.mean())
    return within[0] + within[1] - cross_weight * k(x, y).mean()


MMD_SQUARED = {
    "the diagonals are kept: k(x, x) of an image with itself biases the estimate upwards":
        lambda x, y: _mmd(x, y, drop_diagonals=False),
    "the cross term is subtracted once: it is twice the mean of k over pairs across the sets":
        lambda x, y: _mmd(x, y, cross_weight=1.0),
}
