"""`miri-distill`: a one-pass student of a run's chain, loaded and used like a checkpoint."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from miri_lightning.data.masks import MCAR
from miri_lightning.data.sources import Shapes
from miri_lightning.distill import DistillConfig, Student, distill, main as distill_main
from miri_lightning.errors import ConfigError, DataError
from miri_lightning.impute_cli import main as impute_main
from miri_lightning.inference import MIRIImputer
from miri_lightning.runs import read_rounds

pytestmark = pytest.mark.slow
FAST = DistillConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, pairs_per_image=1, save_every=20)


@pytest.fixture(scope="module")
def run(trained_run) -> Path:
    return trained_run


@pytest.fixture(scope="module")
def one_pass(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distilled") / "one_pass.pt"
    distill(run, out, FAST, progress=False)
    return out


@pytest.fixture(scope="module")
def new_images():
    images = Shapes(num_images=12, image_size=16, seed=7).load().images
    return images, MCAR(missing_rate=0.6, seed=3)(images)[:, :1]


def rms(a: torch.Tensor, b: torch.Tensor, missing: torch.Tensor) -> float:
    return float((a - b)[missing].square().mean().sqrt())


def test_the_student_imputes_in_one_pass_what_the_chain_does_from_the_same_fill(run, one_pass, new_images):
    images, masks = new_images
    chain = MIRIImputer.load(run / "checkpoints" / "last.ckpt")
    student = MIRIImputer.load(one_pass)
    assert student.kind == "one_pass" and len(student.round_weights) == 1 and student.solver.steps == 1
    assert "one-pass imputer (distilled from" in student.describe() and "chain of 2 rounds" in chain.describe()
    fill = chain.initial_fill(images, masks.expand_as(images).bool(), seed=5)
    assert torch.equal(student.initial_fill(images, masks.expand_as(images).bool(), seed=5), fill)
    target = chain.impute(images, masks, seed=5)
    out = student.impute(images, masks, seed=5)
    missing = ~masks.expand_as(images).bool()
    # Images it never saw: from the same fill it lands much nearer the chain's output than the fill is.
    assert rms(out, target, missing) < 0.5 * rms(fill, target, missing)
    assert torch.equal(out[~missing], images[~missing])  # observed entries bit for bit
    draws = student.impute(images, masks, seed=5, num_samples=3)
    assert torch.equal(draws[0], out) and not torch.equal(draws[1], draws[2])  # the fill's randomness remains
    with pytest.raises(DataError, match="one-pass imputer has no solver"):
        student.impute(images, masks, steps=4)


def test_the_runs_own_pairs_are_its_chain_solved_from_its_round_zero_fill(run, one_pass):
    chain = MIRIImputer.load(run / "checkpoints" / "last.ckpt")
    pairs = np.load(one_pass.with_name(one_pass.name + ".cache") / "pairs_run.npy")
    with np.load(run / "imputations_round0.npz") as start, np.load(run / "imputations.npz") as last:
        fill = torch.from_numpy(start["images"]).permute(0, 3, 1, 2)
        masks = torch.from_numpy(start["masks"]).permute(0, 3, 1, 2).bool()
        assert int(start["round"]) == 0 and np.array_equal(start["masks"], last["masks"])
    assert torch.equal(torch.from_numpy(pairs[:, 0]), fill)
    # Replaying v_1 ... v_T on the saved fill gives the saved last round: the pair is the chain's, unsolved here.
    chain.initial_fill = lambda images, masks, seed: fill  # start from the run's own round 0
    replayed = chain.impute(fill, masks)
    torch.testing.assert_close(torch.from_numpy(pairs[:, 1]), replayed, atol=1e-5, rtol=0)
    assert not torch.allclose(fill, replayed)


def test_a_killed_distillation_resumes_to_the_uninterrupted_result(run, one_pass, tmp_path, monkeypatch):
    step = Student.train_step

    def dies_at_step_30(self, *args):
        if self.step == 30:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(Student, "train_step", dies_at_step_30)
    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        distill(run, out, FAST, progress=False)
    assert not out.exists() and (tmp_path / "resumed.pt.cache" / "state.pt").is_file()
    monkeypatch.setattr(Student, "train_step", step)
    distill(run, out, FAST, progress=False)  # from the state saved at step 20, with the cached pairs
    resumed, whole = (torch.load(p, weights_only=True)["round_weights"][0] for p in (out, one_pass))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    # Other settings do not silently mix with a saved state.
    with pytest.raises(DataError, match="other distillation settings"):
        distill(run, out, DistillConfig(**{**FAST.__dict__, "steps": 80}), progress=False)


def test_miri_impute_takes_the_one_pass_file_with_draws_and_their_mean(one_pass, new_images, tmp_path, capsys):
    images, masks = new_images
    np.savez(tmp_path / "new.npz", images=images.permute(0, 2, 3, 1).numpy(),
             masks=masks.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    impute_main([str(one_pass), "--npz", str(tmp_path / "new.npz"), "--num-samples", "3", "--mean",
                 "--uncertainty", "--out", str(tmp_path / "out.npz")])
    assert "loaded a one-pass imputer" in capsys.readouterr().out
    with np.load(tmp_path / "out.npz") as out:
        mean = torch.from_numpy(out["images"]).permute(0, 3, 1, 2)
        assert out["std"].max() > 0
    draws = MIRIImputer.load(one_pass).impute(images, masks, num_samples=3)
    torch.testing.assert_close(mean, draws.mean(0))


def test_bad_settings_and_inputs_are_named(run, tmp_path, capsys):
    with pytest.raises(ConfigError, match="distill.steps must be >= 1"):
        DistillConfig(steps=0)
    with pytest.raises(ConfigError, match="needs pairs: set distill.run_pairs true or distill.pairs_per_image"):
        DistillConfig(run_pairs=False, pairs_per_image=0)
    with pytest.raises(SystemExit, match="round 2's imputations, the checkpoint a chain of 1 rounds"):
        distill_main([str(run / "checkpoints" / "round001.ckpt"), "--out", str(tmp_path / "x.pt")])
    older = tmp_path / "older_run"
    shutil.copytree(run, older)
    (older / "imputations_round0.npz").unlink()  # a run from before round 0's fill was kept
    with pytest.raises(SystemExit, match="imputations_round0.npz does not exist: .* distill.pairs_per_image >= 1"):
        distill_main([str(older), "--out", str(tmp_path / "x.pt")])
    # As the message says: fresh pairs alone need no round-0 file.
    distill(older, tmp_path / "fresh.pt", DistillConfig(**{**FAST.__dict__, "run_pairs": False}), progress=False)
    assert (tmp_path / "fresh.pt").is_file() and not (tmp_path / "fresh.pt.cache" / "pairs_run.npy").exists()
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "last.ckpt", empty / "checkpoints" / "last.ckpt")  # a run without its images
    with pytest.raises(SystemExit, match="imputations.npz does not exist: give the images"):
        distill_main([str(empty), "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="does not exist: give a train.py run folder"):
        distill_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="init"):
        distill_main([str(run), "--out", str(tmp_path / "x.pt"), "--distill.init", "middle"])


def test_the_command_reports_its_training_time_beside_the_runs_rounds(run, tmp_path, capsys):
    distill_main([str(run), "--out", str(tmp_path / "s.pt"), "--distill.steps", "3", "--distill.batch_size", "4"])
    seconds = [r["train_seconds"] for r in read_rounds(run)[1:]]
    assert len(seconds) == 2
    assert f"(the run's rounds trained {min(seconds):.0f} to {max(seconds):.0f} s)" in capsys.readouterr().out
    assert MIRIImputer.load(tmp_path / "s.pt").kind == "one_pass"
