"""minidiff: a small, readable text-to-image diffusion library in JAX and Flax NNX.

    import minidiff
    generator = minidiff.load("runs/demo/checkpoint.npz")   # see minidiff/generator.py

`load` and `Generator` are looked up when first used (PEP 562), so that importing
one stage (`minidiff.corruption`, say) imports that stage and what it needs, not
the whole library.
"""

__version__ = "0.1.0"
__all__ = ["Generator", "load"]


def __getattr__(name: str):
    if name in __all__:
        from minidiff import generator

        return getattr(generator, name)
    raise AttributeError(f"module 'minidiff' has no attribute {name!r}")
