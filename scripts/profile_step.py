"""Where a training step's time goes: the bare network step against train.py's step, and a profile.

    python scripts/profile_step.py --config configs/mnist.yaml -- --trainer.accelerator cpu

1. The bare step: the config's U-Net, optimiser and precision, one training
   batch of the collection, forward + backward + AdamW in a plain loop, timed
   after a warm-up (the device synchronised): the floor for a step. Also the
   operator calls that reach a device in one such step (views and
   allocations included). On a GPU each is about one kernel launch, and the
   count is the same on any machine: a change's effect on a launch-bound GPU
   step can be predicted from a CPU.
2. train.py's step: 2 rounds of `--round-steps` steps, the second (warm)
   round's training time, per step.
3. With `--top N`, another train.py run under cProfile: the N functions
   with the most time of their own (start-up included).

A train.py step far above the bare step means the time goes around the
network (loop, hooks, logging, data); a bare step far above the FLOPs over
the device's peak means kernel launches (small batches of small images).
"""

from __future__ import annotations

import argparse
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from miri_lightning.cli import build_cli
from miri_lightning.errors import TrainingError
from miri_lightning.flow import derangement, missing_mse, training_pair
from miri_lightning.runs import QUIET, short_rounds, train

ROOT = Path(__file__).resolve().parents[1]


class CountOps(TorchDispatchMode):
    """Counts the operator calls that reach a device: on a GPU, roughly the kernel launches."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def bare_step(cli, steps: int) -> dict:
    """Milliseconds per forward + backward + AdamW step of the config's network, nothing around it,
    and the operator calls of such a step (a launch-bound GPU pays for each in host time)."""
    dm, model, trainer = cli.datamodule, cli.model, cli.trainer
    model._build(tuple(dm.image_shape))
    device = trainer.strategy.root_device
    net = model.velocity.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=model.optimizer_config.fused)
    x0 = dm.imputations[: dm.batch_size].to(device).contiguous(memory_format=model.memory_format)
    m = dm.masks[: dm.batch_size].to(device, x0.dtype).contiguous(memory_format=model.memory_format)

    def step():
        tau = torch.rand(len(x0), device=device)
        a, b, target = training_pair(x0, x0[derangement(len(x0)).to(device)], m, tau)
        with trainer.precision_plugin.forward_context():
            loss = missing_mse(net(a, b, m, tau), target, m)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    milliseconds = (time.perf_counter() - start) / steps * 1e3
    with CountOps() as counter:
        step()
    return {"bare_step_ms": round(milliseconds, 2), "ops_per_step": counter.count}


def costliest(profile: Path, top: int) -> list[dict]:
    """The `top` functions of a cProfile file with the most time of their own."""
    stats = pstats.Stats(str(profile))
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]
    return [{"function": f"{Path(f).name}:{line}({name})", "calls": calls, "seconds": round(own, 3),
             "with_callees": round(cum, 3)} for (f, line, name), (_, calls, own, cum, _) in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    p.add_argument("--steps", type=int, default=30, help="timed bare steps")
    p.add_argument("--round-steps", type=int, default=30, help="steps of each train.py round (0: no train.py run)")
    p.add_argument("--top", type=int, default=25, help="functions of the cProfile run to list (0: no such run)")
    p.add_argument("--out", type=Path, default=Path("profile_step.json"))
    p.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        cli = build_cli(["--config", str(args.config), *QUIET, "--trainer.default_root_dir", run_dir,
                         *args.overrides])
        result = {"batch_size": cli.datamodule.batch_size, **bare_step(cli, args.steps)}  # loads the collection
    if args.round_steps:
        warm = train(args.config, [*args.overrides, *short_rounds(args.round_steps, 2)])[-1]
        result["train_step_ms"] = round(warm["fastest_epoch_seconds"] / args.round_steps * 1e3, 2)
        if args.top:
            with tempfile.TemporaryDirectory() as folder:
                profile = Path(folder) / "train.prof"
                train(args.config, [*args.overrides, *short_rounds(args.round_steps, 1)], profile=profile)
                result["top_own_time"] = costliest(profile, args.top)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "top_own_time"}))
    for row in result.get("top_own_time", []):
        print(f"{row['seconds']:9.3f} {row['with_callees']:9.3f} {row['calls']:8d}  {row['function']}")


if __name__ == "__main__":
    try:
        main()
    except TrainingError as err:
        sys.exit(str(err))
