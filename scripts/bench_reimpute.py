"""Re-imputation time of one round on 1 process against N DDP processes, one thread each, same collection.

    python scripts/bench_reimpute.py --images 1000 --processes 2

Each setting is a real `train.py` run (one round; training cut to a few
batches, since only the round's solve is timed); the time is the round's
`impute_seconds` from rounds.jsonl. Prints one JSON line per run and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from miri_lightning.errors import TrainingError
from miri_lightning.runs import train

ROOT = Path(__file__).resolve().parents[1]


def impute_seconds(processes: int, images: int, size: int, steps: int, extra: list[str]) -> float:
    """The seconds of one round's re-imputation of the collection on `processes` CPU processes."""
    overrides = [
        "--data.source.init_args.num_images", str(images), "--data.source.init_args.image_size", str(size),
        "--model.solver.steps", str(steps), "--rounds.num_rounds", "1", "--rounds.steps", "2", "--rounds.mi_steps", "0", "--rounds.fid_images", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(processes), *extra,
    ]
    if processes > 1:
        overrides += ["--trainer.strategy", "ddp"]
    rounds = train(ROOT / "configs" / "quickstart.yaml", overrides, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return rounds[-1]["impute_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="midpoint steps of the solve")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="more train.py overrides, after --")
    args = parser.parse_args()
    times = {}
    for processes in (1, args.processes):
        times[processes] = impute_seconds(processes, args.images, args.size, args.steps, args.extra)
        print(json.dumps({"processes": processes, "images": args.images, "impute_seconds": round(times[processes], 2),
                          "images_per_second": round(args.images / times[processes], 1)}))
    print(json.dumps({"speedup": round(times[1] / times[args.processes], 2)}))


if __name__ == "__main__":
    try:
        main()
    except TrainingError as err:
        sys.exit(str(err))
