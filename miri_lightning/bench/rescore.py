"""Every round of a finished run scored again from its checkpoints, e.g. with a longer-trained
mask-information classifier than the run used.

    miri-bench rescore --run RUN --mi-steps 1000 --out RUN/rescored.jsonl

Round t's imputations x_hat^(t) are in RUN/checkpoints/round{t}.ckpt; round 0's
fill, the masks and the truth are rebuilt from the run's saved config.yaml (so
the run must keep its state in memory, the default). Prints a JSON line a
round: mask information, and MMD, PSNR, RMSE and SSIM where the data have
ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from miri_lightning.errors import MIRIError
from miri_lightning.io import atomic_path
from miri_lightning.metrics import MI_STEPS, collection_metrics
from miri_lightning.runs import imputations_after, run_datamodule, saved_rounds


def rescore(args) -> list[str]:
    """A JSON line a round, each printed as soon as it is scored."""
    dm = run_datamodule(args.run)
    lines = []
    for t in args.rounds or [0, *saved_rounds(args.run)]:
        imputed = imputations_after(args.run, t, dm)
        metrics = collection_metrics(imputed, dm.masks, dm.true_images(args.max_images), args.max_images, args.mi_steps)
        lines.append(json.dumps({"round": t, **metrics, "mi_steps": args.mi_steps}))
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="miri-bench rescore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished train.py run folder")
    p.add_argument("--rounds", type=int, nargs="+", help="which rounds (default: 0 and every round checkpoint)")
    p.add_argument("--mi-steps", type=int, default=MI_STEPS, help="training steps of the mask-information classifier")
    p.add_argument("--max-images", type=int, default=5000, help="score the first this-many images")
    p.add_argument("--out", type=Path, help="also write the lines here")
    args = p.parse_args(argv)
    try:
        lines = rescore(args)
        if args.out:
            with atomic_path(args.out) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
    except MIRIError as err:
        sys.exit(str(err))
