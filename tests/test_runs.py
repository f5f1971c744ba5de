"""A run folder read back (its checkpoints by name, its rounds, its data module, a round's imputations) and
training in a child process, as the benchmark scripts use them."""

import pytest
import torch

from conftest import TINY, read_imputations, run_cli
from miri_lightning.checkpoints import data_state, read_checkpoint, run_checkpoint
from miri_lightning.errors import DataError, TrainingError
from miri_lightning.inference import MIRIImputer
from miri_lightning.runs import imputations_after, read_rounds, run_datamodule, saved_rounds, short_rounds, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # A fill other than the default noise: a checkpoint read without its datamodule state would fill by noise.
    return run_cli(tmp_path_factory.mktemp("runs") / "run", "--rounds.num_rounds", "2", "--rounds.steps", "4",
                   "--data.fill.kind", "interpolation", "--data.fill.sigma", "0.4")


def test_run_checkpoint_names_the_files_train_py_writes(run, tmp_path):
    written = sorted((run / "checkpoints").iterdir())
    assert written == sorted([run_checkpoint(run, 1), run_checkpoint(run, 2), run_checkpoint(run)])
    assert run_checkpoint(run, 2).name == "round002.ckpt" and run_checkpoint(run).name == "last.ckpt"
    assert saved_rounds(run) == [1, 2]
    assert saved_rounds(tmp_path) == []


def test_read_rounds_gives_every_round_in_order(run, tmp_path):
    rounds = read_rounds(run)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["mmd"] > 0 for r in rounds)
    assert read_rounds(tmp_path) == []  # a run that has not finished round 0


def test_the_datamodule_state_is_found_without_the_class_name(run, tmp_path):
    path = run_checkpoint(run)
    data = read_checkpoint(path)
    state = data_state(data, path)
    assert state is data["MaskedImageDataModule"] and state["round"] == 2
    # A subclass of the datamodule (or a renamed one) files its state under another name: still found.
    data["MyDataModule"] = data.pop("MaskedImageDataModule")
    torch.save(data, tmp_path / "renamed.ckpt")
    assert data_state(read_checkpoint(tmp_path / "renamed.ckpt"), "renamed")["round"] == 2
    renamed, original = MIRIImputer.load(tmp_path / "renamed.ckpt"), MIRIImputer.load(path)
    assert original.fill.kind == "interpolation" and original.fill.sigma == 0.4
    assert renamed.fill.state() == original.fill.state() and len(renamed.round_weights) == 2
    del data["MyDataModule"]
    torch.save(data, tmp_path / "stateless.ckpt")
    with pytest.raises(DataError, match="stateless.ckpt is not a miri-lightning checkpoint: it holds 0"):
        MIRIImputer.load(tmp_path / "stateless.ckpt")


def test_a_run_is_rebuilt_from_its_folder_without_writing_into_it(run):
    before = sorted(run.rglob("*"))
    dm = run_datamodule(run)
    assert sorted(run.rglob("*")) == before
    assert dm.masks_sha1 == data_state(read_checkpoint(run_checkpoint(run)), "last")["masks_sha1"]
    assert imputations_after(run, 0, dm) is dm.imputations
    last, masks = read_imputations(run)  # the run's final imputations: round 2's
    assert torch.equal(imputations_after(run, 2, dm), last) and torch.equal(dm.masks.bool(), masks)
    assert not torch.equal(imputations_after(run, 1, dm), last)


def test_a_round_of_other_masks_or_another_folder_is_refused(run, tmp_path):
    dm = run_datamodule(run)
    dm.masks_sha1 = "0" * 40
    with pytest.raises(DataError, match="round001.ckpt: its masks differ from those rebuilt"):
        imputations_after(run, 1, dm)
    with pytest.raises(DataError, match="holds no config.yaml"):
        run_datamodule(tmp_path)


CONFIG, OVERRIDES = TINY[1], [*TINY[2:], "--trainer.accelerator", "cpu"]


@pytest.mark.slow  # a child Python process that imports torch and Lightning: seconds
def test_train_runs_in_a_child_process_and_returns_its_rounds(tmp_path):
    rounds = train(CONFIG, [*OVERRIDES, *short_rounds(3, 1)], profile=tmp_path / "train.prof")
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["steps"] == 3
    assert (tmp_path / "train.prof").stat().st_size > 0
    assert train(CONFIG, OVERRIDES, timeout=0.01) == []  # stopped before round 0: no rounds, no error


@pytest.mark.slow  # a child Python process that imports torch and Lightning: seconds
def test_a_failed_training_names_its_config_and_says_why():
    with pytest.raises(TrainingError, match=r"(?s)train.py failed for .*quickstart.yaml.*model.optimizer.lr"):
        train(CONFIG, [*OVERRIDES, "--model.optimizer.lr", "fast"])
