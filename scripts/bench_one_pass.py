"""The chain on images its run never saw, and the one-pass student (`miri-distill`) beside it.

    miri-distill RUN --out RUN/one_pass.pt
    python scripts/bench_one_pass.py RUN --one-pass RUN/one_pass.pt --npz data/cifar10_uint8.npz \
        --num-images 1000 --new-images 1000 --out docs/benchmarks/one_pass_cifar10.json

Quality: the run's collection (its last round, against its truth: the file's first `--num-images` rows), and on
the next `--new-images` rows with new masks (MCAR, `--mask-seed`): the chain, the one-pass imputer (one draw, and
the mean of `--draws` draws) and every baseline on the same masks. MMD, PSNR over missing entries, speckle, mask
information (the mean of `--mi-seeds` classifiers, with its standard error), and KID/FID (the `fid` extra).
Speed: images a second of the chain as trained, of the chain with 100 Euler steps a round (the paper's solve) and
of the one-pass imputer, at one batch size and precision, in this one process, so that the ratios compare.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from miri_lightning.baselines import interpolation_fill, mean_fill, noise_fill
from miri_lightning.checkpoints import run_checkpoint
from miri_lightning.data.masks import MCAR
from miri_lightning.data.sources import NpzImages
from miri_lightning.draws import draw_mean
from miri_lightning.inference import MIRIImputer
from miri_lightning.io import atomic_path
from miri_lightning.metrics import MI_STEPS, collection_metrics
from miri_lightning.realism import Realism, load_inception


def images_per_second(imputer: MIRIImputer, images, masks, batch_size: int, **solve) -> float:
    imputer.impute(images[:batch_size], masks[:batch_size], batch_size=batch_size, **solve)  # warm-up
    start = time.perf_counter()
    imputer.impute(images, masks, batch_size=batch_size, **solve)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--one-pass", type=Path, required=True)
    p.add_argument("--npz", required=True)
    p.add_argument("--num-images", type=int, default=1000, help="the run's collection: the file's first rows")
    p.add_argument("--new-images", type=int, default=1000, help="the rows after it, which the run never saw")
    p.add_argument("--per-channel", action="store_true", help="new masks hide each channel on its own")
    p.add_argument("--missing-rate", type=float, default=0.6)
    p.add_argument("--mask-seed", type=int, default=1000)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--speed-images", type=int, default=256, help="images timed (a tenth for 100 Euler steps a round)")
    p.add_argument("--mi-steps", type=int, default=MI_STEPS, help="the mask-information classifier's steps")
    p.add_argument("--mi-seeds", type=int, default=3,
                   help="classifier seeds of each mask-information estimate (their mean and standard error)")
    p.add_argument("--skip-fid", action="store_true")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["chain", "one_pass", "baselines", "collection", "speed"],
                   help="rows not to measure again (the baselines depend only on the new images and masks; the "
                        "chain's rows only on the run; `one_pass` leaves the student's two rows out)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    chain = MIRIImputer.load(run_checkpoint(args.run), precision=args.precision)
    student = MIRIImputer.load(args.one_pass, precision=args.precision)
    images = NpzImages(args.npz, num_images=args.num_images + args.new_images).load().images
    truth, new = images[:args.num_images], images[args.num_images:]
    masks = MCAR(missing_rate=args.missing_rate, per_channel=args.per_channel, seed=args.mask_seed)(new).bool()
    features = None if args.skip_fid else load_inception()
    out = {"run": str(args.run), "one_pass": str(args.one_pass), "chain": chain.describe(),
           "student": student.describe(), "quality": {}, "speed": {}}

    realism = {}  # the truth's Inception features, once for each reference set

    def score(name: str, imputed, reference, m) -> None:
        row = collection_metrics(imputed, m, reference, len(imputed), args.mi_steps, args.mi_seeds)
        if features is not None:
            reference_realism = realism.setdefault(id(reference), Realism(features, reference))
            row.update(reference_realism(imputed, (len(imputed),))[0])
        out["quality"][name] = row
        print(f"| {name} | " + " | ".join(f"{k} {v:.4g}" for k, v in row.items()) + " |", flush=True)
        save(args.out, out)  # row by row: a long run that is stopped keeps what it measured

    if "chain" not in args.skip:
        score("chain, new images", chain.impute(new, masks, batch_size=256), new, masks)
    if "one_pass" not in args.skip:
        score("one pass, new images", student.impute(new, masks, batch_size=256), new, masks)
        draws = student.impute(new, masks, num_samples=args.draws, batch_size=256)
        score(f"one pass, mean of {args.draws} draws", draw_mean(draws, masks), new, masks)
    if "baselines" not in args.skip:
        for name, fill in (("interpolation sigma 1", interpolation_fill(new, masks, sigma=1.0)),
                           ("interpolation sigma 0.4", interpolation_fill(new, masks, sigma=0.4)),
                           ("per-entry mean", mean_fill(new, masks)), ("noise", noise_fill(new, masks, seed=0))):
            score(f"{name}, new images", fill, new, masks)
    if "collection" not in args.skip:
        score_collection(args, truth, score)
    if "speed" not in args.skip:
        measure_speed(args, chain, student, new, masks, out)
    save(args.out, out)


def score_collection(args, truth, score) -> None:
    with np.load(args.run / "imputations.npz") as f:
        collection = torch.from_numpy(f["images"]).permute(0, 3, 1, 2)[:args.num_images]
        collection_masks = torch.from_numpy(f["masks"]).permute(0, 3, 1, 2).bool()[:args.num_images]
    score("chain, its own collection (last round)", collection, truth, collection_masks)


def measure_speed(args, chain, student, new, masks, out: dict) -> None:
    k = min(args.speed_images, len(new))
    few = max(args.batch_size, k // 10)
    for name, imputer, subset, solve in (("chain", chain, k, {}), ("one pass", student, k, {}),
                                         ("chain, 100 Euler steps a round", chain, few,
                                          {"method": "euler", "steps": 100})):
        out["speed"][name] = images_per_second(imputer, new[:subset], masks[:subset], args.batch_size, **solve)
    base = out["speed"]["one pass"]
    for name, rate in out["speed"].items():
        print(f"{name}: {rate:.1f} images/s ({base / rate:.1f}x slower than one pass)" if name != "one pass"
              else f"one pass: {rate:.1f} images/s", flush=True)


def save(path, out: dict) -> None:
    if path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
