"""Static clipping against dynamic thresholding, across guidance scales: how saturated the images get, and how
well they follow their captions.

    python benchmarks/thresholding.py --checkpoint runs/demo/checkpoint.npz
    python benchmarks/thresholding.py --checkpoint runs/demo/checkpoint.npz --guidance 1 5 10 --num-images 48
    python benchmarks/thresholding.py --checkpoint runs/demo/checkpoint.npz --sampler dpm++2m --sampling-steps 20

For a model trained on the embedded set: at each guidance scale and with each
x0 clipping, the same captions of the test split (attribute pairs seen in
training) and of the held-out split (pairs never seen) are drawn (DDIM, 50
steps, unless told otherwise), and measured by the pixel judge (the mean
adherence over every attribute) and by `metrics.saturation` (mean |x|, and the
fraction of values at 0 or 255). Prints one row per setting and writes them to
--out as JSON.
"""

import argparse
import json

import numpy as np

from minidiff.corruption import to_uint8
from minidiff.evaluation.evaluate import reference_set
from minidiff.evaluation.metrics import saturation
from minidiff.evaluation.pixel_judge import pixel_adherence
from minidiff.generator import load
from minidiff.machinery.compilation import enable_compilation_cache
from minidiff.sampling import SAMPLERS, X0_CLIPPINGS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a model trained on the embedded set")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1, 3, 5, 7, 10, 15])
    parser.add_argument("--clipping", nargs="+", default=["static", "dynamic"], choices=X0_CLIPPINGS)
    parser.add_argument("--num-images", type=int, default=96, help="per split")
    parser.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--out", default="thresholding.json")
    args = parser.parse_args()
    enable_compilation_cache()
    generator = load(args.checkpoint)
    references = {split: reference_set("toy", generator.output_shape[0], num_images=args.num_images, split=split)
                  for split in ("test", "held_out")}
    print("| guidance | x0 clipping | mean abs(x) | values at 0 or 255 | adherence, seen pairs | held-out pairs |")
    print("|---|---|---|---|---|---|")
    rows = []
    for guidance in args.guidance:
        for clipping in args.clipping:
            row = {"guidance": guidance, "x0_clipping": clipping}
            images = {}
            for split, reference in references.items():
                images[split] = to_uint8(generator.sample([c[0] for c in reference.captions], guidance=guidance,
                                                          x0_clipping=clipping, sampler=args.sampler,
                                                          sampling_steps=args.sampling_steps))
                scores = pixel_adherence(images[split], reference.labels, reference.label_names)
                row[f"adherence_{split}"] = float(np.mean(list(scores.values())))
                row[f"scores_{split}"] = scores
            row |= saturation(np.concatenate(list(images.values())))
            rows.append(row)
            print(f"| {guidance:g} | {clipping} | {row['mean_abs']:.3f} | {row['at_the_ends']:.1%} | "
                  f"{row['adherence_test']:.0%} | {row['adherence_held_out']:.0%} |", flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
