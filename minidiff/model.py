"""The text-to-image model: the caption encoder and the denoiser as one module, and presets.

    token ids --TextEncoder--> caption embeddings --+
                                                   v
    x_t, noise level t ---------------------------> UNet or DiT --> eps / x0 / v, or a velocity
    (an upscaler's low-res image and its level) ----^

x_t is an image, or for a latent model an autoencoder's latent (`minidiff.autoencoder`).

The denoiser's backbone is a U-Net (`minidiff.denoiser`) or a transformer over
patches (`minidiff.dit`); the objective is diffusion (`minidiff.corruption`:
the network predicts eps, x0 or v) or a straight-line flow (`minidiff.flows`:
it predicts the velocity). Presets are named sizes: `tiny` for tests, `small`
for a CPU demo in minutes, `base` for a GPU; a DiT preset costs about the
FLOPs of the U-Net preset of the same name. Override any field with
`dataclasses.replace`.
"""

import dataclasses

import jax
from flax import nnx

from minidiff.captions import TextEncoderConfig
from minidiff.corruption import PREDICTIONS
from minidiff.denoiser import UNet, UNetConfig
from minidiff.dit import DiT, DiTConfig
from minidiff.flows import VELOCITY
from minidiff.machinery.initialisation import initialised
from minidiff.text_encoders import TEXT_ENCODERS

BACKBONES = {"unet": UNetConfig, "dit": DiTConfig}
# What the network may predict under each objective; the first is the default.
OBJECTIVES = {"diffusion": ("v", *(p for p in PREDICTIONS if p != "v")), "flow": (VELOCITY,)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    denoiser: UNetConfig | DiTConfig  # its type is the backbone
    text: TextEncoderConfig
    prediction: str = "v"  # what the network outputs: "eps", "x0" or "v" for diffusion; "velocity" for a flow
    objective: str = "diffusion"  # one of OBJECTIVES
    # An upscaler's (`minidiff.superres`): the side of the low-resolution image it is conditioned on, besides
    # the caption; its denoiser takes that image as extra input channels. 0: a base model, captions alone.
    upscale_from: int = 0
    # A latent model's (`minidiff.autoencoder`): the SHA-256 of the autoencoder file whose latents it diffuses
    # (its denoiser's image_size and channels are the latent's), and where that file was when it trained.
    # "": a pixel model.
    autoencoder_sha256: str = ""
    autoencoder_file: str = ""

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: choose one of {tuple(OBJECTIVES)}")
        if self.text.kind not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {self.text.kind!r}: choose one of {tuple(TEXT_ENCODERS)}")
        if self.prediction not in OBJECTIVES[self.objective]:
            raise ValueError(f"a {self.objective} model cannot predict {self.prediction!r}: "
                             f"choose one of {OBJECTIVES[self.objective]}")
        if self.denoiser.caption_dim != self.text.dim:
            raise ValueError(f"the denoiser's caption_dim ({self.denoiser.caption_dim}) must equal "
                             f"text.dim ({self.text.dim})")
        self._check_upscaler()
        if bool(self.autoencoder_sha256) != bool(self.autoencoder_file):
            raise ValueError("a latent model records both its autoencoder's file and its SHA-256, or neither")
        if self.autoencoder_sha256 and self.upscale_from:
            raise ValueError("an upscaler works on pixels here: it cannot be a latent model too")

    @property
    def latent(self) -> bool:
        """Whether the model diffuses an autoencoder's latents rather than pixels."""
        return bool(self.autoencoder_sha256)

    def _check_upscaler(self):
        denoiser, size = self.denoiser, self.denoiser.image_size
        if not isinstance(self.upscale_from, int) or not 0 <= self.upscale_from < size:
            raise ValueError(f"an upscaler to {size} px upscales from a smaller whole number of pixels, "
                             f"got upscale_from={self.upscale_from!r} (0: a base model)")
        if self.upscale_from and self.backbone != "unet":
            raise ValueError("only a U-Net can be an upscaler here: use the unet backbone")
        low_res_channels = getattr(denoiser, "low_res_channels", 0)
        if low_res_channels != (denoiser.channels if self.upscale_from else 0):
            raise ValueError(f"the denoiser takes {low_res_channels} low-res channels, but "
                             + (f"an upscaler is shown a {denoiser.channels}-channel image" if self.upscale_from
                                else "a base model (upscale_from=0) is shown none"))

    @property
    def backbone(self) -> str:
        return next(name for name, kind in BACKBONES.items() if isinstance(self.denoiser, kind))

    def to_dict(self) -> dict:
        """The config as a checkpoint's header holds it: the denoiser's fields under its backbone's name."""
        return {"backbone": self.backbone, self.backbone: dataclasses.asdict(self.denoiser),
                "text": dataclasses.asdict(self.text), "prediction": self.prediction, "objective": self.objective,
                "upscale_from": self.upscale_from, "autoencoder_sha256": self.autoencoder_sha256,
                "autoencoder_file": self.autoencoder_file}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Also reads headers written before DiTs and flows existed: a U-Net trained with diffusion."""
        backbone = d.get("backbone", "unet")
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r} in a saved model config: this minidiff knows "
                             f"{tuple(BACKBONES)}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d[backbone].items()}
        if backbone == "unet":
            fields.setdefault("modulated_output_norm", False)  # checkpoints from before the option have a plain one
        return cls(denoiser=BACKBONES[backbone](**fields), text=TextEncoderConfig(**d["text"]),
                   prediction=d["prediction"], objective=d.get("objective", "diffusion"),
                   upscale_from=d.get("upscale_from", 0), autoencoder_sha256=d.get("autoencoder_sha256", ""),
                   autoencoder_file=d.get("autoencoder_file", ""))


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
# Transformers of about the FLOPs per image of the U-Net preset of the same name at 32 px (XLA's cost
# analysis of one forward pass; the README's "Transformers and flows" has the counts). The cheap ones cut
# 4 x 4 patches: 64 tokens at 32 px. Their text encoders are the U-Net's.
DIT_PRESETS = {
    "tiny": DiTConfig(patch_size=4, width=64, depth=4, heads=2, caption_dim=32),
    "small": DiTConfig(patch_size=4, width=128, depth=5, heads=4, caption_dim=128),
    "base": DiTConfig(patch_size=2, width=384, depth=12, heads=6, caption_dim=256),
}
TEXT_PRESETS = {"tiny": (32, 1, 2), "small": (128, 2, 4), "base": (256, 4, 8)}
PRESETS = tuple(UNET_PRESETS)


def preset(name: str, vocab_size: int, image_size: int = 32, max_length: int = 32, backbone: str = "unet",
           objective: str = "diffusion", upscale_from: int = 0, text_encoder: str = "transformer",
           **overrides) -> ModelConfig:
    """A named model size. `overrides` replace fields of the denoiser's config (`UNetConfig` or `DiTConfig`).
    With `upscale_from`, an upscaler from that many pixels to `image_size` (`minidiff.superres`);
    `text_encoder` is the kind of network that reads the captions (`minidiff.text_encoders`)."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {PRESETS}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: choose one of {tuple(BACKBONES)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose one of {tuple(OBJECTIVES)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(BACKBONES[backbone])}
    if unknown:
        raise ValueError(f"a {backbone} has no setting {', '.join(sorted(unknown))}")
    if upscale_from and backbone == "unet":
        overrides = {"low_res_channels": overrides.get("channels", UNET_PRESETS[name].channels)} | overrides
    denoiser = dataclasses.replace((DIT_PRESETS if backbone == "dit" else UNET_PRESETS)[name], image_size=image_size,
                                   **overrides)
    if backbone == "unet":
        # Only sizes the user asked for are checked: a preset's own may miss at another image size
        # (the small preset at 64 px has no 4x4 level, so it attends in the middle only).
        missing = set(overrides.get("attention_resolutions", ())) - set(denoiser.level_sizes)
        if missing:
            raise ValueError(f"no level of the {name} U-Net at {image_size}px has feature maps of size "
                             f"{sorted(missing)}: attention can go at {list(denoiser.level_sizes)}")
    dim, depth, heads = TEXT_PRESETS[name]
    text = TextEncoderConfig(vocab_size=vocab_size, max_length=max_length, dim=dim, depth=depth, heads=heads,
                             kind=text_encoder)
    return ModelConfig(denoiser=denoiser, text=text, prediction=OBJECTIVES[objective][0], objective=objective,
                       upscale_from=upscale_from)


class TextToImage(nnx.Module):
    """denoiser(x_t, t, caption) — the whole network a sampler calls."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.text_encoder = TEXT_ENCODERS[config.text.kind](config.text, rngs=rngs)
        # Named by its kind, so that a checkpoint's arrays say which network they belong to.
        if config.backbone == "unet":
            self.unet = UNet(config.denoiser, rngs=rngs)
        else:
            self.dit = DiT(config.denoiser, rngs=rngs)

    @property
    def denoiser(self) -> UNet | DiT:
        return self.unet if self.config.backbone == "unet" else self.dit

    def encode_captions(self, token_ids):
        """(B, L) ids -> (tokens (B, L, D), mask (B, L), pooled (B, D)); reused across sampling steps."""
        return self.text_encoder(token_ids)

    def caption_embeddings(self, caption):
        """Token ids (B, L) are encoded; embeddings already made (a tuple, as `encode_captions` returns:
        a frozen encoder's, cached once for a whole dataset) are used as they are."""
        return tuple(caption) if isinstance(caption, (tuple, list)) else self.encode_captions(caption)

    def denoise(self, xt, t, conditioning):
        """conditioning: the caption's embeddings (`encode_captions`), followed, for an upscaler, by its
        low-res image and that image's noise level (`minidiff.superres.low_res_condition`)."""
        return self.denoiser(xt, t, *conditioning)

    def __call__(self, xt, t, caption, *low_res_condition):
        """caption: token ids (B, L), or their embeddings (`caption_embeddings`)."""
        return self.denoise(xt, t, (*self.caption_embeddings(caption), *low_res_condition))


def create_model(config: ModelConfig, seed: int = 0) -> TextToImage:
    """A text-to-image model with random parameters, as its modules declare them (see `initialised`)."""
    return initialised(TextToImage, config, seed)


def count_parameters(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
