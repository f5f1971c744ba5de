"""Imputing new images from a checkpoint: the Python API, the command line, exported files, bad inputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from miri_lightning.baselines import interpolation_fill
from miri_lightning.cli import read_config
from miri_lightning.data.masks import MCAR
from miri_lightning.data.sources import Shapes
from miri_lightning.draws import calibrated_interval
from miri_lightning.errors import DataError
from miri_lightning.fills import FillConfig, RoundZeroFill
from miri_lightning.impute_cli import export_main, main
from miri_lightning.inference import MIRIImputer
from miri_lightning.metrics import missing_rmse, psnr


@pytest.fixture
def ckpt(trained_run) -> Path:
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def held_out():
    """New images from the training distribution, quantised to 8 bits as image files are, with masks."""
    images = Shapes(num_images=12, image_size=16, seed=7).load().images
    images = (images * 255).round() / 255
    return images, MCAR(missing_rate=0.6, seed=3)(images)[:, :1]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.slow
def test_api_keeps_observed_entries_and_is_reproducible(ckpt, held_out):
    imputer = MIRIImputer.load(ckpt)
    images, masks = held_out
    out = imputer.impute(images, masks, seed=1)
    full = masks.expand_as(images)
    assert out.shape == images.shape and torch.equal(out[full], images[full])
    assert torch.equal(out, imputer.impute(images, masks, seed=1))
    assert torch.allclose(out, imputer.impute(images, masks, seed=1, batch_size=5), atol=1e-4)  # float rounding
    assert not torch.equal(out, imputer.impute(images, masks, seed=2))
    assert not torch.equal(out, imputer.impute(images, masks, seed=1, method="euler", steps=1))
    draws = imputer.impute(images, masks, seed=1, num_samples=3)
    assert draws.shape == (3, *images.shape) and torch.equal(draws[0], out)
    assert not torch.equal(draws[1], draws[2])


@pytest.mark.slow
def test_held_out_images_come_closer_to_the_truth_than_the_initial_fill(ckpt, held_out):
    imputer = MIRIImputer.load(ckpt)
    images, masks = held_out
    full = masks.expand_as(images)
    filled = imputer.initial_fill(images, full, seed=0)
    imputed = imputer.impute(images, masks, seed=0)
    assert psnr(missing_rmse(imputed, images, full)) > psnr(missing_rmse(filled, images, full)) + 0.3


@pytest.mark.slow
def test_export_is_smaller_safe_and_gives_the_same_result(ckpt, held_out, tmp_path):
    images, masks = held_out
    expected = MIRIImputer.load(ckpt).impute(images, masks, seed=4)
    export_main([str(ckpt), str(tmp_path / "model.pt")])
    export_main([str(ckpt), str(tmp_path / "half.pt"), "--half"])
    sizes = {p: (tmp_path / p).stat().st_size for p in ("model.pt", "half.pt")}
    assert sizes["half.pt"] < sizes["model.pt"] < ckpt.stat().st_size
    assert torch.load(tmp_path / "model.pt", weights_only=True)["format"] == "miri-lightning-imputer"
    assert torch.equal(MIRIImputer.load(tmp_path / "model.pt").impute(images, masks, seed=4), expected)
    half = MIRIImputer.load(tmp_path / "half.pt").impute(images, masks, seed=4)
    assert (half - expected).abs().max() < 0.05


@pytest.fixture(scope="module")
def noisy_interpolation_run(tmp_path_factory) -> Path:
    return run_cli(tmp_path_factory.mktemp("noisy") / "run", "--rounds.num_rounds", "1", "--rounds.steps", "4",
                   "--data.fill.kind", "interpolation", "--data.fill.sigma", "0.4", "--data.fill.noise", "0.05")


@pytest.mark.slow
def test_new_images_are_filled_as_the_training_run_filled_round_0(noisy_interpolation_run, tmp_path, held_out):
    run = noisy_interpolation_run
    images, masks = held_out
    full = masks.expand_as(images)
    narrow = RoundZeroFill("interpolation", sigma=0.4, noise=0.05)(images, full, seed=0)
    assert not torch.equal(narrow, RoundZeroFill("interpolation", sigma=0.4)(images, full, seed=0))
    imputer = MIRIImputer.load(run / "checkpoints" / "last.ckpt")
    assert torch.equal(imputer.initial_fill(images, full, seed=0), narrow)
    assert not torch.equal(imputer.initial_fill(images, full, seed=1), narrow)  # each draw its own noise
    imputer.export(tmp_path / "model.pt")
    assert torch.equal(MIRIImputer.load(tmp_path / "model.pt").initial_fill(images, full, seed=0), narrow)
    # Files written before the options existed were filled with sigma 1 and no noise.
    old = torch.load(tmp_path / "model.pt", weights_only=True)
    del old["fill_sigma"], old["fill_noise"]
    torch.save(old, tmp_path / "old.pt")
    wide = MIRIImputer.load(tmp_path / "old.pt").initial_fill(images, full, seed=0)
    assert torch.equal(wide, interpolation_fill(images, full, sigma=1.0))


@pytest.mark.slow
def test_draws_differ_with_a_noisy_fill_and_a_deterministic_fill_refuses_several(noisy_interpolation_run, tmp_path,
                                                                                 held_out):
    images, masks = held_out
    full = masks.expand_as(images)
    draws = MIRIImputer.load(noisy_interpolation_run / "checkpoints" / "last.ckpt").impute(images, masks,
                                                                                          num_samples=3)
    for draw in draws:
        assert torch.equal(draw[full], images[full])
    assert (draws[0] - draws[1])[~full].abs().max() > 0.01 and (draws[1] - draws[2])[~full].abs().max() > 0.01
    plain = run_cli(tmp_path / "plain", "--rounds.num_rounds", "1", "--rounds.steps", "4",
                    "--data.fill.kind", "interpolation")
    imputer = MIRIImputer.load(plain / "checkpoints" / "last.ckpt")
    assert imputer.impute(images, masks).shape == images.shape  # one draw is fine
    with pytest.raises(DataError, match="every draw would be the same image.*data.fill.noise"):
        imputer.impute(images, masks, num_samples=2)


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_fills_round_0_at_random_and_keeps_observed_entries(config, held_out):
    data = read_config(config)["data"]
    cfg = FillConfig(**data.get("fill", {}))
    fill = RoundZeroFill(cfg.kind, cfg.sigma, cfg.noise, cfg.keep)
    images, masks = held_out
    full = masks.expand_as(images)
    first, second = fill(images, full, seed=0), fill(images, full, seed=1)
    assert torch.equal(first[full], images[full]) and torch.equal(second[full], images[full])
    assert (first - second)[~full].abs().max() > 0.01, f"{config.name}: every draw of an image would be the same"


@pytest.mark.slow
def test_calibration_hides_observed_entries_and_scales_the_interval(noisy_interpolation_run, held_out):
    imputer = MIRIImputer.load(noisy_interpolation_run / "checkpoints" / "last.ckpt")
    images, masks = held_out
    scale = imputer.calibrate(images, masks, num_samples=3, share=0.2)
    assert scale > 0 and scale == imputer.calibrate(images, masks, num_samples=3, share=0.2)  # seeded
    with pytest.raises(DataError, match="share of observed entries to hide"):
        imputer.calibrate(images, masks, share=1.0)


@pytest.mark.slow
def test_draws_differ_with_the_thinned_interpolation(tmp_path, held_out):
    run = run_cli(tmp_path / "thinned", "--rounds.num_rounds", "1", "--rounds.steps", "4",
                  "--data.fill.kind", "interpolation", "--data.fill.keep", "0.7")
    images, masks = held_out
    full = masks.expand_as(images)
    draws = MIRIImputer.load(run / "checkpoints" / "last.ckpt").impute(images, masks, num_samples=3)
    for draw in draws:
        assert torch.equal(draw[full], images[full])
    assert (draws[0] - draws[1])[~full].abs().max() > 0.01 and (draws[1] - draws[2])[~full].abs().max() > 0.01


def write_pngs(folder: Path, images, masks=None, alpha=False) -> None:
    folder.mkdir()
    for i, image in enumerate(images):
        pixels = to_uint8(image)
        if alpha:
            pixels = np.concatenate([pixels, to_uint8(masks[i].float())], axis=2)
        Image.fromarray(pixels, "RGBA" if alpha else "RGB").save(folder / f"img{i:02d}.png")


def read_pngs(folder: Path, count: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"img{i:02d}.png")) for i in range(count)])


@pytest.mark.slow
def test_cli_gives_the_api_result_for_every_input_and_output_format(ckpt, held_out, tmp_path):
    images, masks = held_out
    expected = MIRIImputer.load(ckpt).impute(images, masks, seed=5)
    as_png = np.stack([to_uint8(x) for x in expected])
    write_pngs(tmp_path / "rgb", images)
    (tmp_path / "masks").mkdir()
    for i, mask in enumerate(masks):
        Image.fromarray(to_uint8(mask.float())[..., 0], "L").save(tmp_path / "masks" / f"img{i:02d}.png")
    write_pngs(tmp_path / "rgba", images, masks, alpha=True)
    nhwc = images.permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "masked.npz", images=nhwc, masks=masks.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    np.savez(tmp_path / "nan.npz", images=np.where(masks.permute(0, 2, 3, 1).numpy(), nhwc, np.nan))

    main([str(ckpt), "--images", str(tmp_path / "rgb"), "--masks", str(tmp_path / "masks"), "--out",
          str(tmp_path / "out1"), "--seed", "5"])
    main([str(ckpt), "--images", str(tmp_path / "rgba"), "--out", str(tmp_path / "out2"), "--seed", "5"])
    for out in ("out1", "out2"):
        assert np.array_equal(read_pngs(tmp_path / out, len(images)), as_png)
    observed = masks.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).numpy()
    inputs = read_pngs(tmp_path / "rgb", len(images))
    assert np.array_equal(read_pngs(tmp_path / "out1", len(images))[observed], inputs[observed])
    for name in ("masked", "nan"):
        main([str(ckpt), "--npz", str(tmp_path / f"{name}.npz"), "--out", str(tmp_path / f"{name}_out.npz"),
              "--seed", "5"])
        with np.load(tmp_path / f"{name}_out.npz") as f:
            assert np.array_equal(f["images"], expected.permute(0, 2, 3, 1).numpy())
    main([str(ckpt), "--images", str(tmp_path / "rgba"), "--out", str(tmp_path / "sbs"), "--side-by-side"])
    assert np.asarray(Image.open(tmp_path / "sbs" / "img00.png")).shape == (16, 32, 3)


@pytest.mark.slow
def test_cli_writes_the_mean_of_the_draws_and_their_spread(ckpt, held_out, tmp_path):
    images, masks = held_out
    draws = MIRIImputer.load(ckpt).impute(images, masks, seed=2, num_samples=3)
    full = masks.expand_as(images)
    np.savez(tmp_path / "in.npz", images=images.permute(0, 2, 3, 1).numpy(),
             masks=masks.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    main([str(ckpt), "--npz", str(tmp_path / "in.npz"), "--out", str(tmp_path / "mean.npz"), "--seed", "2",
          "--num-samples", "3", "--mean", "--uncertainty"])
    with np.load(tmp_path / "mean.npz") as f:
        mean, std = torch.from_numpy(f["images"]).permute(0, 3, 1, 2), torch.from_numpy(f["std"]).permute(0, 3, 1, 2)
    assert torch.equal(mean[full], images[full]) and torch.allclose(mean, draws.mean(0), atol=1e-6)
    assert torch.allclose(std, draws.std(0, unbiased=False), atol=1e-6) and torch.all(std[full] == 0)
    write_pngs(tmp_path / "rgba", images, masks, alpha=True)
    main([str(ckpt), "--images", str(tmp_path / "rgba"), "--out", str(tmp_path / "maps"), "--num-samples", "3",
          "--uncertainty"])
    spread = np.asarray(Image.open(tmp_path / "maps" / "img00_std.png"))
    assert spread.shape == (16, 16, 3) and spread[masks[0, 0].numpy()].max() == 0 and spread.max() > 0
    assert (tmp_path / "maps" / "img00_s2.png").is_file()
    main([str(ckpt), "--images", str(tmp_path / "rgba"), "--out", str(tmp_path / "sbs"), "--num-samples", "3",
          "--mean", "--uncertainty", "--side-by-side"])
    assert np.asarray(Image.open(tmp_path / "sbs" / "img00.png")).shape == (16, 48, 3)  # input | mean | spread


@pytest.mark.slow
def test_cli_writes_the_calibrated_interval_the_api_gives(noisy_interpolation_run, held_out, tmp_path, capsys):
    ckpt = noisy_interpolation_run / "checkpoints" / "last.ckpt"
    images, masks = held_out
    imputer = MIRIImputer.load(ckpt)
    draws = imputer.impute(images, masks, seed=2, num_samples=3)
    scale = imputer.calibrate(images, masks, num_samples=3, share=0.2, level=0.8, seed=5)  # the seeds after the draws'
    low, high = calibrated_interval(draws, masks, scale)
    np.savez(tmp_path / "in.npz", images=images.permute(0, 2, 3, 1).numpy(),
             masks=masks.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    main([str(ckpt), "--npz", str(tmp_path / "in.npz"), "--out", str(tmp_path / "out.npz"), "--seed", "2",
          "--num-samples", "3", "--interval", "0.8", "--calibration-share", "0.2"])
    assert f"80% intervals: the draws' spread (+ its mean) times {scale:.3g}" in capsys.readouterr().out
    with np.load(tmp_path / "out.npz") as f:
        written = [torch.from_numpy(f[k]).permute(0, 3, 1, 2) for k in ("low", "high")]
    assert torch.equal(written[0], low) and torch.equal(written[1], high)
    full, mean = masks.expand_as(images), draws.mean(0)
    assert torch.equal(low[full], images[full]) and torch.equal(high[full], images[full])  # observed: the data
    assert (low <= mean + 1e-6).all() and (high >= mean - 1e-6).all() and (high - low)[~full].min() > 0
    write_pngs(tmp_path / "rgba", images, masks, alpha=True)
    main([str(ckpt), "--images", str(tmp_path / "rgba"), "--out", str(tmp_path / "pngs"), "--num-samples", "2",
          "--interval", "0.9"])
    pictures = [np.asarray(Image.open(tmp_path / "pngs" / f"img00_{k}.png")).astype(int) for k in ("low", "high")]
    assert pictures[0].shape == (16, 16, 3) and (pictures[0] <= pictures[1]).all() and (pictures[0] < pictures[1]).any()


@pytest.mark.slow
def test_a_run_draws_its_own_collection_again(ckpt, tmp_path):
    run = ckpt.parent.parent
    main([str(ckpt), "--npz", str(run / "imputations.npz"), "--num-samples", "2", "--out", str(tmp_path / "d.npz")])
    with np.load(run / "imputations.npz") as kept, np.load(tmp_path / "d.npz") as drawn:
        observed = kept["masks"].astype(bool)
        assert drawn["images"].shape == (2, *kept["images"].shape)
        for draw in drawn["images"]:
            assert np.array_equal(draw[observed], kept["images"][observed])
        assert not np.array_equal(drawn["images"][0], drawn["images"][1])


def bad_run(capsys, *args) -> str:
    with pytest.raises(SystemExit) as err:
        main([str(a) for a in args])
    return str(err.value.code) + capsys.readouterr().err


@pytest.mark.slow
def test_bad_checkpoints_are_named(ckpt, tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "text.ckpt").write_text("hello")
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 16, 16, 3)), masks=np.ones((1, 16, 16)))
    for bad, message in (("other.pt", "not a miri-lightning checkpoint"), ("text.ckpt", "not a readable"),
                         ("cut.ckpt", "not a readable")):
        out = tmp_path / "out"
        assert message in bad_run(capsys, tmp_path / bad, "--npz", tmp_path / "in.npz", "--out", out)
        assert not out.exists()


@pytest.mark.slow
def test_bad_inputs_stop_before_anything_is_written(ckpt, held_out, tmp_path, capsys):
    images, masks = held_out
    write_pngs(tmp_path / "small", torch.rand(2, 3, 8, 8))
    write_pngs(tmp_path / "small_masks", torch.ones(2, 3, 8, 8))
    (tmp_path / "half_masks").mkdir()
    write_pngs(tmp_path / "imgs", images[:2])
    for i in range(2):
        Image.fromarray(np.full((16, 16), 128, np.uint8), "L").save(tmp_path / "half_masks" / f"img{i:02d}.png")
    np.savez(tmp_path / "gray.npz", images=np.zeros((2, 16, 16), np.uint8), masks=np.ones((2, 16, 16), np.uint8))
    blind = np.ones((2, 16, 16, 3), np.uint8)
    blind[1] = 0
    np.savez(tmp_path / "blind.npz", images=np.zeros((2, 16, 16, 3), np.uint8), masks=blind)
    cases = [
        (["--images", tmp_path / "small"], "has no alpha channel"),
        (["--images", tmp_path / "small", "--masks", tmp_path / "small_masks"], "images must be (N, 3, 16, 16)"),
        (["--npz", tmp_path / "gray.npz"], "images must be (N, 3, 16, 16)"),
        (["--images", tmp_path / "imgs", "--masks", tmp_path / "half_masks"], "must be fully opaque/white"),
        (["--npz", tmp_path / "blind.npz"], "images [1] have no observed pixel"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        assert message in bad_run(capsys, ckpt, *args, "--out", out)
        assert not out.exists()
    assert "would overwrite the input" in bad_run(capsys, ckpt, "--images", tmp_path / "imgs", "--masks",
                                                  tmp_path / "half_masks", "--out", tmp_path / "imgs")
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["img00.png", "img01.png"]


@pytest.mark.slow
def test_api_errors_name_the_tensor(ckpt, held_out):
    imputer = MIRIImputer.load(ckpt)
    images, masks = held_out
    with pytest.raises(DataError, match="masks must be"):
        imputer.impute(images, masks.expand(-1, 2, -1, -1))
    with pytest.raises(DataError, match=r"masks must hold only 0/1 \(1 = observed\); it holds 0.5, the first at index"):
        imputer.impute(images, masks * 0.5)
    for value in (float("nan"), float("inf")):
        bad = images.clone()
        bad[masks.expand_as(images)] = value
        with pytest.raises(DataError, match="NaN or infinite"):
            imputer.impute(bad, masks)
    missing_nan = torch.where(masks.expand_as(images), images, torch.nan)  # NaN where missing is fine
    assert torch.isfinite(imputer.impute(missing_nan, masks)).all()


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--batch-size", "--num-samples"])
def test_cli_refuses_counts_below_one(flag, ckpt, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 16, 16, 3)), masks=np.ones((1, 16, 16)))
    message = bad_run(capsys, ckpt, "--npz", tmp_path / "in.npz", "--out", tmp_path / "out.npz", flag, "0")
    assert f"{flag} must be >= 1, got 0" in message
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flag", [["--mean"], ["--uncertainty"], ["--interval", "0.9"]])
def test_cli_summaries_need_several_draws(flag, ckpt, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 16, 16, 3)), masks=np.ones((1, 16, 16)))
    message = bad_run(capsys, ckpt, "--npz", tmp_path / "in.npz", "--out", tmp_path / "out.npz", *flag)
    assert "--num-samples 2 or more" in message and not (tmp_path / "out.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--interval", "--calibration-share"])
def test_cli_refuses_an_interval_level_or_share_outside_0_1(flag, ckpt, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 16, 16, 3)), masks=np.ones((1, 16, 16)))
    message = bad_run(capsys, ckpt, "--npz", tmp_path / "in.npz", "--out", tmp_path / "out.npz", "--num-samples", 2,
                      flag, "1.5")
    assert f"{flag} must lie strictly between 0 and 1, got 1.5" in message and not (tmp_path / "out.npz").exists()
