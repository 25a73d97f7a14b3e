"""Keras' DDIM example, the flowers recipe people know, as the real-data race's peer.

    python -m minidiff.command.keras_peer --minutes 30 90 --out runs/keras-peer

keras-io `examples/generative/ddim.py` (A. Béres, 2022) trains an unconditional
denoiser on Oxford-102 flowers at 64 px. Its network and recipe are kept here as
published: a residual U-Net with widths 32/64/96/128, two blocks per level,
batch norm without scale or centre, no attention, the noise variance embedded
by sinusoids once at the input; continuous cosine signal rates between 0.02 and
0.95; the mean absolute error on the predicted noise; AdamW (learning rate
1e-3, weight decay 1e-4, Keras' defaults otherwise); batches of 64; an
exponential moving average of every weight with decay 0.999; images
normalised to zero mean and unit variance per channel; deterministic DDIM with
20 steps (the example's plots) from the EMA weights.

What differs is only the plumbing. The images are minidiff's own (the same
crop, the same split as the model it races), handed over as uint8 arrays,
not read through tf.data, and the steps are called from a plain loop rather
than `fit`. Keras runs on its TensorFlow backend, the example's own (Keras 3
and TensorFlow: the `keras` extra, `pip install "minidiff[keras]"`); on one CPU
core its step took half the time it took on Keras' JAX backend, and a peer
should run at its best. The run is timed from its start, compiling included,
and keeps its weights (raw and EMA) at every asked-for minute, so one 90-minute
run gives the 30-minute one too: the recipe's learning rate is constant,
nothing in it depends on how long the run will last.

Nothing else in minidiff imports this module.
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices

import numpy as np  # noqa: E402

try:
    import keras  # noqa: E402
    import tensorflow as tf  # noqa: E402
    from keras import layers  # noqa: E402
except ImportError as error:  # pragma: no cover - depends on the installation
    raise SystemExit(f'the Keras peer needs Keras 3 and TensorFlow ({error}): pip install "minidiff[keras]"') from error

if keras.backend.backend() != "tensorflow":
    raise SystemExit(f"the Keras peer runs on Keras' TensorFlow backend, the example's own; KERAS_BACKEND is "
                     f"{keras.backend.backend()!r}")

# The example's hyperparameters, by its names.
IMAGE_SIZE = 64
MIN_SIGNAL_RATE, MAX_SIGNAL_RATE = 0.02, 0.95
EMBEDDING_DIMS, EMBEDDING_MAX_FREQUENCY = 32, 1000.0
WIDTHS, BLOCK_DEPTH = (32, 64, 96, 128), 2
BATCH_SIZE, EMA, LEARNING_RATE, WEIGHT_DECAY = 64, 0.999, 1e-3, 1e-4
PLOT_DIFFUSION_STEPS = 20


def sinusoidal_embedding(noise_variances):
    """(B, 1, 1, 1) -> (B, 1, 1, EMBEDDING_DIMS): sines and cosines at log-spaced frequencies from 1 to 1000."""
    frequencies = tf.exp(tf.linspace(math.log(1.0), math.log(EMBEDDING_MAX_FREQUENCY), EMBEDDING_DIMS // 2))
    angular_speeds = 2.0 * math.pi * frequencies
    return tf.concat([tf.sin(angular_speeds * noise_variances), tf.cos(angular_speeds * noise_variances)], axis=3)


def residual_block(width):
    def apply(x):
        residual = x if x.shape[3] == width else layers.Conv2D(width, kernel_size=1)(x)
        x = layers.BatchNormalization(center=False, scale=False)(x)
        x = layers.Conv2D(width, kernel_size=3, padding="same", activation="swish")(x)
        x = layers.Conv2D(width, kernel_size=3, padding="same")(x)
        return layers.Add()([x, residual])
    return apply


def network(image_size: int = IMAGE_SIZE, widths=WIDTHS, block_depth: int = BLOCK_DEPTH) -> keras.Model:
    """The example's residual U-Net: [noisy images (B, S, S, 3), noise variances (B, 1, 1, 1)] -> noise."""
    noisy_images = keras.Input(shape=(image_size, image_size, 3))
    noise_variances = keras.Input(shape=(1, 1, 1))
    e = layers.Lambda(sinusoidal_embedding, output_shape=(1, 1, EMBEDDING_DIMS))(noise_variances)
    e = layers.UpSampling2D(size=image_size, interpolation="nearest")(e)
    x = layers.Conv2D(widths[0], kernel_size=1)(noisy_images)
    x = layers.Concatenate()([x, e])
    skips = []
    for width in widths[:-1]:
        for _ in range(block_depth):
            x = residual_block(width)(x)
            skips.append(x)
        x = layers.AveragePooling2D(pool_size=2)(x)
    for _ in range(block_depth):
        x = residual_block(widths[-1])(x)
    for width in reversed(widths[:-1]):
        x = layers.UpSampling2D(size=2, interpolation="bilinear")(x)
        for _ in range(block_depth):
            x = layers.Concatenate()([x, skips.pop()])
            x = residual_block(width)(x)
    x = layers.Conv2D(3, kernel_size=1, kernel_initializer="zeros")(x)
    return keras.Model([noisy_images, noise_variances], x, name="residual_unet")


def diffusion_schedule(diffusion_times):
    """Times in [0, 1] -> (noise rates, signal rates): the cosine schedule between the max and min signal rate."""
    start_angle, end_angle = math.acos(MAX_SIGNAL_RATE), math.acos(MIN_SIGNAL_RATE)
    angles = start_angle + diffusion_times * (end_angle - start_angle)
    return tf.sin(angles), tf.cos(angles)


class KerasDDIM:
    """The example's model: its network, an EMA copy of every weight, AdamW, and the per-channel normaliser."""

    def __init__(self, images_uint8: np.ndarray, seed: int = 0):
        keras.utils.set_random_seed(seed)
        self.network = network(images_uint8.shape[1])
        self.ema_network = network(images_uint8.shape[1])  # the same layers, its own weights
        self.ema_network.set_weights(self.network.get_weights())
        self.optimizer = keras.optimizers.AdamW(learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        pixels = images_uint8.reshape(-1, 3).astype(np.float64) / 255.0  # the Normalization layer's adapt()
        self.mean, self.std = pixels.mean(0).astype(np.float32), pixels.std(0).astype(np.float32)

    @tf.function
    def train_step(self, images):
        """The example's train_step: uniform times, the noise's mean absolute error, AdamW, then the EMA."""
        noises = tf.random.normal(tf.shape(images))
        noise_rates, signal_rates = diffusion_schedule(tf.random.uniform((tf.shape(images)[0], 1, 1, 1)))
        noisy_images = signal_rates * images + noise_rates * noises
        with tf.GradientTape() as tape:
            predicted_noises = self.network([noisy_images, noise_rates**2], training=True)
            loss = tf.reduce_mean(tf.abs(noises - predicted_noises))
        gradients = tape.gradient(loss, self.network.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.network.trainable_weights))
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
            ema_weight.assign(EMA * ema_weight + (1 - EMA) * weight)
        return loss

    def normalise(self, images_uint8):
        return (images_uint8.astype(np.float32) / 255.0 - self.mean) / self.std

    def train(self, images_uint8: np.ndarray, snapshot_minutes, seed: int = 0, log=print) -> list[dict]:
        """Train until the last of `snapshot_minutes` (counted from now, compiling included), keeping the raw and
        EMA weights at each; reshuffles every epoch and drops the last partial batch, as the example's tf.data."""
        start, rng = time.perf_counter(), np.random.default_rng(seed)
        order, position, step, snapshots, pending = rng.permutation(len(images_uint8)), 0, 0, [], sorted(snapshot_minutes)
        last_print = start
        while pending:
            if position + BATCH_SIZE > len(order):
                order, position = rng.permutation(len(images_uint8)), 0
            loss = float(self.train_step(tf.constant(self.normalise(images_uint8[order[position : position + BATCH_SIZE]]))))
            position, step = position + BATCH_SIZE, step + 1
            now = time.perf_counter()
            if now - last_print > 30:
                log(f"keras peer: step {step}, {(now - start) / 60:.1f} min, loss {loss:.4f}", flush=True)
                last_print = now
            if (now - start) / 60 >= pending[0]:
                snapshots.append({"minutes": pending.pop(0), "steps": step, "seconds": now - start,
                                  "raw": self.network.get_weights(), "ema": self.ema_network.get_weights()})
                log(f"keras peer: kept the weights at {snapshots[-1]['minutes']:g} min ({step} steps)", flush=True)
        return snapshots

    def generate(self, weights, num_images: int, diffusion_steps: int = PLOT_DIFFUSION_STEPS, seed: int = 0,
                 batch_size: int = 100) -> np.ndarray:
        """The example's `generate`: deterministic DDIM from noise with these weights (a list, as get_weights
        gives); uint8 (num_images, S, S, 3)."""
        sampler = network(self.network.input_shape[0][1])
        sampler.set_weights(weights)

        @tf.function
        def denoise(noisy_images, times):
            noise_rates, signal_rates = diffusion_schedule(times)
            predicted_noises = sampler([noisy_images, noise_rates**2], training=False)
            return predicted_noises, (noisy_images - noise_rates * predicted_noises) / signal_rates

        size, out = self.network.input_shape[0][1], []
        generator = tf.random.Generator.from_seed(seed)
        for first in range(0, num_images, batch_size):
            count = min(batch_size, num_images - first)
            next_noisy = generator.normal((count, size, size, 3))
            for step in range(diffusion_steps):  # the first "noisy image" is pure noise at the min signal rate
                times = tf.fill((count, 1, 1, 1), 1.0 - step / diffusion_steps)
                predicted_noises, predicted_images = denoise(next_noisy, times)
                next_noise_rates, next_signal_rates = diffusion_schedule(times - 1.0 / diffusion_steps)
                next_noisy = next_signal_rates * predicted_images + next_noise_rates * predicted_noises
            images = np.clip(predicted_images.numpy() * self.std + self.mean, 0.0, 1.0)
            out.append(np.round(images * 255).astype(np.uint8))
        return np.concatenate(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="flowers")
    parser.add_argument("--split", default="all_but_eval", help="the images it trains on (minidiff's splits)")
    parser.add_argument("--data-dir")
    parser.add_argument("--minutes", type=float, nargs="+", default=[30.0],
                        help="keep the weights at each of these minutes; the run lasts until the last")
    parser.add_argument("--num-samples", type=int, default=256, help="images generated per snapshot, raw and EMA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="a folder: samples-<minutes>min-{raw,ema}.npz and run.json")
    args = parser.parse_args()
    from minidiff.datasets import load_dataset
    from minidiff.machinery.atomic import atomic_write

    images = load_dataset(args.dataset, args.split, image_size=IMAGE_SIZE, data_dir=args.data_dir).images
    model = KerasDDIM(images, seed=args.seed)
    print(f"keras peer: {model.network.count_params():,} parameters, {len(images)} {args.dataset} images")
    snapshots = model.train(images, args.minutes, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = []
    for snapshot in snapshots:
        for weights in ("raw", "ema"):
            samples = model.generate(snapshot[weights], args.num_samples, seed=args.seed + 1)
            path = out / f"samples-{snapshot['minutes']:g}min-{weights}.npz"
            atomic_write(path, lambda f: np.savez(f, images=samples))
            print(f"keras peer: wrote {path}")
        record.append({k: snapshot[k] for k in ("minutes", "steps", "seconds")})
    summary = {"images": len(images), "dataset": args.dataset, "split": args.split, "snapshots": record}
    atomic_write(out / "run.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))


if __name__ == "__main__":
    main()
