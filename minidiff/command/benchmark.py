"""How fast? Training and sampling throughput of a preset on this machine.

Training runs as `minidiff train` runs it: each batch split over as many of
this host's devices as divide it (`minidiff.machinery.sharding.mesh_for_batch`); a CPU
counts one device per core when `one_device_per_cpu_core` ran first, as the
CLI does. For one (preset, image size, batch size) it measures:

  - compile time: the first train step, which traces and compiles the program;
  - train images/s: the median of timed steps after it (each waits for its result);
  - sampling images/s: DDIM, 20 steps, guidance 3 (two network passes per step; `SAMPLING`),
    the batch split over the same devices;
  - FLOPs of one train step, from XLA's own cost analysis of the compiled
    program, hence achieved FLOP/s and, where the device's peak is known, the
    model-FLOPs utilisation (MFU = achieved / peak);
  - peak memory: the device's peak bytes in use (GPU, TPU), or the process's
    peak resident memory on a CPU.

The data are the embedded set's images, so nothing is read from disk while timing. A latent model
(`latent_factor`) is timed on random latents of the shape its autoencoder would give.

With `pytorch=True` it also times the same network built from HF diffusers
(`minidiff.command.pytorch_peer`, the `bench` extra) on the same batch and device, and
reports minidiff's train images/s as a multiple of the peer's.
"""

import dataclasses
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.captions import Tokenizer
from minidiff.datasets import toy_dataset
from minidiff.generator import Generator
from minidiff.loop import TrainConfig, batch_indices, compiled_step
from minidiff.machinery.sharding import mesh_for_batch, replicate, shard_batch
from minidiff.model import count_parameters, preset
from minidiff.precision import compute_dtype, in_bfloat16
from minidiff.sampling import SamplerSettings
from minidiff.training import TextToImageTraining, start_run

LATENT_CHANNELS = 4  # c of the latents a latent model is timed on (Rombach et al. 2022's)
SAMPLING = SamplerSettings(sampler="ddim", sampling_steps=20, guidance=3.0)  # what sampling is timed with
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


def model_flops_utilisation(flops: float, seconds: float, peak: float, devices: int = 1) -> float:
    """MFU: the FLOP/s a step achieved (its FLOPs over its seconds) over the peak of all its devices."""
    return flops / seconds / (peak * devices)


def peak_memory_bytes(device) -> int:
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes


def _setup(preset_name: str, image_size: int, batch_size: int, precision: str, backbone: str = "unet",
           latent_factor: int = 0):
    """A fresh run and one batch of the embedded set, on the devices `train` would use: the batch split over as
    many of this host's devices as divide it, the modules replicated. Returns the run, the task whose step it
    takes, the batch and its constants (as the loop hands them to the step), the captions and that mesh (None
    for one device). With `latent_factor` f, a latent model of images of that size: its denoiser sees
    (size / f)^2 x 4 latents, here random ones (a latent model trains on latents cached beforehand, so no
    encoder runs in its step)."""
    data = toy_dataset(num_images=max(2 * batch_size, 64), image_size=image_size, seed=0)
    tokenizer = Tokenizer.from_captions(data.all_captions())
    size, channels = image_size, 3
    if latent_factor:
        size, channels = image_size // latent_factor, LATENT_CHANNELS
    model_config = preset(preset_name, tokenizer.vocab_size, image_size=size, max_length=tokenizer.max_length,
                          backbone=backbone, channels=channels)
    if latent_factor:  # no file: the benchmark draws latents and decodes none
        model_config = dataclasses.replace(model_config, autoencoder_sha256="none", autoencoder_file="none")
        latents = np.random.default_rng(0).normal(size=(len(data), size, size, channels)).astype(np.float32)
        data = dataclasses.replace(data, images=latents, latent=True, flip_ok=False)
    run = start_run(model_config, TrainConfig(batch_size=batch_size, precision=precision))
    task = TextToImageTraining(run.model, tokenizer, data, run.config)
    batch, constants = task.batch(0), jax.tree.map(jnp.asarray, task.constants())
    captions = [data.captions[i][0] for i in batch_indices(len(data), batch_size, 0, 0)]
    mesh = mesh_for_batch(batch_size)
    if mesh is None:
        return run, task, jax.tree.map(jnp.asarray, batch), constants, captions, None
    for module in (run.model, run.optimizer, run.ema):
        replicate(module, mesh)
    return run, task, jax.tree.map(lambda rows: shard_batch(rows, mesh), batch), constants, captions, mesh


def _flops(jitted, *args, **kwargs) -> float:
    """XLA's count of the floating-point operations of one call of a jitted function."""
    cost = jitted.lower(*args, **kwargs).cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))


def _median_seconds(run, repeats: int, warm_up: bool = True) -> float:
    """The median wall time of `repeats` calls of `run`, each waiting for its result."""
    if warm_up:
        jax.block_until_ready(run())  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_breakdown(preset_name: str, image_size: int, batch_size: int, repeats: int = 5,
                   precision: str = "float32", backbone: str = "unet") -> dict:
    """Where a train step's time goes: {part: (seconds, FLOPs)} for the forward pass (the
    loss), the backward pass (the gradients), and the update (gradient clipping, AdamW, EMA),
    each measured as the difference between nested compiled programs. The whole step is the
    program `benchmark` times, on the same devices: after it, it is not compiled again."""
    run, task, batch, constants, _, _ = _setup(preset_name, image_size, batch_size, precision, backbone)
    key = jax.random.key(0)
    # Like the train step (`machinery.compiled_step`), compiled on arrays, so no part pays for walking the modules.
    graphdef, params = nnx.split(run.model)
    dtype = compute_dtype(precision)

    def loss(p, *args):
        model = nnx.merge(graphdef, p)
        return task.loss(in_bfloat16(model) if precision == "bfloat16" else model, *args, dtype)[0]

    forward = jax.jit(loss)
    gradients = jax.jit(jax.value_and_grad(loss))
    loss_args = (params, batch, constants, key)
    f_s, f_flops = _median_seconds(lambda: forward(*loss_args), repeats), _flops(forward, *loss_args)
    g_s, g_flops = _median_seconds(lambda: gradients(*loss_args), repeats), _flops(gradients, *loss_args)
    step = compiled_step(run, task)
    step_args = (batch, constants, key, np.float32(run.config.learning_rate))
    s_flops = _flops(step.program, step.arrays, *step_args)
    s_s = _median_seconds(lambda: step(*step_args), repeats)
    return {"forward": (f_s, f_flops), "backward": (g_s - f_s, g_flops - f_flops), "update": (s_s - g_s, s_flops - g_flops)}


def benchmark(preset_name: str, image_size: int, batch_size: int, steps: int = 10, precision: str = "float32",
              sampling: bool = True, pytorch: bool = False, backbone: str = "unet", latent_factor: int = 0) -> dict:
    """Time `steps` train steps (after the compiling one) and one batch of sampling; see the module docstring.
    With `latent_factor`, of a latent model of images of `image_size` (its sampling draws latents, not decoded)."""
    if pytorch and latent_factor:
        raise ValueError("the PyTorch peer is timed on pixel models only")
    run, task, batch, constants, captions, mesh = _setup(preset_name, image_size, batch_size, precision, backbone,
                                                         latent_factor)
    model_config = run.model.config
    num_devices = mesh.size if mesh is not None else 1
    step = compiled_step(run, task)  # what `train` runs
    args = (batch, constants)
    learning_rate = np.float32(run.config.learning_rate)

    flops = _flops(step.program, step.arrays, *args, jax.random.key(0), learning_rate)
    start = time.perf_counter()
    jax.block_until_ready(step(*args, jax.random.key(0), learning_rate))
    compile_seconds = time.perf_counter() - start
    step_seconds = _median_seconds(lambda: step(*args, jax.random.key(1), learning_rate), steps, warm_up=False)
    step.sync()

    device = jax.devices()[0]
    peak = peak_flops(device, precision)
    result = {
        "device": device.device_kind, "devices": num_devices, "backbone": backbone, "preset": preset_name,
        "image_size": image_size, "latent_factor": latent_factor,
        "batch_size": batch_size, "precision": precision, "parameters": count_parameters(run.model),
        "compile_s": compile_seconds, "step_s": step_seconds, "train_images_per_s": batch_size / step_seconds,
        "step_tflop": flops / 1e12, "achieved_tflop_per_s": flops / step_seconds / 1e12,
        "mfu": model_flops_utilisation(flops, step_seconds, peak, num_devices) if peak and flops else None,
    }
    if sampling:
        generator = Generator.from_training(run, task.tokenizer, SAMPLING)
        # The whole batch at once, split over the devices as the CLI splits it.
        draw = lambda: generator.sample(captions, batch_size=len(captions))  # noqa: E731
        draw()  # compiles
        start = time.perf_counter()
        draw()
        result["sample_images_per_s"] = batch_size / (time.perf_counter() - start)
    result["peak_memory_gb"] = peak_memory_bytes(device) / 1e9
    if pytorch:
        from minidiff.command.pytorch_peer import benchmark_peer  # needs the optional bench extra (PyTorch)

        x0, (ids,) = batch
        (empty,) = constants[0]
        peer = benchmark_peer(model_config, run.config, np.asarray(x0), np.asarray(ids), np.asarray(empty),
                              steps=steps, sampling=sampling)
        result |= peer
        result["speedup"] = result["train_images_per_s"] / peer["peer_train_images_per_s"]
        result["peer_mfu"] = model_flops_utilisation(flops, peer["peer_step_s"], peak) if peak and flops else None
    return result


def _percent(x):
    return f"{x:.0%}" if x is not None else "n/a"


def format_row(r: dict) -> str:
    sampling = f"{r['sample_images_per_s']:.0f}" if "sample_images_per_s" in r else "-"
    size = f"{r['image_size']}" + (f" (latent, f = {r['latent_factor']})" if r.get("latent_factor") else "")
    row = (f"| {r['backbone']} {r['preset']} | {size} | {r['batch_size']} | {r['devices']} "
           f"| {r['precision']} | {r['parameters'] / 1e6:.1f} M | {r['compile_s']:.1f} | {r['train_images_per_s']:.1f} | {sampling} "
           f"| {r['achieved_tflop_per_s']:.3f} | {_percent(r['mfu'])} | {r['peak_memory_gb']:.1f} |")
    if "speedup" in r:
        peer_sampling = f"{r['peer_sample_images_per_s']:.0f}" if "peer_sample_images_per_s" in r else "-"
        row += (f" {r['peer_parameters'] / 1e6:.1f} M | {r['peer_train_images_per_s']:.1f} | {peer_sampling} "
                f"| {_percent(r['peer_mfu'])} | **{r['speedup']:.2f}x** |")
    return row


def table_header(pytorch: bool = False) -> str:
    names = ["model", "px", "batch", "devices", "precision", "params", "compile s", "train img/s", "sample img/s",
             "TFLOP/s", "MFU", "peak GB"]
    if pytorch:
        names += ["diffusers params", "diffusers train img/s", "diffusers sample img/s", "diffusers MFU",
                  "minidiff / diffusers (train)"]
    return "| " + " | ".join(names) + " |\n" + "|---" * len(names) + "|"
