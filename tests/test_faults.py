"""Faults: kills and resumes, torn writes, NaN losses and solves, unwritable folders, foreign checkpoints, bad config.

Each test drives the real command line (in-process through `run_cli`, or
`python train.py` in a subprocess where the process must die) and checks the
message and that the files of the last finished round are whole.
"""

import errno
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import read_imputations, read_rounds, run_cli, train_subprocess
from miri_lightning.callbacks.timing import TIMING_KEYS
from miri_lightning.checkpoints import CHECKPOINT_FORMAT, AtomicCheckpointIO
from miri_lightning.errors import OutputError
from miri_lightning.io import save_imputations, save_png, write_round_record

# Two rounds of two epochs; 64 images in batches of 16: 4 training steps an epoch, 4 solve chunks a round.
ARGS = ["--rounds.num_rounds", "2", "--rounds.steps", "8", "--rounds.solve_batch_size", "16"]


def callback(name: str, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"fault_probe.{name}", "init_args": init_args})


def fails(run_dir: Path, *overrides: str) -> str:
    """Run the command line, expect it to stop with an error, and return the message it exits with."""
    with pytest.raises(SystemExit) as err:
        run_cli(run_dir, *overrides)
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


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
    """The run never killed."""
    return run_cli(tmp_path_factory.mktemp("faults") / "reference", *ARGS)


def assert_same_result(run_dir: Path, reference: Path, rounds: tuple[int, ...] = (0, 1, 2)) -> None:
    """Bit for bit the reference's imputations, round weights and (timings aside) records of `rounds`; with
    every round in the folder, the same checkpoint files too."""
    assert torch.equal(read_imputations(run_dir)[0], read_imputations(reference)[0])
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING_KEYS}  # noqa: E731
                             for r in records if r["round"] in rounds]
    assert strip(read_rounds(run_dir)) == strip(read_rounds(reference))
    if rounds == (0, 1, 2):
        assert checkpoint_names(run_dir) == checkpoint_names(reference)
    ours, theirs = load(run_dir / "checkpoints" / "last.ckpt"), load(reference / "checkpoints" / "last.ckpt")
    for mine, want in zip(ours["miri"]["round_weights"], theirs["miri"]["round_weights"], strict=True):
        assert all(torch.equal(mine[k], want[k]) for k in want)


# -- kill and resume ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kill, rounds_on_disk", [
    (callback("KillInTraining", epoch=1, batch=6), [0, 1]),
    (callback("KillInReimputation", epoch=1, chunks=2), [0, 1]),
    # The 4th checkpoint is round 2's last.ckpt: round002.ckpt and round 2's files are written, last.ckpt is round 1.
    (callback("KillAtCheckpoint", nth=4), [0, 1, 2]),
], ids=["in_training", "in_reimputation", "between_round_checkpoint_and_last"])
def test_killed_in_round_two_resumes_from_last_ckpt_to_the_uninterrupted_result(kill, rounds_on_disk, reference,
                                                                                 tmp_path):
    run = tmp_path / "run"
    killed = train_subprocess(run, *ARGS, kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [r["round"] for r in read_rounds(run)] == rounds_on_disk
    assert load(run / "checkpoints" / "last.ckpt")["MaskedImageDataModule"]["round"] == 1
    if rounds_on_disk == [0, 1]:
        assert_round_one_is_intact(run)
    run_cli(run, *ARGS, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert_same_result(run, reference)  # the same checkpoint files too: a redone round002.ckpt is replaced


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


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["imputations.npz", "checkpoints/round002.ckpt"])
def test_a_full_disk_in_round_two_names_the_file_and_keeps_round_one(victim, tmp_path, monkeypatch):
    if victim.endswith(".npz"):  # the third imputations.npz: rounds 0 and 1 are written first
        fill_disk_at(monkeypatch, (np, "savez"), 0, ".imputations.npz.", 3)
    else:
        fill_disk_at(monkeypatch, (torch, "save"), 1, ".round002.ckpt.", 1)
    message = fails(tmp_path, *ARGS)
    assert f"could not write {tmp_path / victim}: No space left on device" in message
    assert_round_one_is_intact(tmp_path)


# -- numerical faults -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fused", ["true", "false"])  # skipped on the device / on the host
def test_a_nan_loss_is_skipped_without_touching_weights_ema_or_optimiser(fused, tmp_path):
    run_cli(tmp_path, *ARGS, "--model.ema_decay", "0.5", "--model.optimizer.fused", fused,
            callback("NaNLossAt", epoch=1, batch=1))
    assert json.loads((tmp_path / "skipped_rank0.json").read_text()) == {"unchanged": True}
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1, 2]
    last = load(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_with_gradient_accumulation_a_nan_loss_spoils_its_whole_update(tmp_path):
    # 2 batches an update: batch 0's NaN loss spoils the update made after batch 1.
    run_cli(tmp_path, *ARGS, "--model.ema_decay", "0.5", "--trainer.accumulate_grad_batches", "2",
            callback("NaNLossAt", epoch=1, batch=0, span=2))
    assert json.loads((tmp_path / "skipped_rank0.json").read_text()) == {"unchanged": True}
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1, 2]


@pytest.mark.slow
def test_under_ddp_a_nan_loss_on_one_rank_is_skipped_on_every_rank(tmp_path):
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--rounds.num_rounds", "2", "--rounds.steps", "2"]
    done = train_subprocess(tmp_path, *ddp, callback("NaNLossAt", epoch=1, batch=0, rank=1), callback("DumpWeights"))
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"skipped_rank{rank}.json").read_text()) == {"unchanged": True}
    weights = [load(tmp_path / f"weights_rank{rank}.pt") for rank in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1, 2]


def assert_stopped_for_bad_steps(message: str, at_least: int, epoch: int | None = None) -> None:
    """The run stopped for NaN losses: read from the device every few steps, the run may count more than the limit."""
    found = re.search(r"the training loss was NaN or infinite for (\d+) steps in a row \(by epoch (\d+), step \d+; "
                      rf"model.max_bad_steps is {at_least}\); stopped", message)
    assert found, message[-2000:]
    assert int(found[1]) >= at_least and epoch in (None, int(found[2]))


@pytest.mark.slow
def test_nan_losses_in_a_row_stop_the_run_and_keep_round_one(tmp_path):
    message = fails(tmp_path, *ARGS, "--model.max_bad_steps", "2", callback("PoisonWeights", epoch=1))
    assert_stopped_for_bad_steps(message, at_least=2, epoch=1)
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]
    assert_round_one_is_intact(tmp_path)


@pytest.mark.slow
def test_under_ddp_nan_losses_on_one_rank_stop_every_rank_and_keep_round_one(tmp_path):
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--rounds.num_rounds", "2", "--rounds.steps", "2", "--model.max_bad_steps", "2"]
    done = train_subprocess(tmp_path, *ddp, callback("PoisonWeights", epoch=1, rank=1))
    assert done.returncode != 0
    assert_stopped_for_bad_steps(done.stderr, at_least=2, epoch=1)
    assert_round_one_is_intact(tmp_path)


def test_a_huge_learning_rate_stops_before_any_checkpoint(tmp_path):
    message = fails(tmp_path, *ARGS, "--model.optimizer.lr", "1e30")
    assert_stopped_for_bad_steps(message, at_least=3)
    assert "Lower model.optimizer.lr" in message
    assert [r["round"] for r in read_rounds(tmp_path)] == [0]
    assert checkpoint_names(tmp_path) == set()


@pytest.mark.slow
def test_a_nan_ode_solve_never_replaces_the_collection(tmp_path):
    message = fails(tmp_path, *ARGS, callback("NaNVelocity", epoch=1))
    assert "the ODE solve gave NaN or infinite values" in message
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]
    assert_round_one_is_intact(tmp_path)


@pytest.mark.slow
def test_nan_weights_are_never_checkpointed(tmp_path):
    message = fails(tmp_path, *ARGS, callback("PoisonWeightsAtRoundEnd", epoch=1))
    assert "holds NaN or infinite values: no checkpoint written (the last one on disk is kept)" in message
    assert_round_one_is_intact(tmp_path)


# -- disk -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["under_a_file", "read_only"])
def test_an_unwritable_output_folder_is_named_before_training(how, tmp_path):
    if how == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        run = tmp_path / "ro"
        run.mkdir()
        run.chmod(0o555)
    else:
        (tmp_path / "file").write_text("not a folder")
        run = tmp_path / "file" / "run"
    message = fails(run, *ARGS)
    assert f"trainer.default_root_dir {run} is not a writable folder" in message
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("rounds.jsonl"))


def test_a_full_disk_is_named_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", no_space)
    message = fails(tmp_path / "run", *ARGS)
    assert f"trainer.default_root_dir {tmp_path / 'run'} is not a writable folder: No space left on device" in message
    assert not (tmp_path / "run" / "rounds.jsonl").exists()


# -- checkpoints from elsewhere -------------------------------------------


def written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def edited(reference: Path, tmp_path: Path, edit, name: str = "last.ckpt") -> Path:
    """The reference run's checkpoint `name` with `edit` applied."""
    data = load(reference / "checkpoints" / name)
    edit(data)
    torch.save(data, tmp_path / "edited.ckpt")
    return tmp_path / "edited.ckpt"


def plain_tensors(reference: Path, tmp_path: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, tmp_path / "weights.pt")
    return tmp_path / "weights.pt"


UNREADABLE = "is not a readable miri-lightning checkpoint (truncated or another format)"
# kind: (make(reference run, folder) -> the file, what the message says about it, whether it needs the reference run)
BAD_CHECKPOINTS = {
    "missing": (lambda ref, tmp: tmp / "nowhere.ckpt", "does not exist", False),
    "text": (lambda ref, tmp: written(tmp / "notes.ckpt", b"hello"), UNREADABLE, False),
    "truncated": (lambda ref, tmp: written(tmp / "cut.ckpt", (ref / "checkpoints" / "last.ckpt").read_bytes()[:50000]),
                  UNREADABLE, True),
    "not_lightning": (plain_tensors, "is not a miri-lightning checkpoint: it is not a Lightning checkpoint at all",
                      False),
    "other_program": (lambda ref, tmp: edited(ref, tmp, lambda d: d.pop("miri")),
                      "is not a miri-lightning checkpoint: a Lightning checkpoint of another program", True),
    "other_format": (lambda ref, tmp: edited(ref, tmp, lambda d: d["miri"].update(format=99)),
                     "is miri-lightning checkpoint format 99; this version of miri-lightning reads formats 1 "
                     f"and {CHECKPOINT_FORMAT}", True),
    "other_network": (lambda ref, tmp: edited(ref, tmp, lambda d: d["hyper_parameters"]["net"].update(width=16)),
                      "holds a network with model.net", True),
    "epoch_counted_rounds": (lambda ref, tmp: edited(ref, tmp, lambda d: d["miri"].update(format=1)),
                             "was written when a round was counted in epochs", True),
    "rounds_disagree": (lambda ref, tmp: edited(ref, tmp, lambda d: d["miri"]["round_weights"].pop()),
                        "holds the weights of 1 rounds, but its imputations are those of round 2", True),
}


# Those made from the reference run's checkpoint wait for that run: slow; the others are not.
@pytest.mark.parametrize("kind", [pytest.param(kind, marks=[pytest.mark.slow] if needs_run else [])
                                  for kind, (_, _, needs_run) in BAD_CHECKPOINTS.items()])
def test_a_checkpoint_from_elsewhere_is_named_before_training(kind, request, tmp_path):
    make, expected, needs_run = BAD_CHECKPOINTS[kind]
    path = make(request.getfixturevalue("reference") if needs_run else None, tmp_path)
    message = fails(tmp_path / "run", *ARGS, "--ckpt_path", str(path))
    assert str(path) in message and expected in message
    assert not (tmp_path / "run" / "rounds.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_checkpoints_record_their_format_and_load_without_pickled_code(reference):
    assert load(reference / "checkpoints" / "round001.ckpt")["miri"]["format"] == CHECKPOINT_FORMAT


@pytest.mark.slow
def test_a_format_1_checkpoint_of_step_counted_rounds_resumes_to_the_uninterrupted_result(reference, tmp_path):
    # What train.py wrote until 2026-12-08: format 1 (or no format recorded), marked as counting rounds in steps.
    path = edited(reference, tmp_path, lambda d: (d["miri"].pop("format"), d["miri"].update(epoch_is_round=True)),
                  name="round001.ckpt")
    run = run_cli(tmp_path / "run", *ARGS, "--ckpt_path", str(path))
    assert [r["round"] for r in read_rounds(run)] == [2]  # round 2 was trained and solved after the resume
    assert_same_result(run, reference, rounds=(2,))


# -- bad config -----------------------------------------------------------


@pytest.mark.parametrize("overrides, key", [
    (["--model.no_such_key", "1"], "--model.no_such_key"),
    (["--model.lr", "1e-3"], "model.lr is now model.optimizer.lr"),
    (["--data.fill_keep", "0.7"], "data.fill_keep is now data.fill.keep"),
    (["--model.optimizer.lr", "abc"], '"model.optimizer.lr"'),
    (["--model.net.width", "abc"], '"model.net.width"'),
    (["--rounds.steps", "x"], '"rounds.steps"'),
    (["--model.max_bad_steps", "0"], "model.max_bad_steps must be >= 1, got 0"),
    (["--model.optimizer.final_lr_ratio", "0"], "model.optimizer.final_lr_ratio must be in (0, 1], got 0.0"),
    (["--rounds.steps", "4", "--rounds.min_steps", "8"], "rounds.min_steps must be between 1 and rounds.steps (4)"),
    (["--rounds.min_steps", "4"], "set data.val_fraction"),
    (["--model.train_crop", "7"], "model.train_crop must be a multiple of 2"),
    (["--data.fill.kind", "noise", "--data.fill.noise", "0.1"], "data.fill.noise adds noise to the mean"),
    (["--data.fill.kind", "mean", "--data.fill.keep", "0.5"], "data.fill.keep thins the observed entries"),
    (["--data.fill.kind", "interpolation", "--data.fill.keep", "0"], "data.fill.keep must be in (0, 1]"),
    (["--data.fill.kind", "interpolation", "--data.fill.noise_scale", "0.5"], "data.fill.noise_scale scales what"),
    (["--data.mask.init_args.missing_rate", "1.5"], "data.mask.missing_rate (MCAR) must be in [0, 1), got 1.5"),
], ids=["unknown_key", "renamed_key", "renamed_fill_key", "wrong_type", "wrong_type_in_net", "wrong_type_nested", "bad_value", "bad_optimizer_value",
        "min_steps_above_steps", "min_steps_without_held_out", "train_crop_odd", "fill_noise_on_noise",
        "fill_keep_on_mean", "fill_keep_zero", "fill_noise_scale_without_auto", "missing_rate"])
def test_a_bad_config_is_one_short_line_naming_the_key(overrides, key, tmp_path):
    message = fails(tmp_path / "run", *overrides)
    assert key in message and len(message) < 200
    assert not (tmp_path / "run" / "rounds.jsonl").exists()


def test_a_copy_of_a_finished_file_keeps_its_content_when_the_original_is_replaced(tmp_path, monkeypatch):
    from miri_lightning.io import publish_copy, save_imputations

    images, masks = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4) > 0.5
    save_imputations(tmp_path / "latest.npz", images, masks, round=1)
    publish_copy(tmp_path / "latest.npz", tmp_path / "best.npz")
    save_imputations(tmp_path / "latest.npz", images + 1, masks, round=2)  # the next round, not better
    with np.load(tmp_path / "best.npz") as best:
        assert int(best["round"]) == 1 and np.array_equal(best["images"], images.permute(0, 2, 3, 1).numpy())
    monkeypatch.setattr("os.link", lambda *args: (_ for _ in ()).throw(OSError(1, "Operation not permitted")))
    publish_copy(tmp_path / "latest.npz", tmp_path / "best.npz")  # a file system without hard links
    assert (tmp_path / "best.npz").read_bytes() == (tmp_path / "latest.npz").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "latest.npz"]
