"""Chapter 09, Latent diffusion: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax
import jax.numpy as jnp
import numpy as np


SAMPLE_POSTERIOR = {
    "exp(log_variance) is the variance: the standard deviation is exp(log_variance / 2)":
        lambda mean, log_variance, key: mean + jnp.exp(log_variance) * jax.random.normal(key, mean.shape),
    "the log-variance used as the standard deviation":
        lambda mean, log_variance, key: mean + log_variance * jax.random.normal(key, mean.shape),
}

KL = {
    "the mean over positions where the sum belongs":
        lambda mean, log_variance: 0.5 * jnp.mean(mean**2 + jnp.exp(log_variance) - 1.0 - log_variance, axis=(1, 2, 3)),
    "the factor 1/2 is missing":
        lambda mean, log_variance: jnp.sum(mean**2 + jnp.exp(log_variance) - 1.0 - log_variance, axis=(1, 2, 3)),
    "the - 1 is missing: the KL divergence of N(0, I) from itself must be 0":
        lambda mean, log_variance: 0.5 * jnp.sum(mean**2 + jnp.exp(log_variance) - log_variance, axis=(1, 2, 3)),
}

LATENT_SCALE = {
    "the standard deviation itself: the scale divides by it, so that the latents have unit variance":
        lambda latents: np.std(latents),
    "one over the variance: the scale is one over the standard deviation":
        lambda latents: 1.0 / np.var(latents),
}
