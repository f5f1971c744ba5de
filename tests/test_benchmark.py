"""`miri-bench compare`: the baselines (with their mask information) on plain and per-channel masks, MIRI's
targets verdict, and a run without matplotlib that still writes everything but the plot."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_script, stand_in
from miri_lightning.baselines import noise_fill
from miri_lightning.bench import compare
from miri_lightning.data.sources import NpzImages
from miri_lightning.metrics import mask_information
from miri_lightning.realism import inception_path

ROOT = Path(__file__).resolve().parents[1]

# A MIRI run of seconds on 16x16 images: a U-Net of width 8, 4 rounds of one epoch, 2 solver steps.
TINY_MIRI = [
    "--data.batch_size", "16", "--model.net.width", "8", "--model.net.channel_mults", "[1, 2]",
    "--model.net.attention_resolutions", "[]", "--model.ema_decay", "0.0", "--model.optimizer.lr", "3e-3",
    "--model.optimizer.warmup_steps", "1", "--model.solver.steps", "2", "--rounds.grid_images", "4",
    "--rounds.num_rounds", "4", "--rounds.steps", "4", "--trainer.precision", "32-true",
    "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
]


@pytest.fixture(scope="module")
def bench():
    return compare


def write_images(path: Path, n: int = 40, size: int = 8) -> Path:
    """Smooth RGB ramps with a little noise, each channel its own brightness: easy to interpolate, varied."""
    rng = np.random.default_rng(0)
    ramps = np.linspace(0, 255, size)[None, :, None, None] * rng.uniform(0.2, 1, (n, 1, 1, 3))
    images = (ramps + rng.normal(0, 8, (n, size, size, 3))).clip(0, 255).astype(np.uint8)
    np.savez(path, images=images)
    return path


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny tensors: a second thread only contends for the cores (on a busy 2-core machine, 10 times slower).
    One thread here and in the scripts and runs started from here."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_per_channel_mask_setting_hides_each_channel_on_its_own(bench):
    images = torch.rand(50, 3, 8, 8)
    cls, kwargs = bench.MASKS["mcar60c"]
    masks = cls(**kwargs, seed=1)(images)
    assert (masks[:, 0] != masks[:, 1]).any() and (masks[:, 1] != masks[:, 2]).any()
    assert (~masks).float().mean().item() == pytest.approx(0.6, abs=0.03)
    cls, kwargs = bench.MASKS["mcar60"]
    shared = cls(**kwargs, seed=1)(images)
    assert (shared[:, 0] == shared[:, 1]).all() and (shared[:, 1] == shared[:, 2]).all()


@pytest.mark.slow
def test_baselines_only_scores_every_fill_with_its_mask_information(tmp_path, bench):
    npz = write_images(tmp_path / "d.npz")
    out = tmp_path / "out"
    run_script("-m", "miri_lightning.bench", "compare", "--npz", npz, "--num-images", 40, "--masks", "mcar60",
               "mcar60c", "--seeds", 1, 2, "--baselines-only", "--mi-steps", 50, "--mi-seeds", 2, "--fid-images", 0, "--out", out)
    result = json.loads((out / "results.json").read_text())
    assert result["truth_halves_mmd"] > 0 and (result["mi_steps"], result["mi_seeds"]) == (50, 2)
    assert list(result["masks"]) == ["mcar60", "mcar60c"]
    assert result["masks"]["mcar60"][0]["baselines"]["noise fill"]["mutual_information"] > 0  # noise gives holes away
    table = (out / "table.md").read_text()
    assert f"{result['truth_halves_mmd']:.3g}" in table and "| mask information (bits) |" in table
    for mask_name, seeds in result["masks"].items():
        assert [s["seed"] for s in seeds] == [1, 2] and not any("miri" in s or "targets" in s for s in seeds)
        for s in seeds:
            scores = s["baselines"]
            assert list(scores) == list(bench.BASELINES)
            assert all(v["mutual_information"] >= 0 for v in scores.values())
            # on smooth images, filling from the neighbours beats uniform noise by far
            assert scores[bench.SIGMA_04]["psnr"] > scores["noise fill"]["psnr"] + 10
        # the mask information is the fill's, on these masks, with --mi-steps, averaged over --mi-seeds
        images = NpzImages(npz, num_images=40).load().images
        cls, kwargs = bench.MASKS[mask_name]
        masks = cls(**kwargs, seed=2)(images)
        filled = noise_fill(images, masks, 2)
        expected = np.mean([mask_information(filled, masks, steps=50, seed=s) for s in (0, 1)])
        assert seeds[1]["baselines"]["noise fill"]["mutual_information"] == pytest.approx(expected, abs=1e-6)
        section = table.split(f"### {mask_name} (2 seed(s))")[1].split("###")[0]
        rows = [line.split(" | ")[0].lstrip("| ") for line in section.splitlines() if line.startswith("| ")]
        assert rows[1:] == list(bench.BASELINES)  # the header, then one row per fill
        assert "MIRI" not in section


def run_main(bench, monkeypatch, *args) -> None:
    """`miri-bench compare` in this process (no start-up of seconds; `sys.modules` can be patched)."""
    bench.main([str(arg) for arg in args])


def test_skip_knn_and_no_mask_information(tmp_path, bench, monkeypatch):
    out = tmp_path / "out"
    run_main(bench, monkeypatch, "--npz", write_images(tmp_path / "d.npz"), "--num-images", 40, "--masks", "mcar60c",
             "--seeds", 1, "--baselines-only", "--skip-knn", "--mi-steps", 0, "--fid-images", 0, "--out", out)
    scores = json.loads((out / "results.json").read_text())["masks"]["mcar60c"][0]["baselines"]
    assert list(scores) == [m for m in bench.BASELINES if m != bench.KNN]
    assert all(v["mutual_information"] is None for v in scores.values())  # not measured, not 0 bits
    assert bench.KNN not in (out / "table.md").read_text()


def test_fid_and_kid_of_every_fill_on_all_images_in_the_results_and_the_table(tmp_path, bench, monkeypatch):
    monkeypatch.setattr(bench, "load_inception", lambda: stand_in())
    out = tmp_path / "out"
    run_main(bench, monkeypatch, "--npz", write_images(tmp_path / "d.npz", size=16), "--num-images", 40,
             "--masks", "mcar60", "--seeds", 1, "--baselines-only", "--skip-knn", "--mi-steps", 0, "--out", out)
    scores = json.loads((out / "results.json").read_text())["masks"]["mcar60"][0]["baselines"]
    assert all(v["fid"] > 0 and v["kid_std"] >= 0 for v in scores.values())
    assert scores["noise fill"]["kid"] > scores[bench.SIGMA_1]["kid"]  # uniform noise looks least like the images
    table = (out / "table.md").read_text()
    assert "| method | FID | KID | MMD |" in table
    halves = json.loads((out / "results.json").read_text())["truth_halves_realism"]
    assert halves["fid"] > 0 and abs(halves["kid"]) < scores["noise fill"]["kid"]
    assert f"at half the images): {halves['fid']:.3g}, {halves['kid']:.3g}" in table
    assert f"| noise fill | {scores['noise fill']['fid']:.3g} | {scores['noise fill']['kid']:.3g} |" in table


BASELINES = {"Gaussian interpolation (sigma 0.4)": {"mmd": 1e-3, "psnr": 20.0, "mutual_information": 0.30,
                                                     "fid": 110.0, "kid": 0.04},
             "Gaussian interpolation (sigma 1)": {"mmd": 2e-3, "psnr": 22.0, "mutual_information": 0.20,
                                                   "fid": 100.0, "kid": 0.03}}


def passing_rounds() -> list[dict]:
    """Round 0 is the fill; the last round meets all six targets: MI 0.1 <= 0.15, no round after 2 above 0.3,
    MMD 5e-4 <= 1e-3, PSNR 20 >= 22 - 3, FID 90 < 100 and KID 0.02 <= 0.7 x 0.03 on all images."""
    infos = [0.30, 0.25, 0.12, 0.11, 0.10]
    rounds = [{"round": t, "mutual_information": i, "mmd": 5e-4 if t else 2e-3, "psnr": 20.0 if t else 18.0}
              for t, i in enumerate(infos)]
    rounds[-1].update(fid_all=90.0, kid_all=0.02)
    return rounds


def test_targets_pass_with_their_margins(bench):
    verdict = bench.miri_targets(passing_rounds(), BASELINES)
    assert list(verdict) == ["last"]  # no best_round recorded
    last = verdict["last"]
    assert last["round"] == 4 and last["pass"] is True
    checks = last["checks"]
    assert all(c["pass"] for c in checks.values())
    assert checks["mi_at_most_half_sigma04"] == pytest.approx({"value": 0.10, "limit": 0.15, "margin": 0.05,
                                                               "pass": True})
    assert checks["no_mi_rise_after_round_2"] == pytest.approx({"value": 0.11, "limit": 0.30, "margin": 0.19,
                                                                "pass": True})
    assert checks["mmd_at_most_sigma04"]["margin"] == pytest.approx(5e-4)
    assert checks["psnr_at_least_sigma1_minus_3db"] == pytest.approx({"value": 20.0, "limit": 19.0, "margin": 1.0,
                                                                      "pass": True})
    assert checks["fid_below_interpolation"] == pytest.approx({"value": 90.0, "limit": 100.0, "margin": 10.0,
                                                               "pass": True})
    assert checks["kid_at_most_07_interpolation"] == pytest.approx({"value": 0.02, "limit": 0.021, "margin": 0.001,
                                                                    "pass": True})


@pytest.mark.parametrize("failing, round_, key, value", [
    ("mi_at_most_half_sigma04", 4, "mutual_information", 0.2),  # above half of 0.30
    ("no_mi_rise_after_round_2", 3, "mutual_information", 0.35),  # above round 0's 0.30, the last round fine
    ("mmd_at_most_sigma04", 4, "mmd", 1.5e-3),
    ("psnr_at_least_sigma1_minus_3db", 4, "psnr", 18.5),
    ("fid_below_interpolation", 4, "fid_all", 100.5),  # the better interpolation (sigma 1) reads 100
    ("kid_at_most_07_interpolation", 4, "kid_all", 0.025),  # below sigma 1's 0.03 but above 0.7 x 0.03
])
def test_each_target_fails_alone(bench, failing, round_, key, value):
    rounds = passing_rounds()
    rounds[round_][key] = value
    last = bench.miri_targets(rounds, BASELINES)["last"]
    assert last["pass"] is False
    assert {name for name, c in last["checks"].items() if not c["pass"]} == {failing}
    assert last["checks"][failing]["margin"] < 0


def test_a_rise_in_round_2_or_before_is_allowed(bench):
    rounds = passing_rounds()
    rounds[2]["mutual_information"] = 0.5
    assert bench.miri_targets(rounds, BASELINES)["last"]["pass"] is True


def test_best_round_is_judged_beside_the_last(bench):
    rounds = passing_rounds()
    rounds[4].update(mmd=3e-3)  # the last round fails (c) ...
    for r in rounds:
        r["best_round"] = min(r["round"], 3)  # ... the kept round 3 (MI 0.11, lowest up to round 4's rise) passes
    rounds[4]["mutual_information"] = 0.12
    verdict = bench.miri_targets(rounds, BASELINES)
    assert verdict["last"]["round"] == 4 and verdict["last"]["pass"] is False
    assert verdict["best"]["round"] == 3 and verdict["best"]["pass"] is True
    assert verdict["best"]["checks"]["mi_at_most_half_sigma04"]["value"] == 0.11
    assert "fid_below_interpolation" not in verdict["best"]["checks"]  # FID on all images: the last round only


def test_targets_without_mask_information_or_late_rounds_are_not_judged(bench):
    rounds = [{**r, "mutual_information": None} for r in passing_rounds()]
    baselines = copy.deepcopy(BASELINES)
    for b in baselines.values():
        b["mutual_information"] = None
    last = bench.miri_targets(rounds, baselines)["last"]
    assert last["checks"]["mi_at_most_half_sigma04"]["pass"] is None
    assert last["checks"]["no_mi_rise_after_round_2"]["pass"] is None
    assert last["checks"]["mmd_at_most_sigma04"]["pass"] is True
    assert last["pass"] is None  # nothing failed, but not everything could be judged
    short = bench.miri_targets(passing_rounds()[:3], BASELINES)["last"]
    assert short["checks"]["no_mi_rise_after_round_2"]["pass"] is None and short["pass"] is None
    without_fid = passing_rounds()
    del without_fid[-1]["fid_all"], without_fid[-1]["kid_all"]
    last = bench.miri_targets(without_fid, BASELINES)["last"]
    assert last["checks"]["fid_below_interpolation"]["pass"] is None and last["pass"] is None



@pytest.mark.slow
@pytest.mark.skipif(inception_path() is None, reason="the `fid` extra is not installed (pip install -e '.[fid]')")
def test_realism_images_scores_fills_and_every_round_on_the_same_first_images(tmp_path, bench, monkeypatch):
    """--realism-images N: the baselines and every round of MIRI (in its own process, with the shipped
    InceptionV3) on the first N images, and the targets judge the last round on them: 5,000-image runs afford it."""
    npz, out = write_images(tmp_path / "d.npz", size=16), tmp_path / "out"
    run_main(bench, monkeypatch, "--npz", npz, "--num-images", 40, "--masks", "mcar60", "--seeds", 1,
             "--skip-knn", "--mi-steps", 0, "--draws", 0, "--realism-images", 6, "--out", out,
             "--config", ROOT / "configs" / "quickstart.yaml", "--", *TINY_MIRI, "--rounds.num_rounds", "2")
    entry = json.loads((out / "results.json").read_text())["masks"]["mcar60"][0]
    images = NpzImages(npz, num_images=40).load().images
    masks = bench.MASKS["mcar60"][0](**bench.MASKS["mcar60"][1], seed=1)(images)
    fill = bench.BASELINES[bench.SIGMA_1](images, masks, 1)
    again = bench.Realism(bench.load_inception(), images[:6])(fill, (6,))[0]
    assert entry["baselines"][bench.SIGMA_1]["kid"] == pytest.approx(again["kid"], rel=1e-4, abs=1e-7)
    assert [r["fid_images"] for r in entry["miri"]] == [6, 6, 6]
    assert entry["miri"][-1]["fid_all_images"] == 6 and entry["miri"][-1]["kid_all"] == entry["miri"][-1]["kid"]
    assert entry["targets"]["last"]["checks"]["kid_at_most_07_interpolation"]["pass"] is not None

@pytest.mark.slow
def test_without_matplotlib_everything_but_the_plot_is_written(tmp_path, bench, monkeypatch, capsys):
    npz = write_images(tmp_path / "d.npz", size=16)
    out = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    run_main(bench, monkeypatch, "--npz", npz, "--num-images", 40, "--masks", "mcar60c", "--seeds", 1,
             "--mi-steps", 10, "--mi-seeds", 1, "--config", ROOT / "configs" / "quickstart.yaml", "--out", out,
             "--draws", 3, "--calibration-images", 20, "--fid-images", 0, "--", *TINY_MIRI)
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == bench.MATPLOTLIB_MISSING  # said at the start, before any work
    assert "pip install -e '.[bench]'" in printed
    assert not (out / "rounds.png").exists()
    entry = json.loads((out / "results.json").read_text())["masks"]["mcar60c"][0]
    assert [r["round"] for r in entry["miri"]] == [0, 1, 2, 3, 4]
    assert all(r["mutual_information"] is not None for r in entry["miri"])
    assert entry["targets"]["last"]["round"] == 4
    assert set(entry["targets"]["last"]["checks"]) == set(bench.CHECK_NAMES)
    table = (out / "table.md").read_text()
    assert "| MIRI (4 rounds) |" in table and "MIRI against the targets" in table
    assert all(name in table for name in bench.CHECK_NAMES.values())
    assert (out / "grid_mcar60c.png").exists()
    # The quick start's noise fill is random: the run drew every image 3 times
    draws = entry["draws"]
    assert draws["draws"] == 3 and 0 <= draws["coverage"] <= 1 and -1 <= draws["spread_error_correlation"] <= 1
    assert draws["mean_psnr"] > draws["one_draw_psnr"]  # averaging draws cancels part of their error
    # calibrated on the first 20 images: the interval is the draws' spread times the scale, whatever its width
    assert draws["scale"] > 0 and 0 <= draws["calibrated_coverage"] <= 1
    assert f"({draws['calibrated_width']:.3f}; {draws['scale']:.2f})" in table
    assert "Multiple imputation (3 draws" in table
    # MIRI trained on per-channel masks too: the run's saved masks (N, H, W, C) differ between channels
    run_masks = np.load(out / "runs" / "mcar60c_seed1" / "imputations.npz")["masks"]
    assert (run_masks[..., 0] != run_masks[..., 1]).any()


def test_plot_of_miri_rounds_and_baselines(tmp_path, bench):
    pytest.importorskip("matplotlib")
    rounds = [{**r, "wall_seconds": float(r["round"])} for r in passing_rounds()]
    results = {"mcar60c": [{"seed": 1, "baselines": BASELINES, "miri": rounds}]}
    bench.write_plot(results, tmp_path / "rounds.png", bench.pyplot())
    assert (tmp_path / "rounds.png").stat().st_size > 0


def test_table_gives_the_targets_of_the_last_and_of_a_different_best_round(tmp_path, bench):
    rounds = [{**r, "ssim": 0.5, "wall_seconds": float(r["round"]), "best_round": min(r["round"], 3)}
              for r in passing_rounds()]
    rounds[4]["mutual_information"] = 0.14
    baselines = {name: {**BASELINES.get(name, BASELINES[bench.SIGMA_1]), "ssim": 0.5, "seconds": 0.1}
                 for name in bench.BASELINES}
    entry = {"seed": 1, "baselines": baselines, "miri": rounds, "targets": bench.miri_targets(rounds, baselines)}
    bench.write_table({"mcar60c": [entry]}, tmp_path / "table.md", reference_mmd=0.01)
    table = (tmp_path / "table.md").read_text()
    assert "| MIRI (4 rounds) | 90 | 0.02 | 0.0005 | 20 | 0.5 | 0.14 | 4 |" in table
    assert "| MIRI best round (round 3) | — | — | 0.0005 | 20 | 0.5 | 0.11 | 3 |" in table  # FID: last round only
    check = bench.CHECK_NAMES["mi_at_most_half_sigma04"]
    assert f"| 1 | last (4) | {check} | 0.15 | 0.14 | +0.01 | pass |" in table
    assert f"| 1 | best (3) | {check} | 0.15 | 0.11 | +0.04 | pass |" in table
    assert table.count("| all | | | | **pass** |") == 2
