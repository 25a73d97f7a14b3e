"""Every sampler on both processes, against a denoiser whose answer is known exactly.

For Gaussian data x0 ~ N(0, s^2 I) the best denoiser is linear in x_t, for
diffusion (`GaussianOracle`) and for the straight-line flow
(`GaussianFlowOracle`), and so is where the probability-flow ODE carries each
noise (`exact_ode_solution`; for the flow, s times the noise). Two errors per
(process, sampler, steps):

  - spread: |std of the samples / s - 1| over 512 samples (every sampler, the
    stochastic ones included, must reach the data's spread);
  - ode: the largest distance between a deterministic sampler's samples and the
    exact ODE solution from the same noise (64 samples).

    python benchmarks/sampler_oracle.py --steps 5 10 20 50 100 --out runs/sampler_oracle
    python benchmarks/sampler_oracle.py --spacing karras --out runs/sampler_oracle_karras

prints one row per (process, sampler, steps) and writes OUT/sampler_oracle.json. Each
sampler takes the process's own spacing of its noise levels unless --spacing
names one for all.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.course.oracles import GaussianFlowOracle, GaussianOracle, exact_ode_solution
from minidiff.sampling import SAMPLERS, SamplerSettings, noise_levels, sample, spacing_of

SPREAD_STD, ODE_STD = 0.3, 0.2  # small enough that clipping x0 to [-1, 1] never matters


def oracle_samples(oracle, batch: int, **settings):
    """Noise (batch, 4, 4, 3) from seed 0, and where the sampler takes it."""
    noise_key, key = jax.random.split(jax.random.key(0))
    noise = jax.random.normal(noise_key, (batch, 4, 4, 3))
    ids = jnp.ones((batch, 4), jnp.int32)
    return noise, sample(oracle, oracle.process, noise, ids, ids, key, guidance=1.0, x0_clipping="none", **settings)


def exact_endpoint(process, noise, settings: SamplerSettings, std: float):
    """Where the probability-flow ODE carries the sampler's starting point (`noise` at its first level)."""
    _, alpha, sigma = noise_levels(process, settings)
    start = noise * np.sqrt(alpha[0] ** 2 + sigma[0] ** 2)  # as the sampler scales its starting noise
    return exact_ode_solution(start, alpha[0], sigma[0], std)


def errors(oracle, sampler: str, steps: int, spacing: str | None = None) -> dict:
    chosen = dict(sampler=sampler, sampling_steps=steps, spacing=spacing)
    settings = SamplerSettings(**chosen)
    _, images = oracle_samples(oracle(SPREAD_STD), 512, **chosen)
    row = {"spread": abs(float(images.std()) / SPREAD_STD - 1)}
    if sampler != "ddpm":
        ode = oracle(ODE_STD)
        noise, images = oracle_samples(ode, 64, **chosen)
        row["ode"] = float(jnp.max(jnp.abs(images - exact_endpoint(ode.process, noise, settings, ODE_STD))))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--spacing", choices=["uniform", "karras"], help="one spacing for every sampler "
                        "(default: each process's own for each sampler)")
    parser.add_argument("--out", help="also write OUT/sampler_oracle.json")
    args = parser.parse_args(argv)
    results = []
    for name, oracle in (("diffusion", GaussianOracle), ("flow", GaussianFlowOracle)):
        for sampler in SAMPLERS:
            for steps in args.steps:
                spacing = spacing_of(oracle().process, SamplerSettings(sampler=sampler, spacing=args.spacing))
                row = {"process": name, "sampler": sampler, "sampling_steps": steps, "spacing": spacing,
                       "nfe": SamplerSettings(sampler=sampler, sampling_steps=steps).network_calls,
                       **errors(oracle, sampler, steps, args.spacing)}
                results.append(row)
                ode = f"{row['ode']:.2e}" if "ode" in row else "-"
                print(f"{name:9s} {sampler:8s} {spacing:7s} steps {steps:4d} NFE {row['nfe']:4d}  "
                      f"spread {row['spread']:.2e}  ode {ode}", flush=True)
    if args.out:
        path = Path(args.out) / "sampler_oracle.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
