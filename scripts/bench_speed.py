"""Speed of a config against a baseline config on the same data: throughput, memory, time to quality.

    python scripts/bench_speed.py --config configs/quickstart.yaml --baseline configs/paper.yaml \
        --target-mmd 1e-3 --budget 1800 -- --trainer.accelerator cpu

Every figure comes from real `train.py` runs and their rounds.jsonl:

- throughput: one short round per config (`--epochs` epochs of training,
  then one full re-imputation): training images/s (forward, backward,
  optimiser and EMA step, data loading included), re-imputation images/s
  (a full ODE solve of the collection) and peak memory (GPU: allocated; CPU:
  the process's resident set);
- time to quality: each config run as it is, until a round's MMD is at or
  below `--target-mmd`, or `--budget` seconds of training and re-imputation
  have passed (then the ratio is a lower bound).

The baseline runs on the data and masks of `--config` (its own `data.source`
and `data.mask` are replaced); its recipe (fill, network, solver) is its own.
Overrides after `--` go to both runs. Prints one JSON line per measurement
and writes them all to `--out`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--logging.backend", "csv", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


def same_data(config: Path) -> list[str]:
    """Overrides that give another config this config's images and masks."""
    data = yaml.safe_load(config.read_text())["data"]
    return ["--data.source", json.dumps(data["source"]), "--data.mask", json.dumps(data["mask"])]


def train(config: Path, overrides: list[str], budget: float | None = None) -> list[dict]:
    """Run train.py in a scratch folder; returns its rounds.jsonl records (those finished within `budget`)."""
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config), *QUIET,
               "--trainer.default_root_dir", run_dir, *overrides]
        try:
            subprocess.run(cmd, cwd=ROOT, check=True, timeout=budget, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        except subprocess.TimeoutExpired:
            pass  # rounds.jsonl is written atomically: what is there is whole
        except subprocess.CalledProcessError as err:
            sys.exit(f"train.py failed for {config}:\n{err.stderr[-3000:]}")
        path = Path(run_dir) / "rounds.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def throughput(config: Path, data: list[str], epochs: int, extra: list[str]) -> dict:
    """One round of `epochs` training epochs and one re-imputation; rounds.jsonl's round 1."""
    first = train(config, [*data, "--trainer.max_epochs", str(epochs), "--rounds.epochs_per_round", str(epochs),
                           "--rounds.mi_steps", "0", *extra])[1]
    keys = ("train_images_per_second", "impute_images_per_second", "peak_memory_gb")
    return {key: round(first[key], 3) for key in keys}


def time_to_quality(config: Path, data: list[str], target: float, budget: float, extra: list[str]) -> dict:
    """Training plus re-imputation seconds until a round's MMD <= target (None if not within the budget)."""
    start = time.perf_counter()
    rounds = train(config, [*data, *extra], budget=budget)
    elapsed = 0.0
    for record in rounds[1:]:
        elapsed += record["train_seconds"] + record["impute_seconds"]
        if record["mmd"] <= target:
            return {"seconds": round(elapsed, 1), "round": record["round"], "mmd": record["mmd"]}
    return {"seconds": None, "rounds_done": len(rounds) - 1, "wall_seconds": round(time.perf_counter() - start, 1),
            "best_mmd": min((r["mmd"] for r in rounds[1:]), default=None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    p.add_argument("--baseline", type=Path, default=ROOT / "configs" / "paper.yaml")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the throughput round")
    p.add_argument("--target-mmd", type=float, default=1e-3)
    p.add_argument("--budget", type=float, default=1800, help="seconds per config for time to quality")
    p.add_argument("--skip-quality", action="store_true", help="throughput and memory only")
    p.add_argument("--out", type=Path, default=Path("bench_speed.json"))
    p.add_argument("overrides", nargs="*", help="train.py overrides for both runs, after --")
    args = p.parse_args()
    data = same_data(args.config)
    runs = {"ours": args.config, "baseline": args.baseline}
    results = {name: {"config": str(path)} for name, path in runs.items()}
    for name, path in runs.items():
        results[name]["throughput"] = throughput(path, data, args.epochs, args.overrides)
        print(json.dumps({name: results[name]}), flush=True)
    if not args.skip_quality:
        for name, path in runs.items():
            results[name]["time_to_quality"] = time_to_quality(path, data, args.target_mmd, args.budget, args.overrides)
            print(json.dumps({name: results[name]}), flush=True)
    results["ratios"] = ratios(results, args.budget)
    print(json.dumps({"ratios": results["ratios"]}))
    args.out.write_text(json.dumps(results, indent=1))


def ratios(results: dict, budget: float) -> dict:
    """ours / baseline for throughputs, baseline / ours for times (above 1: ours is faster)."""
    ours, base = results["ours"], results["baseline"]
    out = {key: round(ours["throughput"][key] / base["throughput"][key], 2)
           for key in ("train_images_per_second", "impute_images_per_second")}
    if "time_to_quality" in ours:
        mine, theirs = ours["time_to_quality"]["seconds"], base["time_to_quality"]["seconds"]
        if mine and theirs:
            out["time_to_quality"] = round(theirs / mine, 2)
        elif mine:
            out["time_to_quality_at_least"] = round(budget / mine, 2)  # the baseline had not got there
    return out


if __name__ == "__main__":
    main()
