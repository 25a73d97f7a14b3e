"""How fast? Training and sampling throughput of a preset on this machine's first device.

For one (preset, image size, batch size) it measures:

  - compile time: the first train step, which traces and compiles the program;
  - train images/s: the median of timed steps after it (each waits for its result);
  - sampling images/s: DDIM, 20 steps, guidance 3 (two network passes per step);
  - FLOPs of one train step, from XLA's own cost analysis of the compiled
    program, hence achieved FLOP/s and, where the device's peak is known, the
    model-FLOPs utilisation (MFU = achieved / peak);
  - peak memory: the device's peak bytes in use (GPU, TPU), or the process's
    peak resident memory on a CPU.

The data are the embedded set's images, so nothing is read from disk while timing.
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.captions import Tokenizer
from minidiff.corruption import make_schedule
from minidiff.datasets import toy_dataset
from minidiff.model import count_parameters, preset
from minidiff.sampling import sample
from minidiff.training import TrainConfig, new_train_state, train_step

# Dense peak FLOP/s per device, (float32, bfloat16), from the vendors' data sheets. XLA runs float32
# matrix products on NVIDIA tensor cores as TF32 by default, so the float32 peak is TF32's.
PEAK_FLOPS = {
    "H100 PCIe": (378e12, 756e12),
    "H100": (494.7e12, 989.4e12),  # SXM
    "H200": (494.7e12, 989.4e12),
    "A100": (156e12, 312e12),
}


def peak_flops(device, precision: str) -> float | None:
    for name, peaks in PEAK_FLOPS.items():  # the more specific names come first
        if name in device.device_kind:
            return peaks[precision == "bfloat16"]
    return None


def peak_memory_bytes(device) -> int:
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes


def benchmark(preset_name: str, image_size: int, batch_size: int, steps: int = 10, precision: str = "float32",
              sampling: bool = True) -> dict:
    """Time `steps` train steps (after the compiling one) and one batch of sampling; see the module docstring."""
    data = toy_dataset(num_images=max(2 * batch_size, 64), image_size=image_size, seed=0)
    tokenizer = Tokenizer.from_captions(data.all_captions())
    model_config = preset(preset_name, tokenizer.vocab_size, image_size=image_size, max_length=tokenizer.max_length)
    config = TrainConfig(batch_size=batch_size, precision=precision)
    state = new_train_state(model_config, tokenizer, config)
    schedule = make_schedule(config.schedule, config.num_timesteps)
    images = jnp.asarray(data.images[:batch_size])
    ids = jnp.asarray(tokenizer.encode_batch([c[0] for c in data.captions[:batch_size]], truncate=True))
    empty = jnp.asarray(tokenizer.empty(1)[0])
    args = (state.model, state.optimizer, state.ema, schedule, images, ids, empty)

    cost = train_step.lower(*args, jax.random.key(0), config=config).cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    start = time.perf_counter()
    jax.block_until_ready(train_step(*args, jax.random.key(0), config=config))
    compile_seconds = time.perf_counter() - start
    times = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        jax.block_until_ready(train_step(*args, jax.random.key(step), config=config))
        times.append(time.perf_counter() - start)
    step_seconds = statistics.median(times)

    device = jax.devices()[0]
    peak = peak_flops(device, precision)
    result = {
        "device": device.device_kind, "preset": preset_name, "image_size": image_size, "batch_size": batch_size,
        "precision": precision, "parameters": count_parameters(state.model),
        "compile_s": compile_seconds, "step_s": step_seconds, "train_images_per_s": batch_size / step_seconds,
        "step_tflop": flops / 1e12, "achieved_tflop_per_s": flops / step_seconds / 1e12,
        "mfu": flops / step_seconds / peak if peak and flops else None,
    }
    if sampling:
        run = lambda: np.asarray(sample(state.ema, schedule, ids, empty[None], num_steps=20, guidance_scale=3.0))  # noqa: E731
        run()  # compiles
        start = time.perf_counter()
        run()
        result["sample_images_per_s"] = batch_size / (time.perf_counter() - start)
    result["peak_memory_gb"] = peak_memory_bytes(device) / 1e9
    return result


def format_row(r: dict) -> str:
    mfu = f"{r['mfu']:.0%}" if r["mfu"] is not None else "n/a"
    sampling = f"{r['sample_images_per_s']:.0f}" if "sample_images_per_s" in r else "-"
    return (f"| {r['preset']} | {r['image_size']} | {r['batch_size']} | {r['precision']} | {r['parameters'] / 1e6:.1f} M "
            f"| {r['compile_s']:.1f} | {r['train_images_per_s']:.1f} | {sampling} | {r['achieved_tflop_per_s']:.3f} "
            f"| {mfu} | {r['peak_memory_gb']:.1f} |")


TABLE_HEADER = ("| preset | px | batch | precision | params | compile s | train img/s | sample img/s | TFLOP/s | MFU | peak GB |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|")

