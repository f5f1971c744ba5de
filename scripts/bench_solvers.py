"""Few-step solvers against many Euler steps: one round of a finished run re-solved with each, quality and time.

    python scripts/bench_solvers.py --run RUN --round 5 --solvers euler:100 euler:20 midpoint:2 midpoint:8 rk4:1

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
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from miri_lightning.checkpoints import miri_state, read_checkpoint  # noqa: E402
from miri_lightning.cli import build_cli  # noqa: E402
from miri_lightning.flow import SolverConfig, solve_batches  # noqa: E402
from miri_lightning.metrics import collection_metrics  # noqa: E402
from miri_lightning.models.unet import UNetConfig, VelocityUNet  # noqa: E402


def run_datamodule(run: Path):
    """A finished run's data module, set up from its saved config.yaml: images, masks, truth and round 0's fill."""
    config = next(run.rglob("config.yaml"))
    with tempfile.TemporaryDirectory() as scratch:
        cli = build_cli(["--config", str(config), "--trainer.logger", "false", "--trainer.default_root_dir", scratch])
        dm = cli.datamodule
        dm.setup()
    return dm


def round_checkpoint(run: Path, t: int) -> Path:
    """Round t's checkpoint in a run folder (train.py names them round001.ckpt, round002.ckpt, ...)."""
    return run / "checkpoints" / f"round{t:03d}.ckpt"


def imputations_after(run: Path, t: int, dm) -> torch.Tensor:
    """x_hat^(t) of a finished run: round t's checkpoint, or `dm`'s initial fill for t = 0."""
    if t == 0:
        return dm.imputations
    ckpt = round_checkpoint(run, t)
    state = read_checkpoint(ckpt)["MaskedImageDataModule"]
    if state["masks_sha1"] != dm.masks_sha1:
        sys.exit(f"{ckpt}: its masks differ from those rebuilt from the run's config.yaml")
    return state["imputations"]


def round_inputs(run: Path, t: int):
    """(x_hat^(t-1), masks, truth, v_t) of a finished run."""
    dm = run_datamodule(run)
    if dm.truth is None:
        sys.exit(f"{run}: its data has no ground truth to score against")
    ckpt = round_checkpoint(run, t)
    data = read_checkpoint(ckpt)
    net = VelocityUNet(dm.image_shape[0], dm.image_shape[1], UNetConfig(**data["hyper_parameters"]["net"]))
    net.load_state_dict(miri_state(data, ckpt)["round_weights"][t - 1])
    return imputations_after(run, t - 1, dm), dm.masks, dm.truth, net.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished train.py run folder")
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--solvers", nargs="+", default=["euler:100", "euler:20", "midpoint:2", "midpoint:8", "rk4:1"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = p.parse_args()
    start, masks, truth, net = round_inputs(args.run, args.round)
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


if __name__ == "__main__":
    main()
