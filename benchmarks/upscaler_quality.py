"""An upscaler alone, against bicubic interpolation: held-out real images downsampled, then upscaled back.

    python benchmarks/upscaler_quality.py --checkpoint runs/race/flowers/upscaler/checkpoint.npz \
        --dataset flowers --judge runs/race/flowers/judge.npz

The held-out images (the embedded set's test split; flowers' and birds' eval
split) are downsampled to the upscaler's input size (`superres.downsample`),
then brought back to its output size by bicubic interpolation and by the
upscaler (DDIM, 50 steps, unless told otherwise), at each augmentation level
and guidance scale asked for. Both are compared with the real images: PSNR
(pixel by pixel), and the Fréchet distance and KID in the features of the
dataset's judge (whether they look like real images of their size). Prints
one row each and writes them to --out as JSON. The upscaler is one trained with
model.upscale_from, as the cascade race's (benchmarks/cascade_race.py --keep
runs/race) or `minidiff train --recipe cascade-upscaler --out runs/sr64`'s.
"""

import argparse
import json

import jax.numpy as jnp
import numpy as np

from minidiff.corruption import to_model_range, to_uint8
from minidiff.evaluation.evaluate import judge_for, reference_set
from minidiff.evaluation.judge import features_and_predictions
from minidiff.evaluation.metrics import frechet_distance_of, kernel_distance, psnr
from minidiff.generator import load
from minidiff.machinery.compilation import enable_compilation_cache
from minidiff.sampling import SAMPLERS
from minidiff.superres import downsample, upsample


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an upscaler (trained with model.upscale_from)")
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--data-dir")
    parser.add_argument("--judge", help="a judge file (default: the one beside the checkpoint, trained if missing)")
    parser.add_argument("--judge-steps", type=int, help="training steps of a new judge (default: minidiff "
                        "evaluate's: 800 for the embedded set, 2000 for flowers and birds)")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--augmentation-level", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--out", default="upscaler_quality.json")
    args = parser.parse_args()
    enable_compilation_cache()
    upscaler = load(args.checkpoint)
    if not upscaler.upscale_from:
        raise SystemExit(f"{args.checkpoint} is not an upscaler")
    size = upscaler.image_shape[0]
    reference = reference_set(args.dataset, size, num_images=args.num_images, data_dir=args.data_dir)
    judge = judge_for(args.checkpoint, args.dataset, size, path=args.judge, data_dir=args.data_dir,
                      steps=args.judge_steps)
    real_features, _ = features_and_predictions(judge, reference.images)
    low_res = downsample(to_model_range(jnp.asarray(reference.images)), upscaler.upscale_from)
    captions = [options[0] for options in reference.captions]

    def row(name: str, images_uint8) -> dict:
        features, _ = features_and_predictions(judge, images_uint8)
        kid, _ = kernel_distance(features, real_features, num_subsets=50, subset_size=len(features))
        result = {"upscaling": name, "psnr": psnr(images_uint8, reference.images),
                  "judge_fd": frechet_distance_of(features, real_features), "judge_kid": kid}
        print(f"| {name} | {result['psnr']:.2f} dB | {result['judge_fd']:.1f} | {result['judge_kid']:.4f} |",
              flush=True)
        return result

    print(f"{len(reference)} held-out {reference.name} images, {upscaler.upscale_from} px -> {size} px")
    print("| upscaling | PSNR | judge FD | judge KID |\n|---|---|---|---|")
    rows = [row("bicubic", to_uint8(upsample(low_res, size)))]
    for level in args.augmentation_level:
        for guidance in args.guidance:
            images = upscaler.sample(captions, low_res=np.asarray(low_res), augmentation_level=level,
                                     guidance=guidance, sampler=args.sampler, sampling_steps=args.sampling_steps,
                                     truncate=True)
            rows.append(row(f"upscaler, level {level:g}, guidance {guidance:g}", to_uint8(images)))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
