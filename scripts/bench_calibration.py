"""How often a trained run's 90 % intervals hold the truth, before and after conformal calibration.

    python scripts/bench_calibration.py --ckpt RUN/checkpoints/last.ckpt --npz ../shared/data/cifar10_uint8.npz

Rebuilds the run's collection (the first `--num-images` images of the file,
MCAR 60 % with `--mask-seed`, as `miri-bench compare` masks them) and
draws its first `--subset` images `--draws` times. Prints, over their
missing entries, the share of true values inside the draws' own 5 % to
95 % quantiles, inside the Student-t prediction interval, and inside the
interval `MIRIImputer.calibrate` scales without ground truth (hiding
`--share` of the observed entries of the first `--calibration-images`
images and drawing them), with the intervals' mean widths, as JSON
(`draws.calibration`).
"""

from __future__ import annotations

import argparse
import json
import time

from miri_lightning.data.masks import MCAR
from miri_lightning.data.sources import NpzImages
from miri_lightning.draws import calibration
from miri_lightning.inference import MIRIImputer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--npz", required=True)
    p.add_argument("--num-images", type=int, default=1000, help="the run's collection: the file's first N images")
    p.add_argument("--subset", type=int, default=250, help="images of the collection whose draws are scored")
    p.add_argument("--calibration-images", type=int,
                   help="images of the collection the scale is calibrated on (default: --subset)")
    p.add_argument("--mask-seed", type=int, default=1)
    p.add_argument("--per-channel", action="store_true", help="each channel missing on its own (mcar60c)")
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--share", type=float, default=0.1, help="observed entries hidden for the calibration")
    p.add_argument("--precision", choices=["32", "bf16", "16"], default="bf16")
    args = p.parse_args()
    images = NpzImages(args.npz, num_images=args.num_images).load().images.float()
    masks = MCAR(0.6, per_channel=args.per_channel, seed=args.mask_seed)(images)
    imputer = MIRIImputer.load(args.ckpt, precision=args.precision)
    start = time.perf_counter()
    first = args.calibration_images or args.subset
    scale = imputer.calibrate(images[:first], masks[:first], num_samples=args.draws, share=args.share, seed=1000)
    images, masks = images[: args.subset], masks[: args.subset]
    draws = imputer.impute(images, masks, num_samples=args.draws, seed=0)
    print(json.dumps({"args": vars(args), "seconds": time.perf_counter() - start,
                      **calibration(draws, masks, images, level=0.9, scale=scale)}, indent=1))


if __name__ == "__main__":
    main()
