"""Training speed with each text encoder, and what caching a frozen encoder's embeddings buys.

    python benchmarks/text_encoder_speed.py                  # the demo's model, each encoder at two sizes
    python benchmarks/text_encoder_speed.py --steps 50 --text-preset base

One training step of the demo's model (its recipe, minidiff/recipes/demo.toml:
the tiny DiT trained as a flow, 32 px, batches of 32), compiled, then timed
over --steps steps, for: each encoder trained with the denoiser; a frozen
transformer run at every step on the token ids (its forward pass only: it gets
no gradient); and the same frozen encoder read from cached embeddings
(`text_encoders.frozen.embed_captions`), which is what `train` does
(`training.TextToImageTraining`). Each step is the loop's
(`loop.compiled_step`) on the task's batches, made on the host as `train`
makes them. Prints images/s per row. Time one benchmark at a time.
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.captions import Tokenizer
from minidiff.datasets import load_dataset
from minidiff.from_recipe import model_config
from minidiff.loop import compiled_step, new_run
from minidiff.model import TEXT_PRESETS, create_model
from minidiff.recipe import load_recipe
from minidiff.text_encoders import TEXT_ENCODERS
from minidiff.text_encoders.frozen import trainable
from minidiff.training import TextToImageTraining

RECIPE = "demo"


def images_per_second(config, train_config, tokenizer, dataset, steps: int, frozen: bool) -> float:
    """Training images a second of a new model of `config`. With `frozen`, the text encoder gets no gradient
    (the run trains what a frozen encoder's run trains); it reads cached embeddings if `config` says it is
    frozen (`text_encoder_frozen`, as `train` has it), else the token ids, at every step."""
    model = create_model(config, seed=train_config.seed)
    run = new_run(model, train_config, trainable(dataclasses.replace(config, text_encoder_frozen=frozen)))
    task = TextToImageTraining(run.model, tokenizer, dataset, train_config)
    step = compiled_step(run, task)
    constants, key = jax.tree.map(jnp.asarray, task.constants()), jax.random.key(train_config.seed)

    def run_one(i):
        batch = jax.tree.map(jnp.asarray, task.batch(i))
        return step(batch, constants, jax.random.fold_in(key, i), np.float32(train_config.learning_rate))

    for i in range(3):  # compile, and warm up
        jax.block_until_ready(run_one(i))
    start = time.perf_counter()
    for i in range(steps):
        result = run_one(3 + i)
    jax.block_until_ready(result)
    return steps * train_config.batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per row (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-preset", nargs="+", default=["tiny", "base"], choices=tuple(TEXT_PRESETS),
                        help="text encoder sizes (default: %(default)s)")
    args = parser.parse_args(argv)
    recipe = load_recipe(RECIPE)
    train_config = dataclasses.replace(recipe.train, batch_size=args.batch_size)
    dataset = load_dataset("toy", "train", image_size=recipe.data.image_size, num_images=2000)
    tokenizer = Tokenizer.from_captions(dataset.all_captions())
    demo = model_config(recipe, tokenizer)
    print(f"{jax.devices()[0].device_kind}, the demo's model ({recipe.model.preset} {recipe.model.backbone}, "
          f"{recipe.process.kind}) at {recipe.data.image_size} px, batch {args.batch_size}")
    print("| text encoder | size (dim, layers) | training | images/s |\n|---|---|---|---|")
    for text_preset in args.text_preset:
        dim, depth, heads = TEXT_PRESETS[text_preset]
        base = dataclasses.replace(demo, denoiser=dataclasses.replace(demo.denoiser, caption_dim=dim),
                                   text=dataclasses.replace(demo.text, dim=dim, depth=depth, heads=heads))
        transformer = dataclasses.replace(base, text_encoder="transformer")
        cached = dataclasses.replace(transformer, text_encoder_frozen=True)
        rows = [(kind, "with the denoiser", dataclasses.replace(base, text_encoder=kind), False)
                for kind in TEXT_ENCODERS]
        rows += [("transformer", "frozen, run every step", transformer, True),
                 ("transformer", "frozen, embeddings cached", cached, True)]
        for kind, how, config, frozen in rows:
            speed = images_per_second(config, train_config, tokenizer, dataset, args.steps, frozen)
            print(f"| {kind} | {text_preset} ({dim}, {depth}) | {how} | {speed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
