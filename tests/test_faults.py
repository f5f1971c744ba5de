"""Faults: kills and resumes, torn writes, NaN losses and solves, unwritable folders, foreign checkpoints, bad config.

Each test drives the real command line (in-process through `run_cli`, or
`python train.py` in a subprocess where the process must die) and checks the
message and that the files of the last finished round are whole.
"""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY, read_imputations, read_rounds, run_cli
from miri_lightning.checkpoints import CHECKPOINT_FORMAT, AtomicCheckpointIO
from miri_lightning.errors import OutputError
from miri_lightning.io import save_imputations, save_png, write_round_record

# Two rounds of two epochs; 64 images in batches of 16: 4 training steps an epoch, 4 solve chunks a round.
ARGS = ["--trainer.max_epochs", "4", "--rounds.epochs_per_round", "2", "--rounds.solve_batch_size", "16"]
TIMINGS = {"train_seconds", "impute_seconds"}


def callback(name: str, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"fault_probe.{name}", "init_args": init_args})


def fails(run_dir: Path, *overrides: str) -> str:
    """Run the command line, expect it to stop with an error, and return the message it exits with."""
    with pytest.raises(SystemExit) as err:
        run_cli(run_dir, *overrides)
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def train_subprocess(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python train.py` from this worktree, on one thread like the in-process runs (bit-identical results)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *TINY, "--trainer.default_root_dir", str(run_dir), *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_names(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "checkpoints").iterdir()} if (run_dir / "checkpoints").exists() else set()


def assert_round_one_is_intact(run_dir: Path) -> None:
    """What a run stopped in round 2 must leave: round 1's files, whole and finite, and no temporary files."""
    assert [r["round"] for r in read_rounds(run_dir)][:2] == [0, 1]
    with np.load(run_dir / "imputations.npz") as f:
        assert np.isfinite(f["images"]).all()
    assert checkpoint_names(run_dir) <= {"round001.ckpt", "last.ckpt"}
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert last["MaskedImageDataModule"]["round"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not list(run_dir.rglob("*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run never killed (on one thread, as the runs it is compared with: module fixtures start before
    conftest's per-test thread setting)."""
    torch.set_num_threads(1)
    return run_cli(tmp_path_factory.mktemp("faults") / "reference", *ARGS)


def assert_same_result(run_dir: Path, reference: Path) -> None:
    assert torch.equal(read_imputations(run_dir)[0], read_imputations(reference)[0])
    strip = lambda rounds: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rounds]  # noqa: E731
    assert strip(read_rounds(run_dir)) == strip(read_rounds(reference))
    assert checkpoint_names(run_dir) == checkpoint_names(reference)
    ours, theirs = load(run_dir / "checkpoints" / "last.ckpt"), load(reference / "checkpoints" / "last.ckpt")
    for mine, want in zip(ours["miri"]["round_weights"], theirs["miri"]["round_weights"], strict=True):
        assert all(torch.equal(mine[k], want[k]) for k in want)


# -- kill and resume ------------------------------------------------------


@pytest.mark.parametrize("kill", [callback("KillInTraining", epoch=3, batch=2),
                                  callback("KillInReimputation", epoch=3, chunks=2)],
                         ids=["in_training", "in_reimputation"])
def test_killed_in_round_two_resumes_from_last_ckpt_to_the_uninterrupted_result(kill, reference, tmp_path):
    run = tmp_path / "run"
    killed = train_subprocess(run, *ARGS, kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert_round_one_is_intact(run)
    assert [r["round"] for r in read_rounds(run)] == [0, 1]
    run_cli(run, *ARGS, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert_same_result(run, reference)


# -- atomic writes --------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def torn(file) -> None:
    """Write the start of a file, then fail as a full disk (or, but for the exception, a kill) would."""
    if hasattr(file, "write"):
        file.write(b"torn")
    else:
        Path(file).write_bytes(b"torn")
    no_space()


def read_npz(path: Path) -> list:
    with np.load(path) as f:
        return f["images"].tolist()


def read_png(path: Path) -> list:
    with Image.open(path) as image:
        return np.asarray(image).tolist()


# name: (file name, write(path, value), read(path), the writer to break, which of its arguments is the file)
WRITES = {
    "checkpoint": ("last.ckpt", lambda p, v: AtomicCheckpointIO().save_checkpoint({"w": torch.full((9,), v)}, p),
                   lambda p: load(p)["w"].tolist(), (torch, "save"), 1),
    "imputations": ("imputations.npz", lambda p, v: save_imputations(p, torch.full((2, 1, 4, 4), v / 2),
                                                                      torch.ones(2, 1, 4, 4, dtype=torch.bool)),
                    read_npz, (np, "savez"), 0),
    "grid": ("round_001.png", lambda p, v: save_png(p, torch.full((3, 4, 4), v / 2)), read_png,
             (Image.Image, "save"), 1),
    "rounds": ("rounds.jsonl", lambda p, v: write_round_record(p, {"round": v}), lambda p: p.read_text(),
               (Path, "write_text"), 0),
}


@pytest.mark.parametrize("kind", WRITES)
def test_a_write_that_fails_half_way_keeps_the_previous_file_and_no_temporary(kind, tmp_path, monkeypatch):
    name, write, read, writer, file_arg = WRITES[kind]
    path = tmp_path / name
    write(path, 0.0)
    before = read(path)
    monkeypatch.setattr(*writer, lambda *args, **kwargs: torn(args[file_arg]))
    with pytest.raises(OutputError, match=f"{name}: No space left on device"):
        write(path, 1.0)
    monkeypatch.undo()
    assert read(path) == before
    assert [p.name for p in tmp_path.iterdir()] == [name]


def fill_disk_at(monkeypatch, writer, file_arg: int, marker: str, nth: int) -> None:
    """Make the `nth` write through `writer` into a file whose name holds `marker` fail with ENOSPC."""
    real, seen = getattr(*writer), []

    def write(*args, **kwargs):
        if marker in str(getattr(args[file_arg], "name", args[file_arg])):
            seen.append(1)
            if len(seen) == nth:
                no_space()
        return real(*args, **kwargs)

    monkeypatch.setattr(*writer, write)


@pytest.mark.parametrize("victim", ["imputations.npz", "checkpoints/round002.ckpt"])
def test_a_full_disk_in_round_two_names_the_file_and_keeps_round_one(victim, tmp_path, monkeypatch):
    if victim.endswith(".npz"):  # the third imputations.npz: rounds 0 and 1 are written first
        fill_disk_at(monkeypatch, (np, "savez"), 0, ".imputations.npz.", 3)
    else:
        fill_disk_at(monkeypatch, (torch, "save"), 1, ".round002.ckpt.", 1)
    message = fails(tmp_path, *ARGS)
    assert f"could not write {tmp_path / victim}: No space left on device" in message
    assert_round_one_is_intact(tmp_path)
