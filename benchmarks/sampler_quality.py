"""Quality per network evaluation: every sampler at several step counts against 1000-step DDPM.

    python benchmarks/sampler_quality.py --checkpoint runs/demo/checkpoint.npz --num-samples 256
    python benchmarks/sampler_quality.py --checkpoint runs/demo/checkpoint.npz --nfe 5 10 20 50

Prints a table of the judge's Fréchet distance, KID and caption adherence for
each (sampler, sampling steps), all on the same held-out captions and noise
seed, and writes it to --out as JSON (`minidiff evaluate`'s metrics, one row
each). Every sampler works on both processes, diffusion and flow. The last
column compares each row's Fréchet distance with the first row's, the reference
a fast sampler should match: 1000-step DDPM (slow on a CPU: it costs as much as
all other rows together). With --nfe, the few-step samplers at those numbers of
network calls instead: DDIM (Euler's method, on a flow), Heun and
DPM-Solver++(2M), against the model's own ODE limit, nearly: 250 DDIM steps for
a diffusion model, 125 Heun steps for a flow.
"""

import argparse
import json
from pathlib import Path

import minidiff
from minidiff.evaluation.evaluate import judge_for, reference_set, sampler_sweep
from minidiff.machinery.compilation import enable_compilation_cache

# DDPM with 1000 steps is the reference; DDIM with 1000 steps is the deterministic samplers' own limit
# (the exact solution of the ODE they all solve), the fairer target for them.
SETTINGS = [("ddpm", 1000), ("ddim", 1000), ("ddpm", 50), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("heun", 6),
            ("heun", 11), ("dpm++2m", 10), ("dpm++2m", 20)]


# The few-step samplers, each with the sampling steps that make a number of network calls (Heun's N steps
# make 2N - 1 of them), and the reference each process's rows are measured against: its ODE solved nearly
# exactly.
FEW_STEPS = {"ddim": lambda nfe: nfe, "heun": lambda nfe: (nfe + 1) // 2, "dpm++2m": lambda nfe: nfe}
ODE_LIMIT = {"diffusion": ("ddim", 250), "flow": ("heun", 125)}


def few_step_settings(process: str, nfes: list[int]) -> list[tuple[str, int]]:
    """The process's reference (`ODE_LIMIT`), then every few-step sampler at each number of network calls."""
    return [ODE_LIMIT[process]] + [(sampler, steps(n)) for sampler, steps in FEW_STEPS.items() for n in nfes]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--data-dir")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--judge", help="judge file (default: beside the checkpoint, trained if missing)")
    parser.add_argument("--judge-steps", type=int, help="training steps of a new judge (default: minidiff "
                        "evaluate's: 800 for the embedded set, 2000 for flowers and birds)")
    parser.add_argument("--nfe", type=int, nargs="+", help="few-step samplers at these numbers of network calls")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default="sampler_quality.json")
    args = parser.parse_args()
    enable_compilation_cache()

    generator = minidiff.load(args.checkpoint)
    size = generator.output_shape[0]
    reference = reference_set(args.dataset, size, args.num_samples, data_dir=args.data_dir)
    judge = judge_for(args.checkpoint, args.dataset, size, path=args.judge, data_dir=args.data_dir,
                      steps=args.judge_steps, progress=not args.quiet)
    settings = few_step_settings(generator.config.process.kind, args.nfe) if args.nfe else SETTINGS
    rows = sampler_sweep(generator, reference, judge, settings, num_samples=args.num_samples, guidance=args.guidance,
                         progress=not args.quiet)
    baseline = rows[0]["judge_fd"]
    print(f"\n{args.num_samples} samples, guidance {args.guidance:g}; judge accuracy on real images: "
          + ", ".join(f"{k} {v:.0%}" for k, v in rows[0]["judge_accuracy_on_real"].items()))
    print(f"| sampler | steps | NFE | judge FD | judge KID | judge adherence | FD vs {rows[0]['sampler']}-"
          f"{rows[0]['sampling_steps']} |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        change = (row["judge_fd"] - baseline) / baseline
        print(f"| {row['sampler']} | {row['sampling_steps']} | {row['nfe']} | {row['judge_fd']:.3f} "
              f"| {row['judge_kid']:.4f} | {row['judge_adherence_mean']:.1%} | {change:+.1%} |")
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
