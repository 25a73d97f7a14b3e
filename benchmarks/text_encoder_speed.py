"""Training speed with each text encoder, and what caching a frozen encoder's embeddings buys.

    python benchmarks/text_encoder_speed.py                  # the demo's model, each encoder at two sizes
    python benchmarks/text_encoder_speed.py --steps 50 --text-preset base

One training step of the demo's model (the tiny DiT trained as a flow, 32 px,
batches of 32), compiled, then timed over --steps steps, for: each encoder
trained with the denoiser; a frozen transformer run at every step on the token
ids (its forward pass only: it gets no gradient); and the same frozen encoder
read from cached embeddings (`text_encoders.frozen.embed_captions`), which is
what `train` does. Prints images/s per row. Time one benchmark at a time.
"""

import argparse
import dataclasses
import time

import jax
import numpy as np

from minidiff.datasets import load_dataset
from minidiff.datasets.base import tokenize_dataset
from minidiff.captions import Tokenizer
from minidiff.model import TEXT_PRESETS, preset
from minidiff.text_encoders import TEXT_ENCODERS
from minidiff.text_encoders.frozen import embed_captions, frozen_config
from minidiff.training import TrainConfig, compiled_train_step, new_train_state


def images_per_second(model_config, tokenizer, ids, images, cached: bool, steps: int, batch_size: int) -> float:
    state = new_train_state(model_config, tokenizer, TrainConfig(batch_size=batch_size))
    step = compiled_train_step(state)
    schedule, key = state.config.noise_schedule(), jax.random.key(0)
    empty = tokenizer.empty(1)
    if cached:
        table, empty_caption = embed_captions(state.model.text_encoder, ids, empty)
    rng = np.random.default_rng(0)

    def run_one(i):
        rows = rng.integers(0, len(ids), batch_size)
        caption = tuple(e[rows] for e in table) if cached else ids[rows]
        return step(schedule, images[rows], caption, empty_caption if cached else empty[0],
                    jax.random.fold_in(key, i), np.float32(1e-3))

    for i in range(3):  # compile, and warm up
        run_one(i).block_until_ready()
    start = time.perf_counter()
    for i in range(steps):
        loss = run_one(i)
    loss.block_until_ready()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per row (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-preset", nargs="+", default=["tiny", "base"], choices=tuple(TEXT_PRESETS),
                        help="text encoder sizes (default: %(default)s)")
    args = parser.parse_args(argv)
    dataset = load_dataset("toy", "train", image_size=32, num_images=2000)
    tokenizer = Tokenizer.from_captions(dataset.all_captions())
    ids, counts = tokenize_dataset(dataset, tokenizer)
    ids, images = ids[:, 0], dataset.images  # each image's first caption
    print(f"{jax.devices()[0].device_kind}, the demo's model (tiny DiT, flow) at 32 px, batch {args.batch_size}")
    print("| text encoder | size (dim, layers) | training | images/s |\n|---|---|---|---|")
    for text_preset in args.text_preset:
        dim, depth, heads = TEXT_PRESETS[text_preset]
        base = preset("tiny", tokenizer.vocab_size, backbone="dit", objective="flow")
        text = dataclasses.replace(base.text, dim=dim, depth=depth, heads=heads)
        base = dataclasses.replace(base, denoiser=dataclasses.replace(base.denoiser, caption_dim=dim), text=text)
        rows = [(kind, "with the denoiser", dataclasses.replace(text, kind=kind), False) for kind in TEXT_ENCODERS]
        rows += [("transformer", "frozen, run every step", frozen_config(text), False),
                 ("transformer", "frozen, embeddings cached", frozen_config(text), True)]
        for kind, how, text_config, cached in rows:
            speed = images_per_second(dataclasses.replace(base, text=text_config), tokenizer, ids, images, cached,
                                      args.steps, args.batch_size)
            print(f"| {kind} | {text_preset} ({dim}, {depth}) | {how} | {speed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
