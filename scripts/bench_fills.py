"""Round 0's random fills against the deterministic one, before any training: what each costs the
collection (MMD, PSNR, mask information) and how well K fills of an image say where it is uncertain.

    python scripts/bench_fills.py --npz ../shared/data/cifar10_uint8.npz --sigma 0.4 --seed 1
    python scripts/bench_fills.py --npz ../shared/data/celeba64_uint8.npz --sigma 0.4 --per-channel
    python scripts/bench_fills.py --npz ../shared/data/mnist32_uint8.npz --sigma 1

The interpolation fill with no randomness, with Gaussian noise at fractions
of its own error (what `data.fill.noise: auto` measures), and reading a
random share of the observed entries (`data.fill.keep`). For each: one fill's
MMD, PSNR over missing entries and mask information (1,000 classifier steps,
mean of 3 seeds), and over K fills with seeds 0..K-1 the PSNR of their mean,
the share of true missing values inside their 90 % prediction interval (and
inside their own 5 % to 95 % quantiles), and the correlation between an
entry's spread and the mean's error. Prints a Markdown table; `--out` also
writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from miri_lightning.data.masks import MCAR
from miri_lightning.data.sources import NpzImages
from miri_lightning.draws import calibration, draw_mean
from miri_lightning.fills import RoundZeroFill
from miri_lightning.metrics import collection_metrics, missing_rmse, psnr

# (share of observed entries read, noise as a fraction of the fill's own error)
CANDIDATES = ((1.0, 1.0), (1.0, 0.5), (0.7, 0.0), (0.85, 0.0), (0.7, 0.5), (0.85, 0.5), (0.7, 0.25))


def candidates(sigma: float, error: float) -> dict[str, RoundZeroFill]:
    fills = {"deterministic": RoundZeroFill("interpolation", sigma)}
    for keep, fraction in CANDIDATES:
        name = " + ".join([f"keep {keep:g}"] * (keep < 1) + [f"noise {fraction:g} x error"] * (fraction > 0))
        fills[name] = RoundZeroFill("interpolation", sigma, noise=fraction * error, keep=keep)
    return fills


def score(fill: RoundZeroFill, images: torch.Tensor, masks: torch.Tensor, draws: int) -> dict:
    samples = torch.stack([fill(images, masks, seed) for seed in range(draws)])
    row = collection_metrics(samples[0], masks, images, max_images=len(images), mi_seeds=3)
    row = {key: row[key] for key in ("mmd", "psnr", "mutual_information", "mutual_information_se")}
    if fill.random:
        row["psnr_of_mean"] = psnr(missing_rmse(draw_mean(samples, masks), images, masks))
        row.update(calibration(samples, masks, images))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", required=True, help=".npz with an `images` array (N,H,W[,C])")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--sigma", type=float, default=0.4, help="the interpolation's width (data.fill.sigma)")
    p.add_argument("--seed", type=int, default=1, help="the masks' seed")
    p.add_argument("--per-channel", action="store_true", help="each channel missing on its own (CelebA's protocol)")
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--out", type=Path, help="also write the rows here as JSON")
    args = p.parse_args()
    images = NpzImages(str(args.npz), num_images=args.num_images).load().images.float()
    masks = MCAR(0.6, per_channel=args.per_channel, seed=args.seed)(images)
    error = RoundZeroFill("interpolation", args.sigma).error(images, masks, args.seed)
    print(f"{len(images)} images, 60 % MCAR, mask seed {args.seed}; the fill's own error (fill.noise auto): "
          f"{error:.4f}\n")
    print("| fill | MMD | PSNR (dB) | mask information (bits) | PSNR of the mean (dB) | 90 % coverage | "
          "coverage of the quantiles | spread-error correlation |\n|---|---|---|---|---|---|---|---|", flush=True)
    rows = {}
    for name, fill in candidates(args.sigma, error).items():
        row = rows[name] = score(fill, images, masks, args.draws)
        extra = (f"{row['psnr_of_mean']:.2f} | {row['coverage']:.2f} | {row['quantile_coverage']:.2f} | "
                 f"{row['spread_error_correlation']:.2f}" if fill.random else "| | |")
        print(f"| {name} | {row['mmd']:.2e} | {row['psnr']:.2f} | {row['mutual_information']:.3f} "
              f"± {row['mutual_information_se']:.3f} | {extra} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"fill_error": error, "args": {k: str(v) for k, v in vars(args).items()},
                                        "fills": rows}, indent=1))


if __name__ == "__main__":
    main()
