"""`miri-data`: build the `.npz` files that the CPU configs read, from torchvision's archives or a CelebA folder.

    miri-data cifar10 --root data --download     # data/cifar10_uint8.npz: test images 0..4999, (N, 32, 32, 3)
    miri-data mnist --root data --download       # data/mnist32_uint8.npz: training digits at 32x32, (N, 32, 32)
    miri-data celeba --folder img_align_celeba   # data/celeba64_uint8.npz: crop 140, 64x64, (N, 64, 64, 3)

The images go through the training sources themselves (`CIFAR10`, `MNIST`, `CelebA`), so a file built here holds
what a config with that source would train on, as 8-bit (N, H, W[, C]) arrays that `NpzImages` maps. CIFAR-10
defaults to the test split: its first 1,017 images are the first rows of the project's own
`../shared/data/cifar10_uint8.npz`, so the CPU recipes (1,000 images) read the same pixels from either file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from miri_lightning.data.images import image_files
from miri_lightning.data.sources import CIFAR10, MNIST, CelebA, ImageSource
from miri_lightning.errors import ConfigError, DataError, MIRIError
from miri_lightning.io import atomic_path, to_8bit

# What each data set builds by default: the file name the configs read, and the split.
DEFAULT_OUT = {"cifar10": "cifar10_uint8.npz", "mnist": "mnist32_uint8.npz", "celeba": "celeba64_uint8.npz"}
DEFAULT_SPLIT = {"cifar10": "test", "mnist": "train", "celeba": "train"}
# The paper's collections hold 5,000 images.
DEFAULT_NUM_IMAGES = 5000
CHUNK = 1024


def build_command(dataset: str, out: Path) -> str:
    """The command that builds `out`, for error messages that find it missing."""
    return f"miri-data {dataset} --root data --download --out {out}"


def source_for(args: argparse.Namespace) -> ImageSource:
    """The training source that reads what `args` name."""
    if args.dataset == "celeba":
        # A folder has no splits: its files are taken in name order, as the CelebA source does.
        return CelebA(root=args.root, split=args.split, download=args.download, folder=args.folder,
                      num_images=args.num_images, image_size=args.image_size, cache=False)
    if args.split not in ("train", "test"):
        raise ConfigError(f"{args.dataset} --split must be train or test, got {args.split!r}")
    source = CIFAR10 if args.dataset == "cifar10" else MNIST
    return source(root=args.root, train=args.split == "train", download=args.download, num_images=args.num_images)


def as_uint8(images: torch.Tensor, desc: str) -> np.ndarray:
    """(N, C, H, W), uint8 or float in [0, 1] -> uint8 (N, H, W, C), or (N, H, W) for one channel; floats are
    rounded to the nearest k/255, a chunk at a time."""
    n, c, h, w = images.shape
    out = np.empty((n, h, w, c), np.uint8)
    for start in tqdm(range(0, n, CHUNK), desc=desc, unit="chunk", disable=None, leave=False):
        chunk = images[start:start + CHUNK]
        out[start:start + CHUNK] = chunk.permute(0, 2, 3, 1).numpy() if chunk.dtype == torch.uint8 else to_8bit(chunk)
    return out[..., 0] if c == 1 else out


def celeba_ids(folder: Path, count: int) -> np.ndarray:
    """CelebA's file numbers (000001.jpg -> 1) of the first `count` files, or -1 where a name is not a number."""
    names = [p.stem for p in image_files(folder)[:count]]
    return np.array([int(n) if re.fullmatch(r"\d+", n) else -1 for n in names], np.int64)


def build(args: argparse.Namespace) -> tuple[Path, tuple[int, ...]]:
    """Read the images, check that there are as many as asked, and write the archive in one rename."""
    images = source_for(args).load().values
    if args.num_images is not None and len(images) < args.num_images:
        raise DataError(f"{args.dataset} ({args.split if args.folder is None else args.folder}) holds "
                        f"{len(images)} images, fewer than --num-images {args.num_images}")
    arrays = {"images": as_uint8(images, f"writing {args.out.name}")}
    if args.dataset == "celeba" and args.folder is not None:
        arrays["celeba_ids"] = celeba_ids(args.folder, len(images))
    # Uncompressed, so that NpzImages maps the images instead of reading them whole.
    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return args.out, arrays["images"].shape


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miri-data", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("dataset", choices=sorted(DEFAULT_OUT))
    p.add_argument("--root", type=Path, default=Path("data"),
                   help="torchvision's folder (cifar-10-batches-py/, MNIST/raw/, celeba/); default: data")
    p.add_argument("--download", action="store_true", help="download into --root first (torchvision)")
    p.add_argument("--folder", type=Path, default=None,
                   help="celeba: a folder of img_align_celeba JPEGs (taken in name order) instead of --root")
    p.add_argument("--split", default=None, help="train or test (celeba: train, valid, test or all); "
                   "default: test for cifar10, train for the others")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                   help=f"the first N images of the split (default {DEFAULT_NUM_IMAGES}, the paper's collections)")
    p.add_argument("--image-size", type=int, default=64, help="celeba: height and width after the crop (default 64)")
    p.add_argument("--out", type=Path, default=None, help="the .npz to write (default: data/" +
                   ", data/".join(DEFAULT_OUT.values()) + ")")
    return p


def main(argv: Optional[list[str]] = None) -> None:
    args = parser().parse_args(argv)
    args.split = args.split or DEFAULT_SPLIT[args.dataset]
    args.out = args.out or Path("data") / DEFAULT_OUT[args.dataset]
    if args.folder is not None and args.dataset != "celeba":
        parser().error("--folder is for celeba only")
    try:
        path, shape = build(args)
    except MIRIError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {path}: images uint8 {shape}")


if __name__ == "__main__":
    main()
