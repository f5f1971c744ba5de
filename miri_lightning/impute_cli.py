"""`miri-impute`: fill in new images from files with a trained run.

Inputs, 1 = observed everywhere:
  --images DIR --masks DIR   images, and mask images of the same names (white = observed, black = missing)
  --images DIR               PNGs with an alpha channel (opaque = observed, transparent = missing)
  --npz FILE                 `images` (N,H,W[,C]) and `masks`, or `images` with NaN where missing
Outputs: `--out DIR` (one PNG per image, `--side-by-side` puts the masked input beside it)
or `--out FILE.npz` (`images` float32 (N,H,W,C), `masks`; with --num-samples S, (S,N,H,W,C)).
With --num-samples S >= 2: `--mean` writes the mean of the draws instead of the draws, and
`--uncertainty` adds each entry's standard deviation over the draws (`std` in the .npz;
`NAME_std.png`, or a third panel with --side-by-side: black = certain, white = a spread of
0.25 or more). `--interval 0.9` adds, for every entry, an interval that holds its true
value 90 % of the time: the draws' spread widened by a scale calibrated on the inputs
themselves (a tenth of the observed entries hidden and drawn too, so twice the work;
without ground truth; `low` and `high` in the .npz, `NAME_low.png` and `NAME_high.png`).

The run's own collection, drawn again: `miri-impute RUN/checkpoints/last.ckpt --npz
RUN/imputations.npz --num-samples 8 --out RUN/draws.npz` (observed entries are the data;
the imputed ones are filled afresh).

PNG output is 8-bit: values are rounded to k/255. Observed pixels read from
8-bit images are k/255 already, so they come back unchanged byte for byte;
for float data whose observed values must stay exact, write `.npz`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .data.images import Decoding, decode, image_files, read_image, uint8_to_floats
from .data.sources import NpzImages
from .draws import calibrated_interval, draw_mean, draw_std
from .errors import DataError, MIRIError
from .grids import show_missing, spread_image, to_rgb
from .inference import MIRIImputer
from .io import save_imputations, save_png


def _binary(values: torch.Tensor, what: str) -> torch.Tensor:
    """0/255 channel values (as floats in [0, 1]) -> bool; anything in between is an error naming `what`."""
    if not ((values == 0) | (values == 1)).all():
        raise DataError(f"{what} must be fully opaque/white (observed) or transparent/black (missing); "
                        "found values in between")
    return values.bool()


def read_folder(images_dir: Path, masks_dir: Optional[Path], channels: int):
    """(names, images (N,C,H,W), masks (N,1,H,W)) from a folder of images and masks or of RGBA PNGs."""
    files = image_files(images_dir)
    mode = "RGB" if channels == 3 else "L"
    masks = []
    for file in files:
        if masks_dir is not None:
            mask_file = masks_dir / file.name
            if not mask_file.is_file():
                raise DataError(f"no mask {mask_file} for image {file}")
            mask = np.asarray(read_image(mask_file, "L"))
        else:
            rgba = read_image(file, "RGBA")  # reads (and checks) the file first
            with Image.open(file) as original:
                if "A" not in original.getbands() and "transparency" not in original.info:
                    raise DataError(f"{file} has no alpha channel: give --masks, or save it with transparency")
            mask = np.asarray(rgba)[..., 3]
        masks.append(_binary(torch.from_numpy(mask.copy()).float() / 255, f"mask of {file.name}")[None])
    images = decode(images_dir, files, Decoding(mode), advice="miri-impute fills images of one size at a time")
    return [f.stem for f in files], uint8_to_floats(images), torch.stack(masks)


def read_inputs(args, channels: int):
    if args.npz is not None:
        loaded = NpzImages(args.npz).load()
        if not loaded.has_masks:
            raise DataError(f"{args.npz} holds neither a `masks` array nor NaN values: nothing is marked missing")
        return [f"{i:05d}" for i in range(len(loaded))], loaded.images, loaded.masks
    return read_folder(args.images, args.masks, channels)


def check_output(out: Path, args) -> None:
    """Refuse, before any work, an output that would overwrite an input."""
    inputs = [p.resolve() for p in (args.images, args.masks, args.npz) if p is not None]
    if out.resolve() in inputs:
        raise DataError(f"--out {out} would overwrite the input {out}; choose another path")


def write_outputs(out: Path, names, images, masks, result, side_by_side: bool, std=None, bounds=None) -> None:
    """Write the imputations (N or (S, N) images) and, when given, the spread `std` and the interval
    `bounds` (low, high) (N images each)."""
    masks = masks.expand_as(images)
    if out.suffix == ".npz":
        maps = {"std": std, **({} if bounds is None else dict(zip(("low", "high"), bounds)))}
        save_imputations(out, result, masks,
                         **{k: v.permute(0, 2, 3, 1).numpy() for k, v in maps.items() if v is not None})
        return
    for bound, pictures in zip(("low", "high"), bounds or ()):
        for name, picture in zip(names, pictures):
            save_png(out / f"{name}_{bound}.png", picture)
    samples = result if result.dim() == 5 else result[None]
    spreads = [None] * len(images) if std is None else spread_image(std)
    for s, sample in enumerate(samples):
        for name, image, mask, filled, spread in zip(names, images, masks, sample, spreads):
            suffix = f"_s{s}" if len(samples) > 1 else ""
            picture = filled
            if side_by_side:
                panels = [show_missing(image[None], mask[None]), to_rgb(filled[None])]
                picture = torch.cat(panels + ([] if spread is None else [spread[None]]), dim=3)[0]
            elif spread is not None:
                save_png(out / f"{name}_std.png", spread)
            save_png(out / (name + suffix + ".png"), picture)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miri-impute", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a training checkpoint (.ckpt) or an exported file")
    p.add_argument("--images", type=Path, help="folder of images")
    p.add_argument("--masks", type=Path, help="folder of masks with the images' file names")
    p.add_argument("--npz", type=Path, help=".npz with `images` and `masks` (or NaN where missing)")
    p.add_argument("--out", type=Path, required=True, help="output folder of PNGs, or a .npz file")
    p.add_argument("--side-by-side", action="store_true", help="PNGs show the masked input beside the imputation")
    p.add_argument("--num-samples", type=int, default=1, help="independent imputations of each image")
    p.add_argument("--mean", action="store_true", help="write the mean of the draws (needs --num-samples >= 2)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write each entry's standard deviation over the draws (needs --num-samples >= 2)")
    p.add_argument("--interval", type=float, metavar="LEVEL",
                   help="also write each entry's LEVEL (e.g. 0.9) interval, calibrated on the inputs (needs "
                        "--num-samples >= 2; draws the inputs again with some observed entries hidden)")
    p.add_argument("--calibration-share", type=float, default=0.1,
                   help="share of the observed entries hidden to calibrate --interval")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial fill")
    p.add_argument("--method", choices=["euler", "midpoint", "rk4", "dopri5"], help="override the solver")
    p.add_argument("--steps", type=int, help="override the solver's step count")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="32", choices=["32", "bf16", "16"])
    return p


def main(argv: Optional[list[str]] = None) -> None:
    args = parser().parse_args(argv)
    if (args.npz is None) == (args.images is None):
        parser().error("give exactly one of --images DIR or --npz FILE")
    for name in ("batch_size", "num_samples"):
        if getattr(args, name) < 1:
            parser().error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if (args.mean or args.uncertainty or args.interval is not None) and args.num_samples < 2:
        parser().error("--mean, --uncertainty and --interval summarise several draws: give --num-samples 2 or more")
    for name in ("interval", "calibration_share"):
        value = getattr(args, name)
        if value is not None and not 0 < value < 1:
            parser().error(f"--{name.replace('_', '-')} must lie strictly between 0 and 1, got {value}")
    try:
        check_output(args.out, args)
        imputer = MIRIImputer.load(args.checkpoint, device=args.device, precision=args.precision)
        print(f"loaded {imputer.describe()} from {args.checkpoint}")
        names, images, masks = read_inputs(args, imputer.image_shape[0])
        solve = dict(batch_size=args.batch_size, method=args.method, steps=args.steps, progress=True)
        result = imputer.impute(images, masks, seed=args.seed, num_samples=args.num_samples, **solve)
        std = draw_std(result) if args.uncertainty else None
        bounds = scale = None
        if args.interval is not None:  # calibration draws take the seeds after the output's
            scale = imputer.calibrate(images, masks, num_samples=args.num_samples, share=args.calibration_share,
                                      level=args.interval, seed=args.seed + args.num_samples, **solve)
            bounds = calibrated_interval(result, masks, scale)
        if args.mean:
            result = draw_mean(result, masks)  # masks (N, 1 or C, H, W) broadcast over channels
        write_outputs(args.out, names, images, masks, result, args.side_by_side, std, bounds)
    except MIRIError as err:
        sys.exit(f"error: {err}")
    what = "the mean of " if args.mean else ""
    print(f"imputed {len(images)} images, {what}{args.num_samples} draw(s) each, into {args.out}")
    if scale is not None:
        print(f"{args.interval:.0%} intervals: the draws' spread (+ its mean) times {scale:.3g}, calibrated on "
              f"{args.calibration_share:.0%} of the observed entries hidden and drawn")


def export_main(argv: Optional[list[str]] = None) -> None:
    """`miri-export CKPT OUT [--half]`: keep only what imputing needs, in a file safe to load."""
    p = argparse.ArgumentParser(prog="miri-export", description=export_main.__doc__)
    p.add_argument("checkpoint", type=Path, help="a training checkpoint (.ckpt)")
    p.add_argument("out", type=Path, help="the exported file (e.g. model.pt)")
    p.add_argument("--half", action="store_true", help="store the weights in float16 (half the size)")
    args = p.parse_args(argv)
    try:
        if args.out.resolve() == args.checkpoint.resolve():
            raise DataError(f"{args.out} would overwrite the checkpoint; choose another path")
        MIRIImputer.load(args.checkpoint).export(args.out, half=args.half)
    except MIRIError as err:
        sys.exit(f"error: {err}")
    print(f"exported {args.checkpoint} ({args.checkpoint.stat().st_size / 1e6:.1f} MB) "
          f"to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
