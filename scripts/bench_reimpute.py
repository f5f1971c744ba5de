"""Re-imputation time of one round on 1 process against N DDP processes, one thread each, same collection.

    python scripts/bench_reimpute.py --images 1000 --processes 2

Each setting is a real `train.py` run (one round; training cut to a few
batches, since only the round's solve is timed); the time is the round's
`impute_seconds` from rounds.jsonl. Prints one JSON line per run and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def impute_seconds(processes: int, images: int, size: int, steps: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [
            sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "quickstart.yaml"),
            "--data.source.init_args.num_images", str(images), "--data.source.init_args.image_size", str(size),
            "--model.solver.steps", str(steps), "--rounds.num_rounds", "1", "--rounds.steps", "2", "--rounds.mi_steps", "0", "--logging.backend", "csv",
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
            "--trainer.devices", str(processes), "--trainer.default_root_dir", run_dir, *extra,
        ]
        if processes > 1:
            cmd += ["--trainer.strategy", "ddp"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        rounds = [json.loads(line) for line in (Path(run_dir) / "rounds.jsonl").read_text().splitlines()]
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
    main()
