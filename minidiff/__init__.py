"""minidiff: a small, readable text-to-image diffusion library in JAX and Flax NNX."""

__version__ = "0.1.0"
