"""The benchmark scripts end to end on tiny runs: they run, and what they report is consistent."""

import importlib.util
import json
import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, read_imputations, read_rounds, run_cli, run_script

# TINY without its config: the scripts name their own.
OVERRIDES = TINY[2:]


def script(name: str, *args) -> str:
    return run_script(ROOT / "scripts" / name, *args)


def bench_command(command: str, *args) -> str:
    """`miri-bench COMMAND args`, as a user runs it (in a subprocess)."""
    return run_script("-m", "miri_lightning.bench", command, *args)


@pytest.mark.slow
def test_bench_speed_reports_throughput_flops_and_ratios(tmp_path):
    out = tmp_path / "speed.json"
    script("bench_speed.py", "--skip-quality", "--steps", "4", "--rounds", "1", "--peak-tflops", "1",
           "--out", out, "--", *OVERRIDES, "--trainer.accelerator", "cpu")
    result = json.loads(out.read_text())
    ours, base = result["ours"]["throughput"], result["baseline"]["throughput"]
    for figures in (ours, base):
        assert figures["train_images_per_second"] > 0 and figures["train_tflops"] > 0
        assert figures["train_share_of_peak"] == figures["train_tflops"]  # a peak of 1 TFLOP/s
    # TINY's 2 steps for both: Euler (2 evaluations of the network) against midpoint (4)
    assert base["solve_tflops"] / base["impute_images_per_second"] == pytest.approx(
        0.5 * ours["solve_tflops"] / ours["impute_images_per_second"], rel=0.01)
    assert result["ratios"]["impute_images_per_second"] == pytest.approx(
        ours["impute_images_per_second"] / base["impute_images_per_second"], rel=0.01)


@pytest.mark.slow
def test_bench_solvers_rescores_a_round_of_a_finished_run(tmp_path):
    run = run_cli(tmp_path / "run", "--rounds.num_rounds", "2", "--rounds.steps", "4")
    out = tmp_path / "solvers.json"
    bench_command("solvers", "--run", run, "--round", "2", "--solvers", "midpoint:2", "euler:3", "--out", out)
    results = {r["solver"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"midpoint:2", "euler:3"}
    # the run's own round 2 used 2 midpoint steps in float32: the re-solve gives its MMD back
    assert results["midpoint:2"]["mmd"] == pytest.approx(read_rounds(run)[2]["mmd"], rel=1e-3)


@pytest.mark.slow
def test_profile_step_times_the_bare_and_the_train_py_step(tmp_path):
    out = tmp_path / "profile.json"
    script("profile_step.py", "--steps", "2", "--round-steps", "2", "--top", "5", "--out", out, "--", *OVERRIDES,
           "--trainer.accelerator", "cpu")
    result = json.loads(out.read_text())
    assert result["batch_size"] == 16
    assert result["bare_step_ms"] > 0 and result["train_step_ms"] > 0
    assert result["ops_per_step"] > 100  # a U-Net's forward, backward and AdamW: hundreds of operator calls
    assert len(result["top_own_time"]) == 5
    own = [row["seconds"] for row in result["top_own_time"]]
    assert own == sorted(own, reverse=True) and all(row["calls"] >= 1 for row in result["top_own_time"])


def load_bench_speed():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "scripts" / "bench_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("ours, baseline, expected", [
    ({"seconds": 10.0}, {"seconds": 50.0}, {"time_to_quality": 5.0}),
    # no MMD before its first round ends (at least 500 s), nor in the rounds it finished
    ({"seconds": 10.0}, {"seconds": None, "seconds_spent": 0.0}, {"time_to_quality_at_least": 50.0}),
    ({"seconds": 10.0}, {"seconds": None, "seconds_spent": 800.0}, {"time_to_quality_at_least": 80.0}),
    # ours not there after 100 s: its time is longer, the ratio smaller
    ({"seconds": None, "seconds_spent": 100.0}, {"seconds": 50.0}, {"time_to_quality_at_most": 0.5}),
])
def test_time_to_quality_ratio_or_its_bound(ours, baseline, expected):
    rates = {"train_images_per_second": 2.0, "impute_images_per_second": 3.0}
    results = {"ours": {"throughput": rates, "time_to_quality": ours},
               "baseline": {"throughput": {**rates, "recipe_round_seconds_at_least": 500.0},
                            "time_to_quality": baseline}}
    ratios = load_bench_speed().ratios(results)
    assert {k: v for k, v in ratios.items() if k.startswith("time_to_quality")} == expected


def test_recipe_round_floor_counts_the_recipe_s_steps_at_the_warm_step_time(monkeypatch, tmp_path):
    bench = load_bench_speed()
    warm = {"train_images_per_second": 100.0, "impute_images_per_second": 50.0, "peak_memory_gb": 1.0,
            "train_seconds": 9.0, "fastest_epoch_seconds": 2.0, "impute_seconds": 4.0}
    ran = []
    monkeypatch.setattr(bench, "train", lambda config, overrides: ran.append(overrides) or [{}, {}, warm])
    config = tmp_path / "recipe.yaml"
    config.write_text("rounds:\n  steps: 9000\n")
    # the script's own round settings come last, so they win over the overrides
    overrides = ["--rounds.steps", "500", "--model.optimizer.lr", "1e-3"]
    figures = bench.throughput(config, [], steps=4, rounds=2, extra=overrides)
    assert figures["recipe_round_seconds_at_least"] == 500 * 2.0 / 4 + 4.0  # the recipe as run: 500 steps
    assert ran[0][ran[0].index("--rounds.steps", 2) + 1] == "4"
    assert "recipe_round_seconds_at_least" not in bench.throughput(config, [], 3, 1, [])  # a cold round 1


@pytest.mark.slow
def test_bench_speed_levers_runs_the_chosen_lever_off_and_on(tmp_path):
    out = tmp_path / "levers.json"
    script("bench_speed.py", "--levers", "--only", "fused AdamW", "--steps", "4", "--rounds", "1",
           "--out", out, "--", *OVERRIDES, "--trainer.accelerator", "cpu")
    levers = json.loads(out.read_text())["levers"]
    assert list(levers) == ["fused AdamW"]
    lever = levers["fused AdamW"]
    assert len(lever["runs"]["off"]) == len(lever["runs"]["on"]) == 1
    assert lever["ratios"]["train_images_per_second"] == pytest.approx(
        lever["on"]["train_images_per_second"] / lever["off"]["train_images_per_second"], rel=0.01)
    assert not list(tmp_path.glob("*.tmp"))  # written whole, by rename


@pytest.mark.slow
def test_rescore_rounds_gives_a_run_its_own_figures_back_and_more_mask_information_steps(tmp_path):
    run = run_cli(tmp_path / "run", "--rounds.num_rounds", "2", "--rounds.steps", "4")
    out = tmp_path / "rescored.jsonl"
    bench_command("rescore", "--run", run, "--mi-steps", 10, "--out", out)  # the run's own steps (TINY)
    rescored = [json.loads(line) for line in out.read_text().splitlines()]
    logged = read_rounds(run)
    assert [r["round"] for r in rescored] == [0, 1, 2]
    for mine, theirs in zip(rescored, logged):
        for key in ("mmd", "psnr", "ssim", "mutual_information"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-9), (mine["round"], key)


@pytest.mark.slow
def test_bench_scale_reports_peak_memory_and_times_of_every_rank(tmp_path):
    out = tmp_path / "scale.json"
    script("bench_scale.py", "--images", 2100, "--size", 8, "--processes", 1, "--steps", 2,
           "--workdir", tmp_path / "work", "--out", out)
    result = json.loads(out.read_text())
    ranks = result["runs"]["1"]["ranks"]
    assert [r["rank"] for r in ranks] == [0]
    # the whole synthetic collection, not the first 2,000 (the default source's num_images)
    assert [r["images"] for r in ranks] == [2100]
    for rank in ranks:
        assert rank["peak_rss_gb"]["setup"] > 0 and rank["peak_rss_gb"]["impute"] > 0
        assert 0 < rank["peak_private_gb"]["setup"] <= rank["peak_private_gb"]["end"]
        assert all(rank["seconds"][stage] > 0 for stage in ("setup", "train", "impute"))
    assert result["machine"]["memory_gb"] > 0 and result["machine"]["cpus"] >= 1


@pytest.mark.slow
def test_bench_scale_can_stop_every_rank_after_training(tmp_path):
    out = tmp_path / "scale.json"
    script("bench_scale.py", "--images", 64, "--size", 8, "--processes", 2, "--steps", 2, "--skip-impute",
           "--workdir", tmp_path / "work", "--out", out)
    result = json.loads(out.read_text())
    ranks = result["runs"]["2"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and result["imputed_images"] == 0
    for rank in ranks:
        assert rank["seconds"]["train"] > 0 and rank["seconds"]["impute"] is None


@pytest.mark.slow
def test_bench_calibration_scores_the_interval_before_and_after_calibrating(tmp_path):
    run = run_cli(tmp_path / "run", "--rounds.num_rounds", "1", "--rounds.steps", "4")  # the noise fill: random draws
    images, _ = read_imputations(run)  # 16x16 RGB images in the run's shape
    npz = tmp_path / "images.npz"
    np.savez(npz, images=(images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    result = json.loads(script("bench_calibration.py", "--ckpt", run / "checkpoints" / "last.ckpt", "--npz", npz,
                               "--num-images", 40, "--subset", 30, "--calibration-images", 20, "--draws", 3,
                               "--precision", 32))
    assert result["args"]["calibration_images"] == 20 and result["scale"] > 0
    for key in ("coverage", "calibrated_coverage", "quantile_coverage"):
        assert 0 <= result[key] <= 1
    assert result["width"] > 0 and result["calibrated_width"] > 0


@pytest.mark.slow
def test_realism_probe_scores_rounds_solvers_and_draws_on_the_collection_and_new_images(tmp_path, monkeypatch):
    from conftest import stand_in

    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (60, 4, 4, 3))
    images = np.kron(coarse, np.ones((1, 4, 4, 1))).astype(np.uint8)  # 60 blocky 16x16 images
    np.savez(tmp_path / "d.npz", images=images)
    source = json.dumps({"class_path": "miri_lightning.data.sources.NpzImages",
                         "init_args": {"path": str(tmp_path / "d.npz"), "num_images": 40}})
    run = run_cli(tmp_path / "run", "--data.source", source, "--rounds.num_rounds", "2", "--rounds.steps", "3")
    spec = importlib.util.spec_from_file_location("realism_probe", ROOT / "scripts" / "realism_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    monkeypatch.setattr(probe, "load_inception", lambda: stand_in())
    out = tmp_path / "probe.json"
    monkeypatch.setattr("sys.argv", ["realism_probe.py", str(run), "--npz", str(tmp_path / "d.npz"), "--num-images",
                                     "40", "--fid-images", "20", "--new-images", "20", "--draws", "2", "--rk4-steps",
                                     "2", "--mi", "5", "8", "--grid", str(tmp_path / "g.png"), "--grid-images", "3",
                                     "--out", str(out)])
    probe.main()
    result = json.loads(out.read_text())
    assert [r["round"] for r in result["collection"]] == [0, 1, 2]
    assert all(r["fid"] >= 0 and r["speckle"] > 0 and "mi_5_8" in r for r in result["collection"])
    imputed, _ = read_imputations(run)
    assert torch.equal(probe.collection_at(run, 2), imputed)  # round 2's checkpoint: the run's last imputations
    new = result["new"]
    assert {"round 0 (the fill)", "chain, rk4 2 steps a round", "Gaussian interpolation (sigma 1)"} <= set(new)
    assert any(name.startswith("chain to round 2") for name in new)
    assert len(result["table"]) == 2 + 3 + len(new)
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (4 * (3 * 17 + 1), 4 * (5 * 17 + 1))  # 3 images, 5 rows, at 4x


@pytest.mark.slow
def test_bench_one_pass_scores_the_chain_the_student_and_the_baselines_on_new_images(tmp_path, monkeypatch):
    from conftest import stand_in
    from miri_lightning.distill import DistillConfig, distill

    rng = np.random.default_rng(0)
    images = np.kron(rng.uniform(0, 255, (60, 4, 4, 3)), np.ones((1, 4, 4, 1))).astype(np.uint8)
    np.savez(tmp_path / "d.npz", images=images)
    source = json.dumps({"class_path": "miri_lightning.data.sources.NpzImages",
                         "init_args": {"path": str(tmp_path / "d.npz"), "num_images": 40}})
    run = run_cli(tmp_path / "run", "--data.source", source, "--rounds.num_rounds", "2", "--rounds.steps", "3")
    distill(run, tmp_path / "one_pass.pt", DistillConfig(steps=5, batch_size=8, pairs_per_image=1), progress=False)
    spec = importlib.util.spec_from_file_location("bench_one_pass", ROOT / "scripts" / "bench_one_pass.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "load_inception", lambda: stand_in())
    out = tmp_path / "bench.json"
    argv = ["bench_one_pass.py", str(run), "--one-pass", str(tmp_path / "one_pass.pt"),
            "--npz", str(tmp_path / "d.npz"), "--num-images", "40", "--new-images", "20", "--draws", "2",
            "--batch-size", "8", "--speed-images", "16",
            "--mi-steps", "5"]
    monkeypatch.setattr("sys.argv", [*argv, "--out", str(out)])
    bench.main()
    result = json.loads(out.read_text())
    quality = result["quality"]
    assert {"chain, its own collection (last round)", "chain, new images", "one pass, new images",
            "one pass, mean of 2 draws", "interpolation sigma 1, new images", "interpolation sigma 0.4, new images",
            "per-entry mean, new images", "noise, new images"} == set(quality)
    keys = {"mmd", "psnr", "speckle", "mutual_information", "mutual_information_se", "fid", "kid"}
    assert all(keys <= set(row) for row in quality.values())  # the mask information over 3 classifier seeds
    # Blocky images: every imputation beats uniform noise at the missing entries.
    assert quality["one pass, new images"]["psnr"] > quality["noise, new images"]["psnr"]
    assert set(result["speed"]) == {"chain", "one pass", "chain, 100 Euler steps a round"}
    assert all(rate > 0 for rate in result["speed"].values())
    assert "chain of 2 rounds" in result["chain"] and "one-pass" in result["student"]
    # The speed alone: every quality row skipped.
    monkeypatch.setattr("sys.argv", [*argv, "--out", str(tmp_path / "speed.json"),
                                     "--skip", "chain", "one_pass", "baselines", "collection"])
    bench.main()
    alone = json.loads((tmp_path / "speed.json").read_text())
    assert alone["quality"] == {} and set(alone["speed"]) == set(result["speed"])
