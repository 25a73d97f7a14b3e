"""The text-to-image model: the caption encoder and the U-Net as one module, and presets.

    token ids --TextEncoder--> caption embeddings --+
                                                   v
    x_t, noise level t ---------------------------> UNet --> eps / x0 / v

Presets are named sizes: `tiny` for tests, `small` for a CPU demo in minutes,
`base` for a GPU. Override any field with `dataclasses.replace`.
"""

import dataclasses

import jax
from flax import nnx

from minidiff.captions import TextEncoder, TextEncoderConfig
from minidiff.corruption import PREDICTIONS
from minidiff.denoiser import UNet, UNetConfig
from minidiff.machinery.initialisation import initialised


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    unet: UNetConfig
    text: TextEncoderConfig
    prediction: str = "v"  # what the network outputs: "eps", "x0" or "v"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}: choose one of {PREDICTIONS}")
        if self.unet.caption_dim != self.text.dim:
            raise ValueError(f"unet.caption_dim ({self.unet.caption_dim}) must equal text.dim ({self.text.dim})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        unet = {k: tuple(v) if isinstance(v, list) else v for k, v in d["unet"].items()}
        unet.setdefault("modulated_output_norm", False)  # checkpoints from before the option have a plain one
        return cls(unet=UNetConfig(**unet), text=TextEncoderConfig(**d["text"]), prediction=d["prediction"])


# Named sizes of the U-Net, and of the text encoder that goes with it (dim, depth, heads).
UNET_PRESETS = {
    # About 0.3 M parameters: for tests, and for the demo, which trains for minutes on a CPU (with
    # attention at 8x8 too): it makes several times the steps of the small one in the same time.
    "tiny": UNetConfig(widths=(16, 32), attention_resolutions=(4,), heads=2, groups=4, cond_dim=32, caption_dim=32),
    # About 3.0 M parameters: trains in minutes on a laptop CPU. Attention only at 4x4: at 8x8
    # too, every step costs more (the README's "How well it follows captions" has what that buys).
    "small": UNetConfig(widths=(32, 64, 96), attention_resolutions=(4,), cond_dim=128, caption_dim=128),
    # About 56 M parameters (53 M in the U-Net), without the patch stem: for a GPU.
    "base": UNetConfig(
        patch_size=1, widths=(128, 256, 256, 256), blocks_per_level=2,
        attention_resolutions=(16, 8), heads=8, groups=32, cond_dim=512, caption_dim=256,
    ),
}
TEXT_PRESETS = {"tiny": (32, 1, 2), "small": (128, 2, 4), "base": (256, 4, 8)}
PRESETS = tuple(UNET_PRESETS)


def preset(name: str, vocab_size: int, image_size: int = 32, max_length: int = 32, **overrides) -> ModelConfig:
    """A named model size. `overrides` replace fields of the U-Net config."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {PRESETS}")
    unet = dataclasses.replace(UNET_PRESETS[name], image_size=image_size, **overrides)
    # Only sizes the user asked for are checked: a preset's own may miss at another image size
    # (the small preset at 64 px has no 4x4 level, so it attends in the middle only).
    missing = set(overrides.get("attention_resolutions", ())) - set(unet.level_sizes)
    if missing:
        raise ValueError(f"no level of the {name} U-Net at {image_size}px has feature maps of size "
                         f"{sorted(missing)}: attention can go at {list(unet.level_sizes)}")
    dim, depth, heads = TEXT_PRESETS[name]
    text = TextEncoderConfig(vocab_size=vocab_size, max_length=max_length, dim=dim, depth=depth, heads=heads)
    return ModelConfig(unet=unet, text=text)


class TextToImage(nnx.Module):
    """denoiser(x_t, t, caption) — the whole network a sampler calls."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.text_encoder = TextEncoder(config.text, rngs=rngs)
        self.unet = UNet(config.unet, rngs=rngs)

    def encode_captions(self, token_ids):
        """(B, L) ids -> (tokens (B, L, D), mask (B, L), pooled (B, D)); reused across sampling steps."""
        return self.text_encoder(token_ids)

    def denoise(self, xt, t, caption_embedding):
        return self.unet(xt, t, *caption_embedding)

    def __call__(self, xt, t, token_ids):
        return self.denoise(xt, t, self.encode_captions(token_ids))


def create_model(config: ModelConfig, seed: int = 0) -> TextToImage:
    """A text-to-image model with random parameters, as its modules declare them (see `initialised`)."""
    return initialised(TextToImage, config, seed)


def count_parameters(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
