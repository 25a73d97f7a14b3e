"""From a recipe to a trained model: what a run of a recipe (`minidiff.recipe`) trains on, its model, and the run.

    recipe = load_recipe("demo", {"train.minutes": 1.0})
    trained = train_recipe(recipe, checkpoint="runs/demo/checkpoint.npz")
    images = trained.generator.sample(["a red flower with a yellow centre"])

`prepare` loads the recipe's images (encoded once into latents, and cached,
for a latent model) and makes its tokenizer (of the captions' words, or a
pretrained text encoder's own) and its model's config; `train_recipe` trains
a new model on them. `minidiff train` does the same, and resumes runs too
(`minidiff.command.runs`).
"""

import dataclasses

from minidiff.autoencoder import Autoencoder, load_autoencoder
from minidiff.captions import SPECIAL_TOKENS, Tokenizer
from minidiff.datasets import CaptionedImages
from minidiff.generator import Generator
from minidiff.latents import autoencoder_identity, latent_dataset
from minidiff.loop import Run
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.model import BACKBONES, ModelConfig, preset
from minidiff.recipe import Recipe, config_fields
from minidiff.text_encoders.frozen import read_text_encoder_file
from minidiff.training import start_run, train


@dataclasses.dataclass
class Prepared:
    """What a run of a recipe trains: its dataset (latents, for a latent model), the images themselves, the
    tokenizer, the model's config, and the parts it loads from files."""

    recipe: Recipe
    dataset: CaptionedImages
    images: CaptionedImages
    tokenizer: Tokenizer
    model_config: ModelConfig
    autoencoder: Autoencoder | None = None
    text_encoder: Checkpoint | None = None  # a pretrained encoder's weights


def model_config(recipe: Recipe, tokenizer: Tokenizer, autoencoder: Autoencoder | None = None) -> ModelConfig:
    """The model `recipe` asks for, reading `tokenizer`'s words; a latent model works on `autoencoder`'s latents."""
    settings = recipe.model
    config_class = BACKBONES[settings.backbone][0]
    made_here = sorted({"image_size", "in_channels", "out_channels"} & set(settings.denoiser))
    if made_here:
        raise ValueError(f"model.denoiser.{made_here[0]} is the model's own: set data.image_size, or, for a latent "
                         "model, its autoencoder")
    given = {name: value for name, value in settings.denoiser.items() if name in config_class.__dataclass_fields__}
    denoiser = config_fields(config_class, given, "model.denoiser")  # each checked against its type
    denoiser |= {name: value for name, value in settings.denoiser.items() if name not in given}  # preset refuses these
    size, channels, latent = recipe.data.image_size, 3, {}
    if settings.autoencoder:
        if autoencoder is None:
            raise ValueError("a latent model's config needs its autoencoder")
        if size != autoencoder.config.image_size:
            raise ValueError(f"the autoencoder {settings.autoencoder} encodes {autoencoder.config.image_size} px "
                             f"images: set data.image_size = {autoencoder.config.image_size}")
        size, _, channels = autoencoder.config.latent_shape
        file, sha256 = autoencoder_identity(settings.autoencoder)
        latent = {"autoencoder_sha256": sha256, "autoencoder_file": file}
    kind, text = settings.text_encoder or "transformer", {}
    if settings.text_encoder_file:
        pretrained = read_text_encoder_file(settings.text_encoder_file)
        if settings.text_encoder not in (None, pretrained.kind):
            raise ValueError(f"model.text_encoder_file holds a {pretrained.kind} encoder, not a "
                             f"{settings.text_encoder}: drop model.text_encoder")
        if "caption_dim" in denoiser:
            raise ValueError("the denoiser reads the pretrained encoder's vectors, of its own width: drop "
                             "model.denoiser.caption_dim")
        denoiser["caption_dim"], kind = pretrained.config.dim, pretrained.kind
        text = {"text": pretrained.config, "text_encoder_frozen": True}
    config = preset(settings.preset, tokenizer.vocab_size, image_size=size, max_length=tokenizer.max_length,
                    backbone=settings.backbone, process=recipe.process, text_encoder=kind,
                    upscale_from=settings.upscale_from, channels=channels, **denoiser)
    return dataclasses.replace(config, caption_dropout=settings.caption_dropout, **latent, **text)


def check(recipe: Recipe) -> None:
    """Everything about `recipe` that can be checked before its data is loaded: its model's config (with the
    special tokens for a vocabulary), the files it names, and its sampling settings for that model."""
    autoencoder = load_autoencoder(recipe.model.autoencoder) if recipe.model.autoencoder else None
    config = model_config(recipe, Tokenizer(SPECIAL_TOKENS), autoencoder)
    if config.latent and recipe.sample.x0_clipping not in (None, "none"):
        raise ValueError(f"a latent model's x0 is a latent, with no range to clip to: sample.x0_clipping must be none, "
                         f"got {recipe.sample.x0_clipping}")


def prepare(recipe: Recipe, data_dir=None, use_cache: bool = True, download: bool = False,
            progress: bool = True) -> Prepared:
    """Load what a run of `recipe` trains on, and make its model's config: the images (encoded into latents
    once, and cached, for a latent model), and a tokenizer of their captions' words (or a pretrained text
    encoder's own)."""
    autoencoder = load_autoencoder(recipe.model.autoencoder) if recipe.model.autoencoder else None
    images = recipe.data.load(data_dir, use_cache=use_cache, download=download)
    dataset = images
    if autoencoder is not None:
        sha256 = autoencoder_identity(recipe.model.autoencoder)[1]
        dataset = latent_dataset(images, autoencoder, sha256, progress=progress)
    text_encoder = None
    if recipe.model.text_encoder_file:  # its words are those of the corpus it was pretrained on
        pretrained = read_text_encoder_file(recipe.model.text_encoder_file)
        tokenizer, text_encoder = pretrained.tokenizer, pretrained.checkpoint
    else:
        tokenizer = Tokenizer.from_captions(images.all_captions())
    return Prepared(recipe, dataset, images, tokenizer, model_config(recipe, tokenizer, autoencoder), autoencoder,
                    text_encoder)


@dataclasses.dataclass
class Trained:
    """A run of a recipe, and what it trained on."""

    run: Run
    prepared: Prepared

    @property
    def recipe(self) -> Recipe:
        return self.prepared.recipe

    @property
    def generator(self) -> Generator:
        """The model trained so far (its EMA weights), sampling with the recipe's settings."""
        prepared = self.prepared
        return Generator.from_training(self.run, prepared.tokenizer, self.recipe.sample, prepared.autoencoder)


def train_recipe(recipe: Recipe, checkpoint=None, progress: bool = True, data_dir=None, **training) -> Trained:
    """A new model trained as `recipe` says (`training.train`'s `on_report` and `mesh` may be given); with
    `checkpoint`, saved there as it trains, with the recipe."""
    prepared = prepare(recipe, data_dir, progress=progress)
    run = start_run(prepared.model_config, recipe.train, prepared.text_encoder)
    train(run, prepared.dataset, prepared.tokenizer, checkpoint=checkpoint, progress=progress,
          recipe=recipe.to_dict(), **training)
    return Trained(run, prepared)
