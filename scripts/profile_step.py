"""Where a training step's time goes: the bare network step against train.py's step, and a profile.

    python scripts/profile_step.py --config configs/mnist.yaml -- --trainer.accelerator cpu

1. The bare step: the config's U-Net, optimiser and precision, one training
   batch of the collection, forward + backward + AdamW in a plain loop, timed
   after a warm-up (the device synchronised): the floor for a step. Also the
   operator calls that reach a kernel in one such step, which on a GPU are
   about its kernel launches: counted the same on any machine, so a change's
   effect on a launch-bound GPU step can be predicted from a CPU.
2. train.py itself for `--epochs` epochs under cProfile: milliseconds per step
   from its rounds.jsonl, and the functions that take the most time.

A Lightning step far above the bare step means the time goes around the
network (loop, hooks, logging, data); a bare step far above the FLOPs over
the device's peak means kernel launches (small batches of small images).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from miri_lightning.cli import build_cli  # noqa: E402
from miri_lightning.flow import derangement, missing_mse, training_pair  # noqa: E402

QUIET = ["--logging.backend", "csv", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


class CountKernels(TorchDispatchMode):
    """Counts the operator calls that reach a device kernel: on a GPU, roughly the kernel launches."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def bare_step(cli, steps: int) -> dict:
    """Milliseconds per forward + backward + AdamW step of the config's network, nothing around it,
    and the kernels such a step calls (a launch-bound GPU pays each one in host time)."""
    dm, model, trainer = cli.datamodule, cli.model, cli.trainer
    model._build(tuple(dm.image_shape))
    device = trainer.strategy.root_device
    net = model.velocity.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=model.hparams.fused_adamw)
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
    with CountKernels() as counter:
        step()
    return {"bare_step_ms": round(milliseconds, 2), "kernels_per_step": counter.count}


def lightning_step_ms(config: Path, overrides: list[str], epochs: int, top: int) -> dict:
    """train.py under cProfile for `epochs` epochs: ms per step and the costliest functions."""
    with tempfile.TemporaryDirectory() as run_dir:
        prof = Path(run_dir) / "train.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), str(ROOT / "train.py"), "--config", str(config),
               *QUIET, "--trainer.default_root_dir", run_dir, *overrides, "--trainer.max_epochs", str(epochs),
               "--rounds.epochs_per_round", str(epochs), "--rounds.mi_steps", "0"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        record = [json.loads(line) for line in (Path(run_dir) / "rounds.jsonl").read_text().splitlines()][-1]
        stats = pstats.Stats(str(prof))
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # by own time
    return {
        "ms_per_image": 1e3 / record["train_images_per_second"],
        "top_own_time": [{"function": f"{Path(f).name}:{line}({name})", "calls": calls, "seconds": round(own, 3),
                          "with_callees": round(cum, 3)} for (f, line, name), (_, calls, own, cum, _) in rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    p.add_argument("--steps", type=int, default=30, help="timed bare steps")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the profiled train.py run (0: none)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=Path("profile_step.json"))
    p.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        cli = build_cli(["--config", str(args.config), *QUIET, "--trainer.default_root_dir", run_dir,
                         *args.overrides])
        batch = cli.datamodule.batch_size
        result = {"batch_size": batch, **bare_step(cli, args.steps)}
    if args.epochs:
        lightning = lightning_step_ms(args.config, args.overrides, args.epochs, args.top)
        result["lightning_step_ms"] = round(lightning.pop("ms_per_image") * batch, 2)
        result.update(lightning)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "top_own_time"}))
    for row in result.get("top_own_time", []):
        print(f"{row['seconds']:9.3f} {row['with_callees']:9.3f} {row['calls']:8d}  {row['function']}")


if __name__ == "__main__":
    main()
