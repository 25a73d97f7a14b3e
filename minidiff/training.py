"""Training the text-to-image model: its batches, its run, and what its checkpoint records.

The loss is `minidiff.loss.denoising_loss`; the loop, with its learning rate,
EMA, checkpoints and progress bar, is `minidiff.loop`, which trains every other
network of minidiff too. This file brings the two together for the model of
`minidiff.model`:

    run = start_run(model_config, TrainConfig(steps=2000))
    run = train(run, dataset, tokenizer, checkpoint="runs/toy/checkpoint.npz")
    generator = Generator.from_training(run, tokenizer)          # minidiff.generator

A batch is a pure function of (seed, step): which images (every epoch a fresh
permutation), which of each image's captions, and which images are mirrored
(where the dataset's captions allow it).
"""

from minidiff.captions import Tokenizer
from minidiff.datasets.base import CaptionedImages, caption_choices, model_inputs, tokenize_dataset
from minidiff.loop import Run, Task, TrainConfig, batch_indices, new_run, restore_run, resumed_config
from minidiff.loop import train as train_loop
from minidiff.loss import denoising_loss
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.model import ModelConfig, TextToImage, create_model
from minidiff.text_encoders.frozen import embed_captions, trainable, with_pretrained_text_encoder

KIND = "text-to-image run"


class TextToImageTraining(Task):
    """The denoiser's part of a run: batches of (x0, captions) from a dataset, the empty caption, and a
    checkpoint that records the model's config, its tokenizer and the recipe it was made from."""

    kind = KIND
    loss = staticmethod(denoising_loss)

    def __init__(self, model: TextToImage, tokenizer: Tokenizer, dataset: CaptionedImages, config: TrainConfig,
                 recipe: dict | None = None):
        size, channels = model.config.denoiser.image_size, model.config.denoiser.out_channels
        if dataset.images.shape[1:] != (size, size, channels):
            raise ValueError(f"the dataset's images are {dataset.images.shape[1:]}, but the model draws "
                             f"{(size, size, channels)}" + (": a latent model trains on its autoencoder's latents"
                                                            if model.config.latent else ""))
        if dataset.latent != model.config.latent:
            raise ValueError("a latent model trains on latents, a pixel model on pixels: "
                             f"this dataset holds {'latents' if dataset.latent else 'pixels'}")
        self.dataset, self.config, self.tokenizer, self.recipe = dataset, config, tokenizer, recipe
        self.model_config = model.config
        ids, self.counts = tokenize_dataset(dataset, tokenizer)  # (N, captions per image, L), (N,)
        # A caption is a tuple of arrays: its token ids; or, under a frozen text encoder, its embeddings
        # (tokens, mask, pooled), every caption encoded once, the empty one too.
        empty = tokenizer.empty(1)
        self.captions, self.empty = (ids,), (empty[0],)
        if model.config.text_encoder_frozen:
            self.captions, self.empty = embed_captions(model.text_encoder, ids, empty)

    def batch(self, step: int) -> tuple:
        seed, batch_size = self.config.seed, self.config.batch_size
        index = batch_indices(len(self.dataset), batch_size, seed, step)
        choice = caption_choices(self.counts[index], seed, step)
        captions = tuple(part[index, choice] for part in self.captions)
        return model_inputs(self.dataset, index, seed, step), captions

    def constants(self) -> tuple:
        return (self.empty,)

    def header(self) -> dict:
        recipe = {"recipe": self.recipe} if self.recipe is not None else {}
        return {"model_config": self.model_config.to_dict(), "tokenizer": self.tokenizer.to_dict(), **recipe}


def start_run(model_config: ModelConfig, config: TrainConfig, text_encoder: Checkpoint | None = None) -> Run:
    """A new run of a new model; with `text_encoder`, a pretrained encoder's file (`text_encoders.frozen`), its
    weights, which the run leaves as they are."""
    model = create_model(model_config, seed=config.seed)
    if text_encoder is not None:
        with_pretrained_text_encoder(model, text_encoder)
    return new_run(model, config, trainable(model_config))


def saved_run(path) -> tuple[ModelConfig, Tokenizer, dict | None]:
    """The model config, tokenizer and recipe of the run saved at `path`."""
    checkpoint = Checkpoint(path)
    model_config, tokenizer = checkpoint.fields("model_config", "tokenizer", kind=KIND)
    return ModelConfig.from_dict(model_config), Tokenizer.from_dict(tokenizer), checkpoint.header.get("recipe")


def resume_run(path, config: TrainConfig | None = None) -> Run:
    """Reopen the run saved at `path`; `config` may change its length (steps or minutes), nothing else."""
    model_config, _, _ = saved_run(path)
    run = start_run(model_config, resumed_config(path, KIND, config))
    return restore_run(path, run, KIND)


def train(run: Run, dataset: CaptionedImages, tokenizer: Tokenizer, checkpoint=None, on_report=None,
          progress: bool = True, mesh=None, recipe: dict | None = None) -> Run:
    """Train `run`'s model on `dataset`'s images and captions (read with `tokenizer`) with the one loop
    (`minidiff.loop.train`: its checkpoints, reports and devices); a checkpoint records `recipe` too."""
    task = TextToImageTraining(run.model, tokenizer, dataset, run.config, recipe)
    return train_loop(run, task, checkpoint=checkpoint, on_report=on_report, progress=progress, mesh=mesh)
