"""train.py runs as folders: train one in a child process, and read back what a finished one left.

A run folder holds config.yaml (under the logger's folder), rounds.jsonl (a
line a round, round 0 first) and checkpoints/round001.ckpt, round002.ckpt,
... (each with that round's imputations and the weights of v_1 ... v_t).
The benchmark scripts share these readers; reading a run back from its
checkpoints needs a run that kept its state in memory (`data.state: memory`,
or `auto` on a collection that fits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from itertools import count, takewhile
from pathlib import Path
from typing import Optional

import torch

from .callbacks.reporting import ROUNDS_FILE
from .checkpoints import DATA_STATE_MARK, data_state, read_checkpoint, run_checkpoint
from .cli import build_cli
from .data.datamodule import MaskedImageDataModule
from .errors import DataError, TrainingError

# Overrides for runs nobody watches: CSV logs, no progress bar, no model summary.
QUIET = ["--logging.backend", "csv", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


def short_rounds(steps: int, rounds: int) -> list[str]:
    """Overrides for `rounds` rounds of `steps` optimiser steps without the mask-information probe, FID/KID and
    the held-out loss; they must come after any others, to win."""
    return ["--rounds.num_rounds", str(rounds), "--rounds.steps", str(steps), "--rounds.min_steps", "null",
            "--rounds.mi_steps", "0", "--rounds.fid_images", "0", "--rounds.on_worse", "warn",
            "--data.val_fraction", "0"]


def train(config: Path, overrides: list[str], timeout: Optional[float] = None, profile: Optional[Path] = None,
          env: Optional[dict[str, str]] = None) -> list[dict]:
    """Train `config` with `overrides` quietly in a child process and a scratch folder, as train.py would
    (under cProfile into `profile`; `env` added to the environment); returns its rounds.jsonl records.

    A run still going after `timeout` seconds is stopped, and the rounds it finished are returned.
    A run that fails raises a TrainingError with the end of its error output.
    """
    with tempfile.TemporaryDirectory() as run_dir:
        python = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else [])]
        cmd = [*python, "-m", "miri_lightning", "--config", str(config), *QUIET,
               "--trainer.default_root_dir", run_dir, *overrides]
        try:
            subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            pass  # rounds.jsonl is written atomically: what is there is whole
        except subprocess.CalledProcessError as err:
            raise TrainingError(f"train.py failed for {config}:\n{err.stderr[-3000:]}") from None
        return read_rounds(Path(run_dir))


def read_rounds(run: Path) -> list[dict]:
    """The records of a run's rounds.jsonl, round 0 first; none before round 0 is written."""
    path = Path(run) / ROUNDS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def saved_rounds(run: Path) -> list[int]:
    """The rounds 1, 2, ... whose checkpoints the run folder holds, up to the first one missing."""
    return list(takewhile(lambda t: run_checkpoint(run, t).exists(), count(1)))


def run_datamodule(run: Path) -> MaskedImageDataModule:
    """A finished run's data module, set up from its saved config.yaml: images, masks, truth and round 0's fill.

    Built in a scratch folder, so that nothing is written into the run's.
    """
    config = next(Path(run).rglob("config.yaml"), None)
    if config is None:
        raise DataError(f"{run} holds no config.yaml: it is not a train.py run folder")
    with tempfile.TemporaryDirectory() as scratch:
        # The state folder too: a config may name the run's own, which a run still training writes into.
        cli = build_cli(["--config", str(config), "--trainer.logger", "false", "--trainer.default_root_dir", scratch,
                         "--data.state_dir", str(Path(scratch) / "state")])
        dm = cli.datamodule
        dm.setup()
    return dm


def imputations_after(run: Path, t: int, dm: MaskedImageDataModule) -> torch.Tensor:
    """x_hat^(t) of a finished run: round t's checkpoint's imputations, or `dm`'s initial fill for t = 0.

    `dm` is the run's data module (`run_datamodule`); a checkpoint whose masks differ from its masks is refused.
    """
    if t == 0:
        return dm.imputations
    path = run_checkpoint(run, t)
    state = data_state(read_checkpoint(path), path)
    if state[DATA_STATE_MARK] != dm.masks_sha1:
        raise DataError(f"{path}: its masks differ from those rebuilt from the run's config.yaml")
    if "imputations" not in state:
        raise DataError(f"{path}: the run kept its imputations in memory-mapped files (data.state memmap); "
                        "only a run that keeps them in memory can be read back")
    return state["imputations"]
