"""Every round of a finished run scored again from its checkpoints, e.g. with a longer-trained
mask-information classifier than the run used.

    python scripts/rescore_rounds.py --run RUN --mi-steps 1000 --out RUN/rescored.jsonl

Round t's imputations x_hat^(t) are in RUN/checkpoints/round{t}.ckpt; round 0's
fill, the masks and the truth are rebuilt from the run's saved config.yaml (so
the run must keep its state in memory, the default). Prints a JSON line a
round: mask information, and MMD, PSNR, RMSE and SSIM where the data have
ground truth.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bench_solvers import imputations_after, run_datamodule  # this folder's; it puts the project on sys.path
from miri_lightning.metrics import collection_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished train.py run folder")
    p.add_argument("--rounds", type=int, nargs="+", help="which rounds (default: 0 and every round checkpoint)")
    p.add_argument("--mi-steps", type=int, default=1000, help="training steps of the mask-information classifier")
    p.add_argument("--max-images", type=int, default=5000, help="score the first this-many images")
    p.add_argument("--out", type=Path, help="also write the lines here")
    args = p.parse_args()
    saved = sorted(int(m[1]) for f in (args.run / "checkpoints").glob("round*.ckpt")
                   if (m := re.fullmatch(r"round(\d+)\.ckpt", f.name)))
    dm = run_datamodule(args.run)
    lines = []
    for t in args.rounds or [0, *saved]:
        imputed = imputations_after(args.run, t, dm)
        metrics = collection_metrics(imputed, dm.masks, dm.truth, args.max_images, args.mi_steps)
        lines.append(json.dumps({"round": t, **metrics, "mi_steps": args.mi_steps}))
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
