"""Speed of a config against a baseline config on the same data: throughput, memory, time to quality.

    python scripts/bench_speed.py --config configs/quickstart.yaml --baseline configs/paper.yaml \
        --target-mmd 1e-3 --budget 1800 -- --trainer.accelerator cpu
    python scripts/bench_speed.py --levers -- --trainer.accelerator cpu     # each speed option off and on

Every figure comes from real `train.py` runs and their rounds.jsonl:

- throughput: `--rounds` short rounds per config (`--steps` optimiser steps
  of training, then one full re-imputation), figures of the last, warm round
  (compilation and first-call costs are in round 1): training images/s
  (forward, backward, optimiser and EMA step, data loading included),
  re-imputation images/s (a full ODE solve of the collection), peak memory
  (GPU: allocated; CPU: the process's resident set), and the TFLOP/s these
  rates mean for the U-Net (its FLOPs counted by torch's FlopCounterMode);
  with `--peak-tflops`, the share of the device's peak;
- time to quality: each config run as it is, until a round's MMD is at or
  below `--target-mmd`, or `--budget` seconds of training and re-imputation
  have passed; if the baseline did not get there, the ratio is a lower bound:
  the longer of its finished rounds and one round of its recipe (its
  `rounds.steps` at the step time of the warm throughput round, plus a solve; `--baseline-budget 0` skips its run, as the paper's recipe
  needs a long time for one round);
- `--levers`: instead of the baseline, `--config` with each speed option
  off and on (alternating runs), and the on/off ratios.

The baseline runs on the data and masks of `--config` (its own `data.source`
and `data.mask` are replaced); its recipe (fill, network, solver) is its own.
Overrides after `--` go to both runs. Prints one JSON line per measurement
and writes them all to `--out`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from miri_lightning.callbacks.rounds import MIRIRounds
from miri_lightning.cli import build_cli, read_config
from miri_lightning.errors import TrainingError
from miri_lightning.runs import QUIET, short_rounds, train

ROOT = Path(__file__).resolve().parents[1]

# Each speed option, as train.py overrides (off, on).
LEVERS = {
    "bf16 autocast": (["--trainer.precision", "32-true"], ["--trainer.precision", "bf16-mixed"]),
    "channels_last": (["--model.channels_last", "false"], ["--model.channels_last", "true"]),
    "fused AdamW": (["--model.optimizer.fused", "false"], ["--model.optimizer.fused", "true"]),
    "torch.compile": (["--model.compile", "false"], ["--model.compile", "true"]),
    # a GPU lever, over compiling alone
    "CUDA graphs": (["--model.compile", "true"], ["--model.compile", "reduce-overhead"]),
    "state on the device": (["--data.on_device", "false"], ["--data.on_device", "true"]),
    "cuDNN autotuning": (["--trainer.benchmark", "false"], ["--trainer.benchmark", "true"]),  # a GPU lever
}
# Network evaluations per step of each fixed-step solver.
EVALUATIONS = {"euler": 1, "midpoint": 2, "rk4": 4}


def same_data(config: Path) -> list[str]:
    """Overrides that give another config this config's images and masks."""
    data = read_config(config)["data"]
    return ["--data.source", json.dumps(data["source"]), "--data.mask", json.dumps(data["mask"])]


def throughput(config: Path, data: list[str], steps: int, rounds: int, extra: list[str]) -> dict:
    """`rounds` rounds of `steps` training steps and one re-imputation each; the last round's figures,
    and (from a warm round) a floor for one round of the config's own recipe."""
    last = train(config, [*data, *extra, *short_rounds(steps, rounds)])[-1]
    keys = ("train_images_per_second", "impute_images_per_second", "peak_memory_gb")
    figures = {key: round(last[key], 3) for key in keys}
    if rounds >= 2:  # round 1 holds compilation and first calls: no floor from it
        # each of the recipe's steps takes at least a step of the fastest epoch measured; then one solve
        step_seconds = last["fastest_epoch_seconds"] / steps
        floor = recipe_steps(config, extra) * step_seconds + last["impute_seconds"]
        figures["recipe_round_seconds_at_least"] = round(floor, 1)
    return figures


def recipe_steps(config: Path, overrides: list[str]) -> int:
    """The most training steps of one round of `config` as run with `overrides`."""
    value = (read_config(config).get("rounds") or {}).get(
        "steps", inspect.signature(MIRIRounds).parameters["steps"].default)
    for key, given in zip(overrides, overrides[1:]):
        if key == "--rounds.steps":
            value = given
    return int(value)


def flops_per_image(config: Path, data: list[str], extra: list[str]) -> dict:
    """FLOPs of the config's U-Net per image: a training step (forward and backward) and a full solve."""
    with tempfile.TemporaryDirectory() as run_dir:
        cli = build_cli(["--config", str(config), *QUIET, "--trainer.default_root_dir", run_dir, *data, *extra])
        shape = tuple(cli.datamodule.image_shape)  # loads the collection, inside the scratch folder
    model = cli.model
    model._build(shape)
    model.velocity.to(memory_format=torch.contiguous_format)  # the counter misses some CPU channels_last kernels
    x = torch.rand(2, *model.hparams.image_shape)
    m, tau = (torch.rand_like(x) > 0.5).float(), torch.rand(2)
    with FlopCounterMode(display=False) as counter:
        model.velocity(x, x, m, tau).square().mean().backward()
    train = counter.get_total_flops() / 2
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.velocity(x, x, m, tau)
    solver = model.solver
    evaluations = EVALUATIONS.get(solver.method, 0) * solver.steps  # dopri5: adaptive, not counted
    return {"train": train, "solve": counter.get_total_flops() / 2 * evaluations}


def with_tflops(figures: dict, flops: dict, peak: float | None) -> dict:
    """Throughput figures plus the TFLOP/s they mean (and the share of `peak` TFLOP/s)."""
    out = dict(figures)
    for kind, key in (("train", "train_images_per_second"), ("solve", "impute_images_per_second")):
        if flops[kind]:
            out[f"{kind}_tflops"] = float(f"{figures[key] * flops[kind] / 1e12:.4g}")
            if peak:
                out[f"{kind}_share_of_peak"] = float(f"{out[f'{kind}_tflops'] / peak:.4g}")
    return out


def levers(config: Path, data: list[str], args, report) -> None:
    """Each lever off and on, alternating, `--repeats` times; mean figures and on/off ratios."""
    for name in args.only or LEVERS:
        runs = {"off": [], "on": []}
        for _ in range(args.repeats):
            for state, overrides in zip(runs, LEVERS[name]):
                runs[state].append(throughput(config, data, args.steps, args.rounds, [*args.overrides, *overrides]))
        mean = {state: {key: round(sum(r[key] for r in rs) / len(rs), 3) for key in rs[0]} for state, rs in runs.items()}
        report(name, {**mean, "runs": runs, "ratios": {
            key: round(mean["on"][key] / mean["off"][key], 3)
            for key in ("train_images_per_second", "impute_images_per_second", "peak_memory_gb")}})


class Report(dict):
    """The results so far: each new entry is printed as a JSON line and the whole is rewritten to `out`
    (atomically), so that a run cut short by a time limit keeps what it measured."""

    def __init__(self, out: Path, **header):
        super().__init__(header)
        self.out = out

    def __call__(self, key: str, value) -> None:
        self[key] = value
        print(json.dumps({key: value}), flush=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self, indent=1))
        tmp.replace(self.out)


def time_to_quality(config: Path, data: list[str], target: float, budget: float, extra: list[str]) -> dict:
    """Training plus re-imputation seconds until a round's MMD <= target (None if not within the budget)."""
    if budget <= 0:
        return {"seconds": None, "rounds_done": 0, "seconds_spent": 0.0, "skipped": True}
    start = time.perf_counter()
    rounds = train(config, [*data, *extra], timeout=budget)
    elapsed = 0.0
    for record in rounds[1:]:
        elapsed += record["train_seconds"] + record["impute_seconds"]
        if record["mmd"] <= target:
            return {"seconds": round(elapsed, 1), "round": record["round"], "mmd": record["mmd"]}
    return {"seconds": None, "rounds_done": len(rounds) - 1, "seconds_spent": round(elapsed, 1), "wall_seconds": round(time.perf_counter() - start, 1),
            "best_mmd": min((r["mmd"] for r in rounds[1:]), default=None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    p.add_argument("--baseline", type=Path, default=ROOT / "configs" / "paper.yaml")
    p.add_argument("--steps", type=int, default=45, help="optimiser steps of each throughput round")
    p.add_argument("--rounds", type=int, default=2, help="throughput rounds; the last one is measured")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, for the share reached")
    p.add_argument("--target-mmd", type=float, default=1e-3)
    p.add_argument("--budget", type=float, default=1800, help="seconds per config for time to quality")
    p.add_argument("--baseline-budget", type=float,
                   help="seconds for the baseline's time to quality (default --budget); 0 skips its run, and "
                        "the ratio's lower bound is then its first round at its measured rates")
    p.add_argument("--skip-quality", action="store_true", help="throughput and memory only")
    p.add_argument("--levers", action="store_true", help="each speed option of --config off and on")
    p.add_argument("--only", nargs="+", choices=list(LEVERS), metavar="LEVER",
                   help=f"these levers only, in this order (of: {', '.join(LEVERS)})")
    p.add_argument("--repeats", type=int, default=1, help="off/on pairs per lever")
    p.add_argument("--out", type=Path, default=Path("bench_speed.json"))
    p.add_argument("overrides", nargs="*", help="train.py overrides for every run, after --")
    args = p.parse_args()
    if args.only and not args.levers:
        p.error("--only chooses among the levers: it needs --levers")
    data = same_data(args.config)
    if args.levers:
        report = Report(args.out, config=str(args.config), overrides=args.overrides, levers={})
        levers(args.config, data, args, lambda name, value: report("levers", {**report["levers"], name: value}))
        return
    runs = {"ours": args.config, "baseline": args.baseline}
    report = Report(args.out)
    for name, path in runs.items():
        figures = throughput(path, data, args.steps, args.rounds, args.overrides)
        report(name, {"config": str(path), "throughput": with_tflops(
            figures, flops_per_image(path, data, args.overrides), args.peak_tflops)})
    budgets = {"ours": args.budget, "baseline": args.budget if args.baseline_budget is None else args.baseline_budget}
    if not args.skip_quality:
        for name, path in runs.items():
            report(name, {**report[name], "time_to_quality": time_to_quality(
                path, data, args.target_mmd, budgets[name], args.overrides)})
    report("ratios", ratios(report))


def significant(x: float, digits: int = 3) -> float:
    """`x` to `digits` significant digits (0.3445 -> 0.345: two decimals would lose 1.3 % of a small ratio)."""
    return float(f"{x:.{digits}g}")


def ratios(results: dict) -> dict:
    """ours / baseline for throughputs, baseline / ours for times (above 1: ours is faster).

    When only one side got to the target, the ratio is a bound: the other
    side's time is at least what it spent (and, for the baseline, at least
    one round of its recipe, before which it has no MMD at all).
    """
    ours, base = results["ours"], results["baseline"]
    out = {key: significant(ours["throughput"][key] / base["throughput"][key])
           for key in ("train_images_per_second", "impute_images_per_second")}
    if "time_to_quality" not in ours:
        return out
    mine, theirs = ours["time_to_quality"], base["time_to_quality"]
    if mine["seconds"] is not None and theirs["seconds"] is not None:
        out["time_to_quality"] = significant(theirs["seconds"] / mine["seconds"])
    elif mine["seconds"] is not None:
        floor = max(theirs["seconds_spent"], base["throughput"].get("recipe_round_seconds_at_least", 0.0))
        if floor:
            out["time_to_quality_at_least"] = significant(floor / mine["seconds"])
    elif theirs["seconds"] is not None and mine["seconds_spent"]:
        out["time_to_quality_at_most"] = significant(theirs["seconds"] / mine["seconds_spent"])
    if not any(key.startswith("time_to_quality") for key in out):
        out["time_to_quality"] = "no ratio: neither got to the target (see each one's best_mmd)"
    return out


if __name__ == "__main__":
    try:
        main()
    except TrainingError as err:
        sys.exit(str(err))
