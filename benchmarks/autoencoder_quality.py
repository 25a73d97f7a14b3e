"""Autoencoders judged on held-out real images: how much of an image survives the trip through the latent.

    python benchmarks/autoencoder_quality.py --autoencoder runs/ae4/autoencoder.npz runs/ae8/autoencoder.npz \
        --dataset flowers birds --data-dir ../shared/data

with autoencoders trained by `minidiff train-autoencoder`, e.g.

    minidiff train-autoencoder --set data.dataset=flowers data.split=all_but_eval autoencoder.factor=8 \
        --minutes 8 --out runs/ae8 --data-dir ../shared/data

For each autoencoder and dataset, the held-out images (flowers' and birds'
eval split; the embedded set's test split) are encoded and decoded, and the
reconstructions compared with the originals: PSNR (pixel by pixel), and the
Fréchet distance and KID in the features of the dataset's judge (whether
they still look like real images to a network trained to tell the classes
apart; the judges are trained here on every image outside the eval split, and
their accuracy on the real held-out images is printed beside). Also the
latent's shape and how many times fewer numbers it holds than the image.
Prints one row each and writes them to --out as JSON.
"""

import argparse
import json
import math
from pathlib import Path

from minidiff.autoencoder import decode_latents, encode_images, load_autoencoder
from minidiff.corruption import to_uint8
from minidiff.evaluation.evaluate import judge_for, reference_set
from minidiff.evaluation.judge import features_and_predictions, label_agreement
from minidiff.evaluation.metrics import frechet_distance_of, kernel_distance, psnr
from minidiff.machinery.compilation import enable_compilation_cache


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", nargs="+", required=True, help="autoencoder.npz files (train-autoencoder's)")
    parser.add_argument("--dataset", nargs="+", default=["toy"])
    parser.add_argument("--data-dir")
    parser.add_argument("--judges", default="runs/judges", help="where judges are kept (trained if missing)")
    parser.add_argument("--judge-steps", type=int, help="training steps of a new judge (default: minidiff "
                        "evaluate's: 800 for the embedded set, 2000 for flowers and birds)")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--out", default="autoencoder_quality.json")
    args = parser.parse_args()
    enable_compilation_cache()
    rows = []
    print("| autoencoder | latent | fewer numbers | dataset | images | PSNR | judge FD | judge KID | judge on real |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.autoencoder:
        autoencoder = load_autoencoder(path)
        config = autoencoder.config
        for dataset in args.dataset:
            reference = reference_set(dataset, config.image_size, num_images=args.num_images, data_dir=args.data_dir)
            # Kept in --judges (judge_for keeps a judge beside the checkpoint it judges).
            judge = judge_for(Path(args.judges) / "autoencoders", dataset, config.image_size, data_dir=args.data_dir,
                              steps=args.judge_steps)
            rebuilt = to_uint8(decode_latents(autoencoder, encode_images(autoencoder, reference.images)))
            real_features, predicted = features_and_predictions(judge, reference.images)
            features, _ = features_and_predictions(judge, rebuilt)
            kid, _ = kernel_distance(features, real_features, num_subsets=50, subset_size=min(len(features), 1000))
            row = {"autoencoder": str(path), "factor": config.factor, "latent_shape": config.latent_shape,
                   "compression": config.image_size**2 * config.channels / math.prod(config.latent_shape),
                   "dataset": dataset, "images": len(reference), "psnr": psnr(rebuilt, reference.images),
                   "judge_fd": frechet_distance_of(features, real_features), "judge_kid": kid,
                   "judge_accuracy_on_real": label_agreement(predicted, reference.labels)}
            rows.append(row)
            accuracy = "  ".join(f"{k} {v:.0%}" for k, v in row["judge_accuracy_on_real"].items())
            shape = "x".join(map(str, config.latent_shape))
            print(f"| {path} | {shape} (f = {config.factor}) | {row['compression']:.0f}x | {dataset} | {len(reference)}"
                  f" | {row['psnr']:.2f} dB | {row['judge_fd']:.2f} | {kid:.4f} "
                  f"| {accuracy} |", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
