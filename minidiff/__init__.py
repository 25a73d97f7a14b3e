"""minidiff: a small, readable text-to-image diffusion library in JAX and Flax NNX."""

from minidiff.generator import Generator, load

__version__ = "0.1.0"
__all__ = ["Generator", "load"]
