"""End to end through the command line: rounds, outputs, checkpoints, resume, loggers, config errors."""

import csv
import json
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, TINY, TWO_ROUNDS, HostReads, read_imputations, read_rounds, run_cli
from miri_lightning.cli import MIRICLI, build_cli, main
from miri_lightning.data.datamodule import MaskedImageDataModule
from miri_lightning.data.masks import MCAR
from miri_lightning.data.sources import Shapes
from miri_lightning.flow import random_window
from miri_lightning.module import MIRI

@pytest.fixture
def two_round_run(trained_run) -> Path:
    return trained_run


@pytest.mark.slow
def test_two_rounds_write_every_output(two_round_run):
    rounds = read_rounds(two_round_run)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for key in ("mmd", "psnr", "rmse", "ssim", "systematic_error", "mutual_information", "train_seconds",
                "impute_seconds"):
        assert all(key in r for r in rounds)
    for r in rounds[1:]:  # 64 images, 4 epochs of training and one solve a round
        assert r["train_images_per_second"] == pytest.approx(4 * 64 / r["train_seconds"])
        assert r["impute_images_per_second"] == pytest.approx(64 / r["impute_seconds"])
        assert 0 < r["peak_memory_gb"] < 1000
    assert sorted(p.name for p in (two_round_run / "grids").iterdir()) == [f"round_00{r}.png" for r in range(3)]
    for name in ("imputations.npz", "imputations_best.npz"):
        with np.load(two_round_run / name) as saved:
            assert saved["images"].shape == (64, 16, 16, 3) and int(saved["round"]) <= 2
    ckpts = two_round_run / "checkpoints"
    assert {p.name for p in ckpts.glob("*.ckpt")} == {"round001.ckpt", "round002.ckpt", "last.ckpt"}
    assert (two_round_run / "csv" / "two_rounds" / "metrics.csv").is_file()


@pytest.mark.slow
def test_observed_entries_are_the_data_bit_for_bit(two_round_run):
    truth = Shapes(num_images=64, image_size=16, seed=0).load().images
    masks = MCAR(missing_rate=0.6, seed=0)(truth)
    imputed, saved_masks = read_imputations(two_round_run)
    assert torch.equal(saved_masks, masks)
    assert torch.equal(imputed[masks], truth[masks])
    assert imputed.min() >= 0 and imputed.max() <= 1


@pytest.mark.slow
def test_imputations_get_closer_to_the_truth_than_the_noise_fill(two_round_run):
    rounds = read_rounds(two_round_run)
    assert rounds[2]["psnr"] > rounds[0]["psnr"] + 0.5
    assert rounds[2]["mmd"] < rounds[0]["mmd"]


@pytest.mark.slow
def test_resume_from_round_one_continues_in_round_two_like_an_uninterrupted_run(two_round_run, tmp_path):
    ckpt = two_round_run / "checkpoints" / "round001.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["MaskedImageDataModule"]["round"] == 1
    resumed = run_cli(tmp_path / "resumed", *TWO_ROUNDS, "--ckpt_path", str(ckpt))
    assert [r["round"] for r in read_rounds(resumed)] == [2]
    assert torch.equal(read_imputations(resumed)[0], read_imputations(two_round_run)[0])
    final = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(final["miri"]["round_weights"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("restart", [["--rounds.reinit_each_round", "true"],
                                     ["--model.optimizer.restart_each_round", "true"]],
                         ids=["fresh_network", "fresh_optimizer"])
def test_a_round_that_restarts_also_resumes_exactly(restart, tmp_path):
    fresh = [*restart, "--rounds.num_rounds", "2", "--rounds.steps", "4"]
    full = run_cli(tmp_path / "full", *fresh)
    resumed = run_cli(tmp_path / "resumed", *fresh, "--ckpt_path", str(full / "checkpoints" / "round001.ckpt"))
    assert torch.equal(read_imputations(resumed)[0], read_imputations(full)[0])


# One round on TINY's 4 grid images: 5 rows (input, imputation, the noise fill's draws' mean and spread, truth) of
# 16x16 images with 2-pixel padding.
GRID_SHAPE = (5 * 16 + 6 * 2, 4 * 16 + 5 * 2, 3)


def grids_on_disk(run: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)).astype(int) for path in sorted((run / "grids").glob("round_*.png"))]


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as env:
        env.delenv("WANDB_API_KEY", raising=False)
        env.delenv("WANDB_MODE", raising=False)
        env.setenv("NETRC", str(tmp_path_factory.getbasetemp() / "no-netrc"))
        return run_cli(tmp_path_factory.mktemp("wb") / "run", "--logging.backend", "wandb", "--rounds.num_rounds",
                       "1", "--rounds.steps", "4")


def wandb_images(run: Path) -> list[np.ndarray]:
    """The images of the run's one offline W&B run, in the order logged (`imputations_<W&B step>_<hash>.png`)."""
    [offline] = (run / "wandb").glob("offline-run-*")
    files = sorted(offline.glob("files/media/images/imputations_*.png"), key=lambda p: int(p.name.split("_")[1]))
    return [np.asarray(Image.open(path)).astype(int) for path in files]


@pytest.mark.slow
def test_wandb_offline_run_holds_a_grid_of_each_round_shaped_as_on_disk(wandb_run):
    logged, on_disk = wandb_images(wandb_run), grids_on_disk(wandb_run)
    assert len(logged) == len(on_disk) == 2  # rounds 0 and 1
    assert all(image.shape == GRID_SHAPE for image in [*logged, *on_disk])


@pytest.mark.slow
def test_wandb_offline_run_holds_the_grids_as_written_to_disk(wandb_run):
    # The grid goes to W&B as 8-bit, as to the PNG: a float image in [0, 1] is not scaled by every wandb version.
    for image, on_disk in zip(wandb_images(wandb_run), grids_on_disk(wandb_run), strict=True):
        assert np.array_equal(image, on_disk)


def test_tensorboard_backend_logs_each_rounds_grid_as_written_to_disk(tmp_path):
    run = run_cli(tmp_path / "tb", "--logging.backend", "tensorboard", "--rounds.num_rounds", "1",
                  "--rounds.steps", "4")
    [folder] = {path.parent for path in (run / "tensorboard").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(folder), size_guidance={"images": 0})  # 0: keep every image logged
    events.Reload()
    logged = events.Images("imputations")
    assert [image.step for image in logged] == [0, 4]  # rounds 0 and 1, at the global step each ended
    for image, on_disk in zip(logged, grids_on_disk(run), strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string))).astype(int)
        assert (image.height, image.width) == GRID_SHAPE[:2] and pixels.shape == on_disk.shape == GRID_SHAPE
        assert np.abs(pixels - on_disk).max() <= 1  # TensorBoard truncates to 8 bits, the PNG file rounds


@pytest.mark.parametrize("limit", [["--trainer.max_epochs", "3"], ["--trainer.max_steps", "100"]])
def test_the_rounds_alone_set_how_long_a_run_trains(limit, tmp_path):
    with pytest.raises(SystemExit, match="the rounds set how long a run trains"):
        main([*TINY, "--trainer.default_root_dir", str(tmp_path), *limit])
    assert not (tmp_path / "rounds.jsonl").exists()


def masks_of(cli) -> torch.Tensor:
    dm = cli.datamodule
    dm.setup("fit")
    return dm.masks.clone()


def test_one_seed_reproduces_a_run_and_each_seed_can_still_be_set(tmp_path):
    def build(*args):
        return build_cli([*TINY, "--trainer.default_root_dir", str(tmp_path), *args])

    seven = build("--seed_everything", "7")
    assert (seven.model.hparams.seed, seven.datamodule.seed, seven.datamodule.mask.seed) == (7, 7, 7)
    assert torch.equal(masks_of(seven), masks_of(build("--seed_everything", "7")))
    assert not torch.equal(masks_of(seven), masks_of(build("--seed_everything", "8")))
    alone = build("--seed_everything", "7", "--model.seed", "3", "--data.mask.init_args.seed", "5")
    assert (alone.model.hparams.seed, alone.datamodule.seed, alone.datamodule.mask.seed) == (3, 7, 5)
    assert torch.equal(masks_of(alone), masks_of(build("--seed_everything", "5")))  # the masks follow their seed
    union = {"class_path": "miri_lightning.data.masks.AnyOf", "init_args": {"mechanisms": [
        {"class_path": "miri_lightning.data.masks.MCAR"}, {"class_path": "miri_lightning.data.masks.MCAR"}]}}
    parts = build("--seed_everything", "7", "--data.mask", json.dumps(union)).datamodule.mask.mechanisms
    assert [part.seed for part in parts] == [7, 8]  # two of a kind do not hide the same entries


# The shapes of what `miri-data` writes, under the names the CPU configs read.
DATA_FILES = {"cifar10_uint8.npz": (32, 32, 3), "mnist32_uint8.npz": (32, 32), "celeba64_uint8.npz": (64, 64, 3)}


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses_and_builds(config, tmp_path, monkeypatch):
    # The CPU configs read data/*.npz (what miri-data writes) relative to where train.py runs: small stand-ins.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name, shape in DATA_FILES.items():
        np.savez(tmp_path / "data" / name, images=np.zeros((8, *shape), np.uint8))
    cli = MIRICLI(MIRI, MaskedImageDataModule, run=False,
                  args=["--config", str(config), "--trainer.default_root_dir", str(tmp_path),
                        "--logging.backend", "csv", "--trainer.accelerator", "cpu"])
    assert isinstance(cli.model, MIRI) and isinstance(cli.datamodule, MaskedImageDataModule)
    assert cli.trainer.max_epochs == -1 and cli.trainer.max_steps == -1  # the rounds set them (MIRIRounds.setup)


@pytest.mark.slow
def test_memory_mapped_state_resumes_exactly_and_keeps_checkpoints_small(tmp_path):
    memmap = ["--data.state", "memmap", "--rounds.num_rounds", "2", "--rounds.steps", "4"]
    full = run_cli(tmp_path / "full", *memmap)
    ckpt = full / "checkpoints" / "round001.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["MaskedImageDataModule"]
    assert "imputations" not in state and state["imputations_file"] == "imputations_round001.npy"
    assert (full / "state" / "node0" / "imputations_round002.npy").is_file()
    resumed = run_cli(tmp_path / "resumed", *memmap, "--ckpt_path", str(ckpt))
    assert torch.equal(read_imputations(resumed)[0], read_imputations(full)[0])
    in_memory = run_cli(tmp_path / "in_memory", "--rounds.num_rounds", "2", "--rounds.steps", "4")
    assert torch.equal(read_imputations(in_memory)[0], read_imputations(full)[0])


@pytest.mark.slow
def test_cosine_learning_rate_ends_at_the_final_ratio(tmp_path):
    run_cli(tmp_path, "--model.optimizer.final_lr_ratio", "0.1", "--rounds.num_rounds", "2",
            "--rounds.steps", "4")
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["lr_schedulers"][0]
    assert state["_last_lr"][0] == pytest.approx(3e-3 * 0.1)  # 3e-3 is TINY's lr


class InputSides(Callback):
    """The image sides the trained network (not its EMA copy, which solves) is given."""

    def __init__(self):
        self.sides = set()

    def on_fit_start(self, trainer, pl_module):
        pl_module.velocity.register_forward_pre_hook(lambda module, args: self.sides.add(tuple(args[0].shape[-2:])))


def test_train_crop_trains_on_windows_and_imputes_whole_images(tmp_path):
    cli = build_cli([*TINY, "--trainer.default_root_dir", str(tmp_path), "--rounds.num_rounds", "1",
                     "--rounds.steps", "6", "--model.train_crop", "8", "--rounds.mi_steps", "0"])
    cli.trainer.callbacks.append(watch := InputSides())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert watch.sides == {(8, 8)}
    imputed, masks = read_imputations(tmp_path)
    assert imputed.shape[-2:] == (16, 16) and not torch.equal(imputed, cli.datamodule.truth)
    assert torch.equal(imputed[masks], cli.datamodule.truth[masks])


def test_training_windows_cover_the_image_edges_about_as_often_as_the_middle():
    x = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 1, 32, 32)  # each entry names its column
    seen = torch.zeros(32)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4000):
        window, _ = random_window(x, x, 8, generator)
        assert window.shape[-2:] == (8, 8)
        seen[window[0, 0, 0].long()] += 1
    assert seen.min() >= 0.45 * seen.max(), seen  # a corner drawn inside the image gives the edges 1/8


def test_windows_with_image_spanning_layers_warn(recwarn):
    net = {"width": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": []}
    with pytest.warns(UserWarning, match="model.train_crop 8 with model.net norm: group and mid_attention: true"):
        MIRI(net=net, train_crop=8, image_shape=(3, 16, 16))
    recwarn.clear()
    MIRI(net={**net, "norm": "pixel", "mid_attention": False}, train_crop=8, image_shape=(3, 16, 16))
    MIRI(net=net, image_shape=(3, 16, 16))  # whole images: the layers see in training what they see in the solve
    assert not [w for w in recwarn if "train_crop" in str(w.message)]


def test_channels_last_changes_the_layout_not_the_imputations():
    images = Shapes(num_images=8, image_size=16, seed=0).load().images
    masks = MCAR(missing_rate=0.6, seed=0)(images)
    net = {"width": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": []}
    models = {}
    for layout in (True, False):
        model = MIRI(net=net, solver={"method": "midpoint", "steps": 2}, channels_last=layout, image_shape=(3, 16, 16))
        conv = next(m for m in model.velocity.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last if layout else torch.contiguous_format)
        for p in model.ema.module.parameters():  # non-zero weights everywhere, the same for both layouts
            p.data.copy_(torch.linspace(-0.05, 0.05, p.numel()).view(p.shape))
        models[layout] = model.impute(images, masks, batch_size=4)
    assert not torch.allclose(models[True], images, atol=1e-3)  # the network did move the missing entries
    assert torch.allclose(models[True], models[False], atol=1e-5)
    assert torch.equal(models[True][masks], images[masks])


@pytest.mark.slow
def test_state_on_the_device_trains_exactly_as_the_dataloader_does_and_resumes(tmp_path):
    rounds = ["--rounds.num_rounds", "2", "--rounds.steps", "4"]
    loader = run_cli(tmp_path / "loader", *rounds, "--data.on_device", "false")
    resident = run_cli(tmp_path / "resident", *rounds, "--data.on_device", "true")
    assert torch.equal(read_imputations(resident)[0], read_imputations(loader)[0])
    resumed = run_cli(tmp_path / "resumed", *rounds, "--data.on_device", "true",
                      "--ckpt_path", str(resident / "checkpoints" / "round001.ckpt"))
    assert torch.equal(read_imputations(resumed)[0], read_imputations(loader)[0])


@pytest.mark.slow
def test_bf16_autocast_trains_and_solves_in_bf16_and_keeps_the_observed_entries(tmp_path):
    one_round = ["--rounds.num_rounds", "1", "--rounds.steps", "4"]
    fp32 = run_cli(tmp_path / "fp32", *one_round)
    bf16 = run_cli(tmp_path / "bf16", *one_round, "--trainer.precision", "bf16-mixed")
    (low, masks), (high, _) = read_imputations(bf16), read_imputations(fp32)
    assert torch.equal(low[masks], high[masks])
    assert not torch.equal(low, high)  # the bf16 rounding did reach the imputations
    assert (low - high).abs().max() < 0.1 and torch.isfinite(low).all()


@pytest.mark.parametrize("bf16", [True, False])
def test_precision_left_unset_follows_the_hardware(bf16, tmp_path, monkeypatch):
    from miri_lightning import cli

    monkeypatch.setattr(cli, "bf16_pays", lambda accelerator: bf16)
    at = TINY.index("--trainer.precision")
    unset = [*TINY[:at], *TINY[at + 2:], "--trainer.default_root_dir", str(tmp_path)]
    built = cli.build_cli(unset)
    assert type(built.trainer.precision_plugin).__name__ == ("MixedPrecision" if bf16 else "Precision")
    pinned = cli.build_cli([*unset, "--trainer.precision", "32-true"])
    assert type(pinned.trainer.precision_plugin).__name__ == "Precision"


def test_a_gpu_defaults_to_float32_as_measured(monkeypatch):
    from miri_lightning import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # launch-bound steps made bf16 slower on an H200 (docs/performance.md)
    assert [cli.default_precision(a) for a in ("auto", "gpu", "cuda")] == ["32-true"] * 3


def test_precision_set_by_a_plugin_is_left_alone(tmp_path):
    from miri_lightning import cli

    at = TINY.index("--trainer.precision")
    plugin = '{"class_path": "lightning.pytorch.plugins.MixedPrecision", "init_args": {"precision": "bf16-mixed", "device": "cpu"}}'
    built = cli.build_cli([*TINY[:at], *TINY[at + 2:], "--trainer.default_root_dir", str(tmp_path),
                           "--trainer.plugins", plugin])
    assert type(built.trainer.precision_plugin).__name__ == "MixedPrecision"


class AdamWSteps(Callback):
    """Whether the AdamW in use is fused, the gradient norm each of its steps applied (after any clipping), and
    the weights before the first."""

    def __init__(self):
        self.fused, self.norms, self.before = set(), [], None

    def on_train_start(self, trainer, pl_module):
        self.before = [p.detach().clone() for p in pl_module.velocity.parameters()]
        [optimizer] = trainer.optimizers
        self.fused.add(optimizer.defaults["fused"])
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self.norms.append(float(torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for group in opt.param_groups for p in group["params"]])))))


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_with_gradient_clipping_trains_with_the_unfused_adamw(precision, tmp_path):
    clip = 1e-3  # below every gradient norm of these steps: each one is clipped
    cli = build_cli([*TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.precision", precision,
                     "--trainer.gradient_clip_val", str(clip), "--rounds.num_rounds", "1", "--rounds.steps", "4",
                     "--rounds.mi_steps", "0"])
    assert cli.model.optimizer_config.fused  # asked for the fused kernel, which cannot clip under mixed precision
    cli.trainer.callbacks.append(steps := AdamWSteps())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert steps.fused == {False}
    assert len(steps.norms) >= 2 and all(norm == pytest.approx(clip, rel=1e-3) for norm in steps.norms), steps.norms
    after = list(cli.model.velocity.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, steps.before, strict=True))  # it did step
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]
    imputed, masks = read_imputations(tmp_path)
    assert torch.equal(imputed[masks], cli.datamodule.truth[masks]) and torch.isfinite(imputed).all()


def assert_same_up_to_rounding(got: Path, expected: Path) -> None:
    (new, masks), old = read_imputations(got), read_imputations(expected)[0]
    assert torch.equal(new[masks], old[masks])
    diff = (new - old).abs()  # float rounding only: a round or two of training does not amplify it much
    assert diff.max() < 0.02 and diff.mean() < 1e-3


@pytest.mark.slow
def test_unfused_adamw_gives_the_same_imputations(two_round_run, tmp_path):
    assert_same_up_to_rounding(run_cli(tmp_path, *TWO_ROUNDS, "--model.optimizer.fused", "false"), two_round_run)


@pytest.mark.slow
def test_compiled_velocity_gives_the_same_imputations(tmp_path):
    one_round = ["--rounds.num_rounds", "1", "--rounds.steps", "4", "--rounds.mi_steps", "0"]
    compiled = run_cli(tmp_path / "compiled", *one_round, "--model.compile", "true")
    ckpt = torch.load(compiled / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in key for key in ckpt["state_dict"])  # loadable without compiling
    assert_same_up_to_rounding(compiled, run_cli(tmp_path / "eager", *one_round))


@pytest.mark.parametrize("setting, training, solve", [
    (True, "default", "default"),
    ("reduce-overhead", "reduce-overhead", "default"),
    ("max-autotune", "max-autotune", "max-autotune-no-cudagraphs"),
])
def test_cuda_graphs_compile_training_only(setting, training, solve, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, mode: calls.append((self, mode)))
    model = MIRI(compile=setting, net={"width": 8, "channel_mults": [1]}, image_shape=(1, 8, 8))
    # a solver holds several network outputs at once, which graph replays would overwrite
    assert calls == [(model.velocity, training), (model.ema.module, solve)]


def test_cuda_graphs_refuse_gradient_accumulation(tmp_path):
    with pytest.raises(SystemExit, match="model.compile reduce-overhead trains in CUDA graphs, which cannot "
                                         "accumulate gradients: set trainer.accumulate_grad_batches to 1"):
        run_cli(tmp_path, "--model.compile", "reduce-overhead", "--trainer.accumulate_grad_batches", "2")


@pytest.mark.slow
def test_the_loss_is_logged_every_n_steps_and_each_round(two_round_run):
    rows = list(csv.DictReader((two_round_run / "csv" / "two_rounds" / "metrics.csv").open()))
    step_losses = {int(row["step"]): float(row["train/loss"]) for row in rows if row["train/loss"]}
    assert sorted(step_losses) == [9, 19, 29]  # trainer.log_every_n_steps 10, 32 steps
    epoch_losses = [float(row["train/loss_epoch"]) for row in rows if row["train/loss_epoch"]]
    assert len(epoch_losses) == 2 and all(0 < loss < 1 for loss in [*epoch_losses, *step_losses.values()])


class ReadsPerStep(Callback):
    def __init__(self, counter: HostReads):
        self.counter, self.steps, self.start = counter, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx > 0:  # (global step before it, reads since the previous batch started)
            self.steps.append((trainer.global_step, self.counter.reads - self.start))
        self.start = self.counter.reads


@pytest.mark.slow
def test_a_training_step_reads_nothing_from_the_device_but_every_n_steps(tmp_path):
    cli = build_cli([*TINY, "--trainer.default_root_dir", str(tmp_path), "--rounds.num_rounds", "1",
                     "--rounds.steps", "50", "--data.source.init_args.num_images", "400",
                     "--data.batch_size", "8", "--trainer.log_every_n_steps", "5"])
    counter = HostReads()
    cli.trainer.callbacks.append(watch := ReadsPerStep(counter))
    with counter:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(watch.steps) == 49
    # Every fifth step ends with the one device read (losses and NaN counts), then Lightning reads the logged
    # loss, a host tensor by then; the other steps read nothing.
    assert [(step, reads) for step, reads in watch.steps if reads] == [(step, 2) for step in range(5, 50, 5)]


@pytest.mark.slow
def test_progress_bar_shows_the_round_and_the_last_loss_read(tmp_path, capfd):
    run_cli(tmp_path, "--trainer.enable_progress_bar", "true", "--rounds.num_rounds", "2",
            "--rounds.steps", "4", "--trainer.log_every_n_steps", "2")
    shown = "".join(capfd.readouterr())
    assert "round 2/2" in shown
    losses = [float(value) for value in re.findall(r"train/loss=([0-9.e-]+)", shown)]
    assert losses and all(0 < loss < 1 for loss in losses)


class RoundStarts(Callback):
    """The optimiser's state and learning rate as each epoch (a round's training) takes its first step."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            optimizer = trainer.optimizers[0]
            self.seen.append((len(optimizer.state), optimizer.param_groups[0]["lr"]))


@pytest.mark.slow
@pytest.mark.parametrize("restart", [True, False])
def test_each_warm_started_round_restarts_the_optimizer_unless_told_not_to(restart, tmp_path):
    cli = build_cli([*TINY, "--trainer.default_root_dir", str(tmp_path), "--rounds.num_rounds", "2",
                     "--rounds.steps", "6", "--rounds.mi_steps", "0", "--model.optimizer.warmup_steps", "4",
                     "--model.optimizer.restart_each_round", str(restart).lower()])
    cli.trainer.callbacks.append(starts := RoundStarts())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    lr = cli.model.optimizer_config.lr
    (state_1, lr_1), (state_2, lr_2) = starts.seen
    assert state_1 == 0 and lr_1 == pytest.approx(lr / 4)
    if restart:  # round 2 starts with no AdamW moments and warms up again
        assert state_2 == 0 and lr_2 == pytest.approx(lr / 4)
    else:  # it carries round 1's moments and full rate over
        assert state_2 > 0 and lr_2 == pytest.approx(lr)
