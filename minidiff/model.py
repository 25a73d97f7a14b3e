"""The text-to-image model: the caption encoder and the denoiser as one module, and presets.

    token ids --text encoder--> caption embeddings --+
                                                     v
    x_t, noise level t -----------------------------> denoiser --> what the process asks for
    (an upscaler's low-res image and its level) -----^

x_t is an image, or for a latent model an autoencoder's latent (`minidiff.autoencoder`).

Each part is chosen by name from a registry, and none knows the others' kind:
the text encoder (`minidiff.text_encoders`: a transformer, an LSTM, a bag of
words; frozen if pretrained on text alone), the denoiser's backbone (a U-Net,
`minidiff.denoiser`, or a transformer over patches, `minidiff.dit`), wrapped
in an `Upscaler` for a cascade's later stage (`minidiff.superres`), and the
process it learns to undo (diffusion, `minidiff.corruption`, or a straight-line
flow, `minidiff.flows`). Presets are named sizes: `tiny` for tests, `small`
for a CPU in minutes, `base` for a GPU; a DiT preset costs about the
FLOPs of the U-Net preset of the same name.
"""

import dataclasses

import jax
from flax import nnx

from minidiff.captions import TextEncoderConfig
from minidiff.corruption import Diffusion
from minidiff.denoiser import UNet, UNetConfig
from minidiff.dit import DiT, DiTConfig
from minidiff.flows import StraightFlow
from minidiff.machinery.initialisation import initialised
from minidiff.superres import Upscaler
from minidiff.text_encoders import TEXT_ENCODERS

# Every kind of each part, by the name a config, a recipe and a checkpoint give it.
BACKBONES = {"unet": (UNetConfig, UNet), "dit": (DiTConfig, DiT)}
PROCESSES = {"diffusion": Diffusion, "flow": StraightFlow}
Process = Diffusion | StraightFlow

PRESETS = ("tiny", "small", "base")
DENOISER_PRESETS = {
    "unet": {
        # About 0.3 M parameters: for tests, and for the briefest runs on a CPU: it makes several times the
        # steps of the small one in the same time.
        "tiny": UNetConfig(widths=(16, 32), attention_resolutions=(4,), heads=2, groups=4, cond_dim=32,
                           caption_dim=32),
        # About 3.0 M parameters: trains in minutes on a laptop CPU. Attention only at 4x4: at 8x8
        # too, every step costs more (docs/adherence.md has what that buys).
        "small": UNetConfig(widths=(32, 64, 96), attention_resolutions=(4,), cond_dim=128, caption_dim=128),
        # About 56 M parameters (53 M in the U-Net), without the patch stem: for a GPU.
        "base": UNetConfig(patch_size=1, widths=(128, 256, 256, 256), blocks_per_level=2,
                           attention_resolutions=(16, 8), heads=8, groups=32, cond_dim=512, caption_dim=256),
    },
    # Transformers of about the FLOPs per image of the U-Net preset of the same name at 32 px (XLA's cost
    # analysis of one forward pass; docs/transformers_and_flows.md has the counts). The cheap ones cut
    # 4 x 4 patches: 64 tokens at 32 px.
    "dit": {
        "tiny": DiTConfig(patch_size=4, width=64, depth=4, heads=2, caption_dim=32),
        "small": DiTConfig(patch_size=4, width=128, depth=5, heads=4, caption_dim=128),
        "base": DiTConfig(patch_size=2, width=384, depth=12, heads=6, caption_dim=256),
    },
}
TEXT_PRESETS = {"tiny": (32, 1, 2), "small": (128, 2, 4), "base": (256, 4, 8)}  # (dim, depth, heads)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    denoiser: UNetConfig | DiTConfig  # its type is the backbone
    text: TextEncoderConfig
    text_encoder: str = "transformer"  # one of TEXT_ENCODERS: the network that reads the captions
    # A frozen encoder was pretrained on text alone and is never updated while the denoiser trains
    # (Saharia et al. 2022, sec. 2.1): `minidiff.text_encoders.frozen`.
    text_encoder_frozen: bool = False
    process: Process = Diffusion()  # what the model learns to undo, and what its network predicts
    # How often training blanks a caption, so that the same network learns the unconditional model that
    # classifier-free guidance needs (Ho & Salimans 2022, sec. 3.2).
    caption_dropout: float = 0.1
    # An upscaler's (`minidiff.superres`): the side of the low-resolution image it is shown, besides the
    # caption; its denoiser takes that image beside x_t. 0: a base model, captions alone.
    upscale_from: int = 0
    # A latent model's (`minidiff.autoencoder`): the SHA-256 of the autoencoder file whose latents it diffuses
    # (its denoiser's image_size and channels are the latent's), and where that file was when it trained.
    # "": a pixel model.
    autoencoder_sha256: str = ""
    autoencoder_file: str = ""

    def __post_init__(self):
        if type(self.denoiser) not in {config for config, _ in BACKBONES.values()}:
            raise ValueError(f"the denoiser's config must be one of {[c.__name__ for c, _ in BACKBONES.values()]}")
        if type(self.process) not in PROCESSES.values():
            raise ValueError(f"the process must be one of {[p.__name__ for p in PROCESSES.values()]}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {self.text_encoder!r}: choose one of {tuple(TEXT_ENCODERS)}")
        if self.denoiser.caption_dim != self.text.dim:
            raise ValueError(f"the denoiser's caption_dim ({self.denoiser.caption_dim}) must equal the text "
                             f"encoder's dim ({self.text.dim})")
        if not 0 <= self.caption_dropout <= 1:  # false for NaN too
            raise ValueError(f"caption_dropout must be a probability between 0 and 1, got {self.caption_dropout}")
        denoiser, size = self.denoiser, self.denoiser.image_size
        if not isinstance(self.upscale_from, int) or not 0 <= self.upscale_from < size:
            raise ValueError(f"an upscaler to {size} px upscales from a smaller whole number of pixels, "
                             f"got upscale_from={self.upscale_from!r} (0: a base model)")
        shown = 2 * denoiser.out_channels if self.upscale_from else denoiser.out_channels
        if denoiser.in_channels != shown:
            raise ValueError(f"the denoiser takes {denoiser.in_channels} channels in and {denoiser.out_channels} out, "
                             + ("but an upscaler is shown x_t and the low-res image side by side" if self.upscale_from
                                else "but a base model is shown x_t alone"))
        if bool(self.autoencoder_sha256) != bool(self.autoencoder_file):
            raise ValueError("a latent model records both its autoencoder's file and its SHA-256, or neither")
        if self.autoencoder_sha256 and self.upscale_from:
            raise ValueError("an upscaler works on pixels here: it cannot be a latent model too")

    @property
    def backbone(self) -> str:
        return next(name for name, (kind, _) in BACKBONES.items() if isinstance(self.denoiser, kind))

    @property
    def latent(self) -> bool:
        """Whether the model diffuses an autoencoder's latents rather than pixels."""
        return bool(self.autoencoder_sha256)

    def describe(self) -> str:
        role = ""
        if self.upscale_from:
            role = f"an upscaler from {self.upscale_from} to {self.denoiser.image_size} px, "
        if self.latent:
            size = self.denoiser.image_size
            role = f"a latent model of {size}x{size}x{self.denoiser.out_channels} latents, "
        text = f"{'a frozen pretrained' if self.text_encoder_frozen else 'a'} {self.text_encoder} text encoder"
        return f"{self.denoiser.describe()}; {role}{self.process.kind}, predicts {self.process.prediction}; {text}"

    def to_dict(self) -> dict:
        """The config as a checkpoint's header holds it: each part under its kind's name."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return fields | {"backbone": self.backbone, "denoiser": dataclasses.asdict(self.denoiser),
                         "text": dataclasses.asdict(self.text),
                         "process": {"kind": self.process.kind, **dataclasses.asdict(self.process)}}

    @classmethod
    def from_dict(cls, saved: dict) -> "ModelConfig":
        saved = dict(saved)
        denoiser_config = BACKBONES[saved.pop("backbone")][0]
        process = dict(saved.pop("process"))
        return cls(denoiser=denoiser_config(**_tuples(saved.pop("denoiser"))),
                   text=TextEncoderConfig(**saved.pop("text")),
                   process=PROCESSES[process.pop("kind")](**process), **saved)


def _tuples(fields: dict) -> dict:
    """JSON has lists where a config has tuples."""
    return {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}


def preset(name: str, vocab_size: int, image_size: int = 32, max_length: int = 32, *, backbone: str = "unet",
           process: Process = Diffusion(), text_encoder: str = "transformer", upscale_from: int = 0,
           channels: int = 3, **denoiser_settings) -> ModelConfig:
    """A named model size for captions of `vocab_size` words. `denoiser_settings` replace fields of the
    backbone's config (`UNetConfig` or `DiTConfig`); `channels` are x_t's (3 for pixels, an autoencoder's
    latent channels for a latent model). With `upscale_from`, an upscaler from that many pixels to
    `image_size` (`minidiff.superres`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {PRESETS}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: choose one of {tuple(BACKBONES)}")
    config_class = BACKBONES[backbone][0]
    made_here = sorted({"in_channels", "out_channels"} & set(denoiser_settings))
    if made_here:
        raise ValueError(f"the denoiser's {made_here[0]} follows from `channels` and `upscale_from`")
    unknown = set(denoiser_settings) - {f.name for f in dataclasses.fields(config_class)}
    if unknown:
        raise ValueError(f"a {backbone} has no setting {', '.join(sorted(unknown))}; its settings: "
                         f"{', '.join(f.name for f in dataclasses.fields(config_class))}")
    shown = 2 * channels if upscale_from else channels
    denoiser = dataclasses.replace(DENOISER_PRESETS[backbone][name], image_size=image_size, in_channels=shown,
                                   out_channels=channels, **denoiser_settings)
    if backbone == "unet":
        # Only sizes asked for are checked: a preset's own may miss at another image size (the small
        # preset at 64 px has no 4x4 level, so it attends in the middle only).
        missing = set(denoiser_settings.get("attention_resolutions", ())) - set(denoiser.level_sizes)
        if missing:
            raise ValueError(f"no level of the {name} U-Net at {image_size}px has feature maps of size "
                             f"{sorted(missing)}: attention can go at {list(denoiser.level_sizes)}")
    dim, depth, heads = TEXT_PRESETS[name]
    text = TextEncoderConfig(vocab_size=vocab_size, max_length=max_length, dim=dim, depth=depth, heads=heads)
    return ModelConfig(denoiser=denoiser, text=text, text_encoder=text_encoder, process=process,
                       upscale_from=upscale_from)


class TextToImage(nnx.Module):
    """The whole network a sampler calls: captions encoded once (`encode_captions`), then the denoiser at
    every step (`denoise`)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.text_encoder = TEXT_ENCODERS[config.text_encoder](config.text, rngs=rngs)
        denoiser = BACKBONES[config.backbone][1](config.denoiser, rngs=rngs)
        self.denoiser = Upscaler(denoiser, config.text.dim, rngs=rngs) if config.upscale_from else denoiser

    def encode_captions(self, caption_ids):
        """(B, L) ids -> the caption's embeddings: tokens (B, L, D), mask (B, L), pooled (B, D)."""
        return self.text_encoder(caption_ids)

    def denoise(self, xt, t, conditioning):
        """conditioning: the caption's embeddings (`encode_captions`), followed, for an upscaler, by its
        low-res image and that image's noise level (`minidiff.superres.low_res_condition`)."""
        return self.denoiser(xt, t, *conditioning)


def create_model(config: ModelConfig, seed: int = 0) -> TextToImage:
    """A text-to-image model with random parameters, as its modules declare them (see `initialised`)."""
    return initialised(TextToImage, config, seed)


def count_parameters(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
