"""Few-step solvers against many Euler steps: one round of a finished run re-solved with each, quality and time.

    miri-bench solvers --run RUN --round 5 --solvers euler:100 euler:20 midpoint:2 midpoint:8 rk4:1

Round t of a run maps x_hat^(t-1) (in RUN/checkpoints/round{t-1}.ckpt; the
noise or other fill for t = 1) through the ODE of v_t (its EMA weights, in
round{t}.ckpt). This script repeats that solve with each `method:steps`,
on the same images, masks and weights, and reports the MMD and PSNR of the
result against the ground truth and the solve's images/s. The collection,
masks and truth are rebuilt from the run's saved config.yaml, so the run must
keep its state in memory (the default) and have ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from miri_lightning.checkpoints import run_checkpoint
from miri_lightning.errors import MIRIError
from miri_lightning.flow import SolverConfig, solve_batches
from miri_lightning.inference import MIRIImputer
from miri_lightning.metrics import collection_metrics
from miri_lightning.runs import imputations_after, run_datamodule


def round_inputs(run: Path, t: int):
    """(x_hat^(t-1), masks, truth, v_t) of a finished run."""
    dm = run_datamodule(run)
    if dm.truth is None:
        sys.exit(f"{run}: its data has no ground truth to score against")
    imputer = MIRIImputer.load(run_checkpoint(run, t))
    imputer.net.load_state_dict(imputer.round_weights[t - 1])
    return imputations_after(run, t - 1, dm), dm.masks, dm.truth, imputer.net


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="miri-bench solvers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished train.py run folder")
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--solvers", nargs="+", default=["euler:100", "euler:20", "midpoint:2", "midpoint:8", "rk4:1"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    try:
        start, masks, truth, net = round_inputs(args.run, args.round)
    except MIRIError as err:
        sys.exit(str(err))
    results = []
    for spec in args.solvers:
        method, steps = spec.split(":")
        solver = SolverConfig(method=method, steps=int(steps))
        begin = time.perf_counter()
        out, _ = solve_batches(net, start, masks, solver, args.batch_size, torch.device("cpu"))
        seconds = time.perf_counter() - begin
        metrics = collection_metrics(out, masks, truth, mi_steps=0)
        results.append({"solver": spec, "mmd": metrics["mmd"], "psnr": round(metrics["psnr"], 3),
                        "seconds": round(seconds, 2), "images_per_second": round(len(out) / seconds, 1)})
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run), "round": args.round, "results": results}, indent=1))
