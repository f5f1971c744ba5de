"""A round's length in optimiser steps, its end by a held-out loss, and what a round that made things worse does."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import read_rounds, run_cli
from miri_lightning.callbacks.reporting import RoundReport
from miri_lightning.callbacks.rounds import Convergence, verdict
from miri_lightning.callbacks.scoring import RoundScorer
from miri_lightning.data.batches import RoundSampler
from miri_lightning.data.datamodule import MaskedImageDataModule
from miri_lightning.data.sources import Shapes
from miri_lightning.metrics import information_rose
from miri_lightning.module import MIRI

# A smooth start (little mask information) and a classifier trained long enough to see noise poured into it.
SMOOTH = ["--data.fill.kind", "interpolation", "--rounds.mi_steps", "150", "--rounds.mi_seeds", "2"]


def checkpoint_step(run_dir) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_a_round_is_the_same_number_of_steps_at_two_collection_sizes(tmp_path):
    for n in (48, 160):  # 3 and 10 batches of 16 a pass
        run = run_cli(tmp_path / str(n), "--data.source.init_args.num_images", str(n), "--rounds.num_rounds", "2",
                      "--rounds.steps", "7", "--rounds.mi_steps", "0")
        assert [r.get("steps") for r in read_rounds(run)] == [None, 7, 7]
        assert checkpoint_step(run) == 14


def test_steps_count_optimiser_steps_under_gradient_accumulation(tmp_path):
    run = run_cli(tmp_path, "--rounds.num_rounds", "1", "--rounds.steps", "3", "--rounds.mi_steps", "0",
                  "--trainer.accumulate_grad_batches", "2")
    assert read_rounds(run)[1]["steps"] == 3 and checkpoint_step(run) == 3


def test_the_sampler_draws_what_is_asked_from_the_training_images_only():
    pool = torch.tensor([0, 2, 3, 5, 7, 8, 9])
    ranks = [RoundSampler(pool, world=2, rank=r, seed=1) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(4)
    drawn = [list(itertools.islice(sampler, 10)) for sampler in ranks]
    assert [len(d) for d in drawn] == [10, 10]
    stream = [i for pair in zip(*drawn) for i in pair]
    # Whole passes, shared out by position also across a pass's end (7 images, 2 ranks).
    assert sorted(stream[:7]) == sorted(stream[7:14]) == pool.tolist() and stream[:7] != stream[7:14]
    ranks[0].set_epoch(5)
    assert list(itertools.islice(ranks[0], 10)) != drawn[0]


def test_held_out_images_are_not_trained_on_but_are_reimputed():
    dm = MaskedImageDataModule(Shapes(num_images=40, image_size=8, seed=0), batch_size=4, val_fraction=0.25)
    dm.setup()
    held = set(dm.val_indices.tolist())
    assert len(held) == 10 and not held & set(dm.train_indices.tolist())
    seen = torch.cat([idx for idx, _, _ in itertools.islice(dm.train_dataloader(), 30)])
    assert len(seen) == 120 and not held & set(seen.tolist())
    images, masks = dm.validation_images()
    assert torch.equal(images, dm.imputations[dm.val_indices]) and torch.equal(masks, dm.masks[dm.val_indices])


@pytest.mark.slow
def test_a_round_ends_early_once_the_held_out_loss_stops_falling_and_logs_it(tmp_path):
    # Needing a halving of the loss at every check, a round stops at its minimum length.
    run = run_cli(tmp_path, "--rounds.num_rounds", "2", "--rounds.steps", "40", "--rounds.min_steps", "4",
                  "--rounds.val_every_n_steps", "2", "--rounds.patience", "1", "--rounds.min_improvement", "0.5",
                  "--data.val_fraction", "0.25", "--rounds.mi_steps", "0")
    rounds = read_rounds(run)
    assert [r["steps"] for r in rounds[1:]] == [4, 4]
    assert [step for step, _ in rounds[1]["val_curve"]] == [2, 4]
    assert all(loss > 0 for _, loss in rounds[1]["val_curve"])
    assert checkpoint_step(run) == 8
    logged = (run / "csv").rglob("metrics.csv")
    assert any("val/loss" in path.read_text().splitlines()[0] for path in logged)


def test_a_round_runs_its_full_length_while_the_held_out_loss_falls(tmp_path):
    run = run_cli(tmp_path, "--rounds.num_rounds", "1", "--rounds.steps", "6", "--rounds.min_steps", "2",
                  "--rounds.val_every_n_steps", "2", "--rounds.patience", "5", "--data.val_fraction", "0.25",
                  "--rounds.mi_steps", "0")
    assert read_rounds(run)[1]["steps"] == 6


def test_a_spike_in_the_held_out_loss_is_not_convergence(tmp_path, monkeypatch):
    losses = iter([0.01] + [0.1] * 20)  # the loss jumps tenfold after the first check and stays there
    monkeypatch.setattr(MIRI, "heldout_loss", lambda self, images, masks, batch_size: next(losses))
    run = run_cli(tmp_path, "--rounds.num_rounds", "1", "--rounds.steps", "8", "--rounds.min_steps", "2",
                  "--rounds.val_every_n_steps", "1", "--rounds.patience", "2", "--data.val_fraction", "0.25",
                  "--rounds.mi_steps", "0")
    assert read_rounds(run)[1]["steps"] == 8  # without the spike rule it would have ended at step 3


def spoil(monkeypatch, calls: set):
    """Replace the solve: the listed calls (1 = the first) pour uniform noise into the missing entries, the
    others leave the imputations as they were (so that only the spoilt rounds can read as worse)."""
    count = [0]

    def impute(self, images, masks, batch_size=256):
        count[0] += 1
        if count[0] not in calls:
            return images.clone()
        return torch.where(masks, images, torch.rand(images.shape, generator=torch.Generator().manual_seed(count[0])))

    monkeypatch.setattr(MIRI, "impute", impute)


@pytest.mark.slow
def test_warn_flags_a_round_made_worse_on_purpose(tmp_path, monkeypatch, recwarn):
    spoil(monkeypatch, {1})
    run = run_cli(tmp_path, "--rounds.num_rounds", "2", "--rounds.steps", "4", *SMOOTH)
    rounds = read_rounds(run)
    assert rounds[1]["worse"] and rounds[1]["mutual_information"] > rounds[0]["mutual_information"] + 0.05
    assert any("more detectable" in str(w.message) for w in recwarn)
    assert [r["best_round"] for r in rounds] == [0, 0, 0]


@pytest.mark.slow
def test_retry_discards_a_worse_round_and_trains_it_longer(tmp_path, monkeypatch):
    spoil(monkeypatch, {1})
    run = run_cli(tmp_path, "--rounds.num_rounds", "1", "--rounds.steps", "4", "--rounds.on_worse", "retry",
                  "--rounds.max_retries", "2", *SMOOTH)
    rounds = read_rounds(run)
    assert rounds[1]["retries"] == 1 and rounds[1]["steps"] == 8 and not rounds[1]["worse"]
    [spoilt] = rounds[1]["discarded"]  # the discarded try's metrics stay on record
    assert spoilt["mutual_information"] > rounds[0]["mutual_information"] + 0.05 and spoilt["psnr"] < rounds[0]["psnr"]
    assert rounds[1]["mutual_information"] == rounds[0]["mutual_information"]  # the second try's result
    assert checkpoint_step(run) == 8
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == ["last.ckpt", "round001.ckpt"]


@pytest.mark.slow
def test_retries_are_bounded(tmp_path, monkeypatch):
    spoil(monkeypatch, {1, 2, 3})
    run = run_cli(tmp_path, "--rounds.num_rounds", "1", "--rounds.steps", "2", "--rounds.on_worse", "retry",
                  "--rounds.max_retries", "2", *SMOOTH)
    last = read_rounds(run)[1]
    assert last["retries"] == 2 and last["worse"] and last["steps"] == 6  # kept, flagged, after 3 tries


@pytest.mark.slow
def test_stop_ends_the_run_and_the_best_round_is_kept_beside_the_latest(tmp_path, monkeypatch):
    spoil(monkeypatch, {1})
    run = run_cli(tmp_path, "--rounds.num_rounds", "3", "--rounds.steps", "4", "--rounds.on_worse", "stop", *SMOOTH)
    rounds = read_rounds(run)
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["worse"] and rounds[1]["best_round"] == 0
    with np.load(run / "imputations_best.npz") as best, np.load(run / "imputations.npz") as latest:
        assert int(best["round"]) == 0 and int(latest["round"]) == 1
        assert not np.array_equal(best["images"], latest["images"])


def test_a_rise_within_the_estimates_spread_is_not_worse():
    before = {"mutual_information": 0.10, "mutual_information_se": 0.01}
    assert not information_rose(before, {"mutual_information": 0.12, "mutual_information_se": 0.01})
    assert information_rose(before, {"mutual_information": 0.14, "mutual_information_se": 0.01})
    assert information_rose({"mutual_information": 0.1}, {"mutual_information": 0.1001})  # one seed: any rise
    assert not information_rose(None, {"mutual_information": 1.0})  # round 0 has nothing to compare with


def test_convergence_needs_the_minimum_steps_a_plateau_and_no_spike():
    rule = Convergence(min_steps=30, patience=2, min_improvement=0.01)
    assert [rule.update(steps, loss) for steps, loss in [(10, 1.0), (20, 0.995), (30, 0.999)]] == [False, False, True]
    early = Convergence(min_steps=50, patience=2, min_improvement=0.01)
    assert not any(early.update(steps, loss) for steps, loss in [(10, 1.0), (20, 1.0), (30, 1.0), (40, 1.0)])
    falling = Convergence(min_steps=0, patience=2, min_improvement=0.01)
    assert not any(falling.update(steps, 1.0 - steps / 100) for steps in range(10, 90, 10))
    spike = Convergence(min_steps=0, patience=2, min_improvement=0.01)
    assert [spike.update(s, loss) for s, loss in [(10, 1.0), (20, 10.0), (30, 10.0), (40, 1.2)]] == [
        False, False, False, True]  # stale for three checks, but a plateau only once back under 1.5x the best


@pytest.mark.parametrize("worse, on_worse, retries, expected", [
    (False, "retry", 0, "keep"), (False, "stop", 0, "keep"), (True, "warn", 0, "keep"),
    (True, "retry", 0, "retry"), (True, "retry", 1, "keep"), (True, "stop", 0, "stop"),
])
def test_a_worse_round_is_retried_while_retries_last_or_stops_the_run(worse, on_worse, retries, expected):
    assert verdict(worse, on_worse, retries, max_retries=1) == expected


def test_the_scorer_ranks_imputations_by_their_distance_from_the_truth_on_its_first_images():
    truth = Shapes(num_images=12, image_size=8, seed=0).load().images
    masks = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    noisy = torch.where(masks, truth, torch.rand(truth.shape, generator=torch.Generator().manual_seed(1)))
    score = RoundScorer(metrics_max_images=8, mi_steps=0, mi_seeds=1, fid_images=0, fid_all=True)
    exact, rough = score(truth, masks, truth, torch.device("cpu"), last=True), score(noisy, masks, truth,
                                                                                       torch.device("cpu"), last=True)
    assert exact["rmse"] == 0 and rough["rmse"] > 0.1 and rough["mmd"] > exact["mmd"]
    assert "fid" not in rough  # fid_images 0: no InceptionV3
    beyond = torch.where(torch.arange(12)[:, None, None, None] < 8, truth, noisy)  # wrong only past the 8th
    assert score(beyond, masks, truth, torch.device("cpu"), last=False)["rmse"] == 0


def test_a_kept_round_leaves_its_files_round_zero_and_the_best_round_their_copies(tmp_path):
    dm = MaskedImageDataModule(Shapes(num_images=6, image_size=8, seed=0), batch_size=2)
    dm.setup()
    trainer = SimpleNamespace(datamodule=dm, loggers=[], global_step=0)
    report = RoundReport(grid_images=3, grid_draws=0)
    report(tmp_path, trainer, None, {"round": 0, "mutual_information": 0.2}, best=True)
    dm.next_round(torch.where(dm.masks, dm.imputations, torch.full_like(dm.imputations, 0.5)))
    report(tmp_path, trainer, None, {"round": 1, "mutual_information": 0.3}, best=False)
    with np.load(tmp_path / "imputations.npz") as last, np.load(tmp_path / "imputations_round0.npz") as start, \
            np.load(tmp_path / "imputations_best.npz") as best:
        assert int(last["round"]) == 1 and int(start["round"]) == int(best["round"]) == 0
        assert np.array_equal(start["images"], best["images"]) and not np.array_equal(start["images"], last["images"])
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["round_000.png", "round_001.png"]
