"""Shared helpers: a tiny version of the quick-start run, driven through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from miri_lightning.realism import InceptionFeatures

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# The quick-start config shrunk to seconds: 48 Shapes images of 16x16, a U-Net of width 8.
TINY = [
    "--config", str(ROOT / "configs" / "quickstart.yaml"),
    "--data.source.init_args.num_images", "64",
    "--data.source.init_args.image_size", "16",
    "--data.batch_size", "16",
    "--model.net.width", "8",
    "--model.net.channel_mults", "[1, 2]",
    "--model.net.attention_resolutions", "[8]",
    "--model.ema_decay", "0.0",
    "--model.optimizer.lr", "3e-3",
    "--model.optimizer.warmup_steps", "1",
    "--model.solver.steps", "2",
    "--rounds.mi_steps", "10",
    # InceptionV3 costs seconds an image here: the FID tests swap in a tiny stand-in (test_realism.py).
    "--rounds.fid_images", "0",
    "--rounds.grid_images", "4",
    "--logging.backend", "csv",
    # float32 whatever the machine: left unset, the precision would follow its bf16 support.
    "--trainer.precision", "32-true",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]


class HostReads(TorchDispatchMode):
    """Counts the copies of tensor values to the host (`item`, `bool`, `tolist`): on a GPU, each one waits
    for all the work queued before it. (On a CPU, `tolist` reaches no operator: it is counted by a patch.)"""

    def __init__(self):
        super().__init__()
        self.reads = 0
        self._tolist = torch.Tensor.tolist

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))

    def _counting_tolist(self, tensor):
        self.reads += 1
        return self._tolist(tensor)

    def __enter__(self):
        torch.Tensor.tolist = lambda tensor: self._counting_tolist(tensor)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


@pytest.fixture(autouse=True, scope="session")
def _decode_cache(tmp_path_factory):
    # Decoded image folders go to a folder of this session, not the user's ~/.cache (subprocesses inherit it).
    os.environ["MIRI_CACHE_DIR"] = str(tmp_path_factory.mktemp("decode-cache"))


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Session scope: it must run before the module-scoped runs too, or they train on other threads than the
    # runs compared with them, and the results differ in the last bits.
    torch.set_num_threads(1)


class TinyFeatures(nn.Module):
    """A random convolutional net standing in for InceptionV3: 3 x 32 x 32 in [-1, 1] to 16 features."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the same weights every time, the tests' RNG untouched
            torch.manual_seed(0)
            self.conv = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def stand_in() -> InceptionFeatures:
    net = torch.jit.script(TinyFeatures().eval())  # TorchScript, as the real network ships
    return InceptionFeatures(net, num_features=16, size=32, batch_size=7)


def run_cli(run_dir: Path, *overrides: str) -> Path:
    """Train through `train.py`'s entry point with TINY plus `overrides`; returns the run folder."""
    from miri_lightning.cli import main

    main([*TINY, "--trainer.default_root_dir", str(run_dir), *overrides])
    return run_dir


# The trained run that many tests read (training, inference, distillation): trained once a session.
TWO_ROUNDS = ["--rounds.num_rounds", "2", "--rounds.steps", "16"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished two-round TINY run, shared by every test that reads one: do not write into it."""
    return run_cli(tmp_path_factory.mktemp("trained") / "two_rounds", *TWO_ROUNDS)


# What a subprocess started by a test sees: this worktree's tests/ (the probe callbacks) and package first, on one
# thread like the in-process runs (whose results it must match bit for bit); the session's decode cache comes along.
def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def train_command(run_dir: Path, *overrides: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """`python [launcher] train.py` with TINY plus `overrides`, writing to `run_dir`."""
    return [sys.executable, *launcher, str(ROOT / "train.py"), *TINY, "--trainer.default_root_dir", str(run_dir),
            *overrides]


def train_subprocess(run_dir: Path, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python train.py` (TINY plus `overrides`) in a subprocess: for runs that must die (a kill, a failing rank)
    and for DDP, whose launcher re-runs the command for the other ranks. Output captured, never raises."""
    return subprocess.run(train_command(run_dir, *overrides), cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_script(script: Path | str, *args, timeout: int = 300) -> str:
    """`python <script> args` (or `python -m module args`) in a subprocess; asserts it succeeded and returns
    what it printed."""
    done = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]


def read_imputations(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(run_dir / "imputations.npz") as f:
        return torch.from_numpy(f["images"]).permute(0, 3, 1, 2), torch.from_numpy(f["masks"]).bool().permute(0, 3, 1, 2)
