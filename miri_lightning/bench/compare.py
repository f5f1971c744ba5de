"""MIRI against simple baselines on the same images and masks, over mask settings and seeds.

    miri-bench compare --npz ../shared/data/mnist32_uint8.npz --num-images 1000 \
        --config configs/mnist_cpu.yaml --masks mcar60 boxes strokes --seeds 1 2 3 --out docs/benchmarks

CelebA-64, RGB, with the CelebA protocol's masks (`mcar60c`: each channel of a pixel missing on its own):

    miri-bench compare --npz ../shared/data/celeba64_uint8.npz --num-images 1000 \
        --config configs/celeba_cpu.yaml --masks mcar60c --seeds 1 --out docs/benchmarks/celeba

For every (mask setting, seed): the masks are drawn once; the baselines (the
noise fill, the per-entry observed mean, normalised Gaussian interpolation,
wide and narrow, 5-nearest neighbours over mutually observed entries) are
scored on them: MMD, PSNR and SSIM against the truth, and the mask information
(how much a fill gives away where entries were missing; `--mi-steps`
classifier steps, the mean over `--mi-seeds` seeds, 0 steps skips it). Then
`train.py --config CONFIG` runs on the same images and masks with the same
mask-information settings, and its rounds.jsonl gives MIRI's metrics per round
with the wall time; MIRI's last round, and its best round where the run
records one (`best_round`), are checked against targets set by the fills
(`targets`). Writes `results.json`, `table.md` (mean and spread over seeds,
then the targets per seed with their margins), `rounds.png` (MIRI's PSNR and
MMD against round and against wall time, baselines as lines) and the last
run's grid. The plot needs matplotlib (`pip install -e '.[bench]'`): without
it, the script says so at the start and writes everything else.
`--baselines-only` skips MIRI, the targets and the plot.

Multiple imputation (`--draws K`, 8 by default, 0 skips it): the trained
run imputes every image K times afresh (round 0's fill with seeds 0..K-1,
then v_1 ... v_T), when its fill is random (`data.fill.keep` < 1, `data.fill.noise` > 0 or the
noise fill). Reported beside the baselines: one draw's MMD and PSNR, the
PSNR of the mean of the K draws, the share of missing entries whose truth
lies in the draws' 90 % prediction interval (and in their own 5 % to 95 %
quantiles, which are too narrow for 90 % with few draws), the share inside
the interval calibrated without ground truth (`MIRIImputer.calibrate` on the
first `--calibration-images` images; 0 skips it), the intervals' mean
widths, and the correlation between an entry's spread over the draws and the
mean's absolute error. It costs K re-imputations of the collection through
every round, and K of the calibration images (`--draws-precision bf16`
halves that on CPUs with AVX512-BF16).

Cost at 64x64 (the baselines on 1,000 CelebA images, one mask setting and
seed): about 3 CPU-minutes and 4.8 GB, mostly the mask information (5 fills x
3 seeds x 1,000 steps of a small classifier). On CPU cores shared with other
jobs, set OMP_NUM_THREADS=1: measured on 2 busy cores, 5.5 minutes with it
and 23 without (two threads waiting on each other in every small step). The
5-nearest neighbours take seconds here (about 200 s and 4.4 GB at 5,000
images: quadratic in them); `--skip-knn` leaves them out.

Beside them, the MMD between two random halves of the true images: how far
apart two samples of the same distribution, of half the size, read on this
metric. An imputation is scored against its own truth (they share the
observed entries), so it can read lower than that, but differences far below
it say little.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from miri_lightning.baselines import interpolation_fill, knn_fill, mean_fill, noise_fill
from miri_lightning.callbacks.reporting import GRIDS_DIR
from miri_lightning.checkpoints import run_checkpoint
from miri_lightning.data.masks import MCAR, RandomBoxes, Strokes
from miri_lightning.data.sources import NpzImages
from miri_lightning.draws import calibration, draw_mean
from miri_lightning.inference import MIRIImputer
from miri_lightning.io import atomic_path
from miri_lightning.metrics import MI_STEPS, collection_metrics, missing_rmse, mmd_rbf, psnr
from miri_lightning.realism import INSTALL_HINT, Realism, load_inception
from miri_lightning.runs import read_rounds

# Mask settings: (mechanism class, its arguments). A mask that is the same for
# every image (one centred box) is left out on purpose: nothing trained on the
# incomplete data alone can learn pixels that no image shows.
MASKS = {
    "mcar60": (MCAR, {"missing_rate": 0.6, "per_channel": False}),  # stated: a config's per_channel would merge in
    "mcar60c": (MCAR, {"missing_rate": 0.6, "per_channel": True}),  # CelebA's protocol: each channel on its own
    "mcar80": (MCAR, {"missing_rate": 0.8}),
    "boxes": (RandomBoxes, {"num_boxes": 1, "min_size": 0.25, "max_size": 0.5}),
    "strokes": (Strokes, {"num_strokes": 4}),
}
SIGMA_1, SIGMA_04 = "Gaussian interpolation (sigma 1)", "Gaussian interpolation (sigma 0.4)"
KNN = "5-nearest neighbours"
BASELINES = {
    "noise fill": lambda x, m, seed: noise_fill(x, m, seed),
    "per-entry mean": lambda x, m, seed: mean_fill(x, m),
    SIGMA_1: lambda x, m, seed: interpolation_fill(x, m, sigma=1.0),
    # Almost the mean of the nearest observed neighbours: a neighbour at distance 1 weighs 23 times one at sqrt(2).
    SIGMA_04: lambda x, m, seed: interpolation_fill(x, m, sigma=0.4),
    KNN: lambda x, m, seed: knn_fill(x, m, k=5),
}
PSNR_SLACK_DB = 3.0  # target (d): MIRI may trail the wide interpolation's PSNR by this much
KID_RATIO = 0.7  # target (f): MIRI's KID at most this share of the better interpolation's
MATPLOTLIB_MISSING = ("matplotlib is not installed: rounds.png will be skipped, everything else runs "
                      "(to get the plot: pip install -e '.[bench]', or pip install matplotlib)")


def measured(metrics: dict, mi_steps: int) -> dict:
    """`metrics` with the mask information None where --mi-steps 0 skipped it (it reads 0.0: not 0 bits)."""
    return metrics if mi_steps else {**metrics, "mutual_information": None}


def realism_of(realism: Realism | None, imputed: torch.Tensor, prefix: str = "") -> dict:
    """FID, KID and KID's spread over subsets of all the images, or the first --realism-images (keys after
    `prefix`), or nothing without the extra."""
    if realism is None:
        return {}
    count = min(len(imputed), len(realism.truth))  # --realism-images: the first images only
    return {prefix + key: value for key, value in realism(imputed, (count,))[0].items()}


def score_baselines(images: torch.Tensor, masks: torch.Tensor, seed: int, methods: list[str], args,
                    realism: Realism | None = None) -> dict:
    """Each fill's metrics on all the images, with the estimator (steps, seeds) MIRI's rounds use."""
    scores = {}
    for method in methods:
        start = time.perf_counter()
        imputed = BASELINES[method](images, masks, seed)
        seconds = time.perf_counter() - start  # the fill's, not the scoring's
        metrics = collection_metrics(imputed, masks, images, max_images=len(images), mi_steps=args.mi_steps,
                                     mi_seeds=args.mi_seeds)
        scores[method] = {**measured(metrics, args.mi_steps), **realism_of(realism, imputed), "seconds": seconds}
    return scores


def truth_halves_mmd(images: torch.Tensor, seed: int = 0) -> float:
    """MMD between two random halves of the true images: the metric's reading for two samples of one distribution."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    half = len(images) // 2
    return mmd_rbf(images[order[:half]], images[order[half:2 * half]])


def realism_overrides(args) -> list[str]:
    """The run's FID/KID settings: every round on --fid-images; with --realism-images N, every round on the
    first N (the baselines' images) and nothing more at the end."""
    if args.realism_images and args.fid_images:
        return ["--rounds.fid_images", str(args.realism_images), "--rounds.fid_all", "false"]
    return ["--rounds.fid_images", str(args.fid_images)]


def run_miri(args, mask_name: str, seed: int, run_dir: Path) -> list[dict]:
    cls, kwargs = MASKS[mask_name]
    # Every seed stated, not left to --seed_everything: a config that states one must not move MIRI's masks
    # off the baselines'.
    mask = {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": {**kwargs, "seed": seed}}
    source = {"class_path": "miri_lightning.data.sources.NpzImages",
              "init_args": {"path": str(Path(args.npz).resolve()), "num_images": args.num_images}}
    # The baselines' --mi-steps, --mi-seeds and all the images: MIRI's mask information reads on their scale.
    cmd = [sys.executable, "-m", "miri_lightning", "--config", str(args.config.resolve()),
           "--data.source", json.dumps(source), "--data.mask", json.dumps(mask), "--seed_everything", str(seed),
           "--data.seed", str(seed), "--model.seed", str(seed), "--trainer.default_root_dir", str(run_dir.resolve()),
           "--logging.backend", "csv", "--trainer.enable_progress_bar", "false",
           "--rounds.metrics_max_images", str(args.num_images), "--rounds.mi_steps", str(args.mi_steps),
           "--rounds.mi_seeds", str(args.mi_seeds), *realism_overrides(args), *args.overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rounds = [measured(record, args.mi_steps) for record in read_rounds(run_dir)]
    if args.realism_images:  # every round was scored on the images the baselines are scored on
        for r in rounds:
            if "fid" in r:
                r.update(fid_all=r["fid"], kid_all=r["kid"], fid_all_images=r["fid_images"])
    elapsed = 0.0
    for r in rounds:
        elapsed += r["train_seconds"] + r["impute_seconds"]
        r["wall_seconds"] = elapsed
    return rounds


def _check(value: float | None, limit: float | None, at_most: bool) -> dict:
    """One target: the margin is how far inside the limit the value is (negative: outside); None: not measured."""
    margin = None if value is None or limit is None else (limit - value if at_most else value - limit)
    return {"value": value, "limit": limit, "margin": margin, "pass": None if margin is None else margin >= 0}


def targets(rounds: list[dict], baselines: dict, record: dict) -> dict:
    """MIRI's round `record` (and the run's `rounds`) against the fills on the same masks:

    (a) mask information at most half the sigma-0.4 interpolation's;
    (b) no round after round 2 with more mask information than MIRI's own round 0 (the fill);
    (c) MMD at most the sigma-0.4 interpolation's;
    (d) PSNR at least the sigma-1 interpolation's minus PSNR_SLACK_DB;
    (e) FID below the better (lower) of the two interpolations' and (f) KID at most KID_RATIO times the
        better of theirs, on all the images (`fid_all`, scored at the run's last round only).
    (a) and (b) are not judged (None) without mask information (--mi-steps 0), nor (b) before round 3, nor
    (e) and (f) without FID (the `fid` extra); they are left out for a round other than the last.
    """
    sharp_information = baselines[SIGMA_04]["mutual_information"]
    later = [r["mutual_information"] for r in rounds if r["round"] > 2]
    checks = {
        "mi_at_most_half_sigma04": _check(record["mutual_information"],
                                          None if sharp_information is None else sharp_information / 2, at_most=True),
        "no_mi_rise_after_round_2": _check(max(later) if later and None not in later else None,
                                           rounds[0]["mutual_information"], at_most=True),
        "mmd_at_most_sigma04": _check(record["mmd"], baselines[SIGMA_04]["mmd"], at_most=True),
        "psnr_at_least_sigma1_minus_3db": _check(record["psnr"], baselines[SIGMA_1]["psnr"] - PSNR_SLACK_DB,
                                                 at_most=False),
    }
    if record is rounds[-1]:
        checks["fid_below_interpolation"] = _check(record.get("fid_all"), best_interpolation(baselines, "fid"),
                                                   at_most=True)
        checks["kid_at_most_07_interpolation"] = _check(record.get("kid_all"),
                                                        _scaled(best_interpolation(baselines, "kid")), at_most=True)
    verdicts = [c["pass"] for c in checks.values()]
    overall = False if False in verdicts else None if None in verdicts else True
    return {"round": record["round"], "checks": checks, "pass": overall}


def best_interpolation(baselines: dict, key: str) -> float | None:
    """The lower of the two interpolations' `key` (FID or KID), or None where it was not scored."""
    values = [baselines[name].get(key) for name in (SIGMA_1, SIGMA_04)]
    return None if None in values else min(values)


def _scaled(kid: float | None) -> float | None:
    return None if kid is None else KID_RATIO * kid


def find_round(rounds: list[dict], number: int) -> dict:
    return next(r for r in rounds if r["round"] == number)


def miri_targets(rounds: list[dict], baselines: dict) -> dict:
    """The targets for MIRI's last round and, where the run records one, for its best round (the one it keeps)."""
    out = {"last": targets(rounds, baselines, rounds[-1])}
    best = rounds[-1].get("best_round")
    if best is not None:
        out["best"] = targets(rounds, baselines, find_round(rounds, best))
    return out


def summary(values: list[float | None]) -> str:
    if None in values:
        return "—"  # not measured (--mi-steps 0)
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3g} ± {spread:.2g}" if len(values) > 1 else f"{mean:.3g}"


TABLE_KEYS = ("fid", "kid", "mmd", "psnr", "ssim", "mutual_information")
CHECK_NAMES = {"mi_at_most_half_sigma04": "(a) mask information <= half the sigma-0.4 fill's",
               "no_mi_rise_after_round_2": "(b) max mask information after round 2 <= round 0's",
               "mmd_at_most_sigma04": "(c) MMD <= the sigma-0.4 fill's",
               "psnr_at_least_sigma1_minus_3db": f"(d) PSNR >= the sigma-1 fill's - {PSNR_SLACK_DB:g} dB",
               "fid_below_interpolation": "(e) FID < the better interpolation's",
               "kid_at_most_07_interpolation": f"(f) KID <= {KID_RATIO:g} x the better interpolation's"}


def score_draws(run_dir: Path, images: torch.Tensor, masks: torch.Tensor, k: int, precision: str = "32",
                calibration_images: int = 250, realism: Realism | None = None) -> dict | None:
    """One draw, the mean of `k` and how well their spread predicts the error, before and after calibrating
    on the first `calibration_images` images (seeds apart from the draws'); None where draws cannot differ."""
    imputer = MIRIImputer.load(run_checkpoint(run_dir), precision=precision)
    if not imputer.stochastic:
        return None
    start = time.perf_counter()
    scale = (imputer.calibrate(images[:calibration_images], masks[:calibration_images], num_samples=k,
                               level=0.9, seed=1000) if calibration_images else None)
    draws = imputer.impute(images, masks, num_samples=k)
    mean = draw_mean(draws, masks)
    return {"draws": k, "one_draw_mmd": mmd_rbf(draws[0], images),
            "one_draw_psnr": psnr(missing_rmse(draws[0], images, masks)),
            "mean_psnr": psnr(missing_rmse(mean, images, masks)),
            **calibration(draws, masks, images, level=0.9, scale=scale),
            **realism_of(realism, draws[0], "one_draw_"), **realism_of(realism, mean, "mean_"),
            "seconds": time.perf_counter() - start}


def draws_lines(per_seed: list[dict]) -> list[str]:
    """The multiple-imputation table, one row per seed."""
    rows = [s for s in per_seed if s.get("draws")]
    if not rows:
        return []
    lines = [f"Multiple imputation ({rows[0]['draws']['draws']} draws of every image; the share of the truth "
             "inside the 90 % prediction interval, inside it calibrated without ground truth, and inside the "
             "draws' 5 % to 95 % quantiles, with the intervals' mean widths; and the correlation between "
             "spread and the mean's error):", "",
             "| seed | one draw: FID, KID | mean of draws: FID, KID | one draw: MMD | one draw: PSNR (dB) | "
             "mean of draws: PSNR (dB) | coverage (width) | calibrated coverage (width; scale) | "
             "coverage of the quantiles | spread-error correlation |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        d = s["draws"]
        calibrated = (f"{d['calibrated_coverage']:.3f} ({d['calibrated_width']:.3f}; {d['scale']:.2f})"
                      if "scale" in d else "—")
        realism = [f"{number(d.get(which + 'fid'))}, {number(d.get(which + 'kid'))}" for which in ("one_draw_", "mean_")]
        lines.append(f"| {s['seed']} | {realism[0]} | {realism[1]} | {d['one_draw_mmd']:.3g} | {d['one_draw_psnr']:.2f} | {d['mean_psnr']:.2f} | "
                     f"{d['coverage']:.3f} ({d['width']:.3f}) | {calibrated} | {d['quantile_coverage']:.3f} | "
                     f"{d['spread_error_correlation']:.3f} |")
    return lines + [""]


def table_value(record: dict, key: str) -> float | None:
    """A record's `key`; for a round of MIRI, FID and KID on all the images (`fid_all`: its last round only),
    the images the baselines are scored on; None (shown as —) where not measured."""
    if key in ("fid", "kid") and "round" in record:
        return record.get(f"{key}_all")
    return record.get(key)


def method_row(name: str, records: list[dict], time_key: str) -> str:
    cells = [summary([table_value(r, k) for r in records]) for k in (*TABLE_KEYS, time_key)]
    return f"| {name} | {' | '.join(cells)} |"


def miri_rows(per_seed: list[dict]) -> list[str]:
    rows = [method_row(f"MIRI ({len(per_seed[0]['miri']) - 1} rounds)", [s["miri"][-1] for s in per_seed],
                       "wall_seconds")]
    if all("best" in s["targets"] for s in per_seed):
        best = [find_round(s["miri"], s["targets"]["best"]["round"]) for s in per_seed]
        rounds = ", ".join(str(r["round"]) for r in best)
        rows.append(method_row(f"MIRI best round (round {rounds})", best, "wall_seconds"))
    return rows


def verdict_word(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}[passed]


def number(value: float | None, signed: bool = False) -> str:
    return "—" if value is None else f"{value:+.3g}" if signed else f"{value:.3g}"


def targets_lines(per_seed: list[dict]) -> list[str]:
    lines = ["MIRI against the targets (margin > 0: inside the limit):", "",
             "| seed | round | target | limit | value | margin | verdict |", "|---|---|---|---|---|---|---|"]
    for s in per_seed:
        for which, verdict in s["targets"].items():
            if which == "best" and verdict["round"] == s["targets"]["last"]["round"]:
                continue  # the same rows again
            for key, c in verdict["checks"].items():
                lines.append(f"| {s['seed']} | {which} ({verdict['round']}) | {CHECK_NAMES[key]} | "
                             f"{number(c['limit'])} | {number(c['value'])} | {number(c['margin'], signed=True)} | "
                             f"{verdict_word(c['pass'])} |")
            lines.append(f"| {s['seed']} | {which} ({verdict['round']}) | all | | | | "
                         f"**{verdict_word(verdict['pass'])}** |")
    return lines + [""]


def write_table(results: dict, path: Path, reference_mmd: float, reference_realism: dict | None = None,
                realism_images: int = 0) -> None:
    lines = [f"MMD between two random halves of the true images: {reference_mmd:.3g}", ""]
    if realism_images:
        lines[-1:-1] = [f"FID and KID of every method on the first {realism_images} images only (--realism-images)."]
    if reference_realism:
        lines[-1:-1] = [f"FID and KID between the same two halves (the floor for two samples of one distribution "
                        f"at half the images): {reference_realism['fid']:.3g}, {reference_realism['kid']:.3g}"]
    for mask_name, per_seed in results.items():
        lines += [f"### {mask_name} ({len(per_seed)} seed(s))", "",
                  "| method | FID | KID | MMD | PSNR over missing (dB) | SSIM | mask information (bits) | wall time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for method in per_seed[0]["baselines"]:
            lines.append(method_row(method, [s["baselines"][method] for s in per_seed], "seconds"))
        if "miri" in per_seed[0]:
            lines += miri_rows(per_seed) + [""] + targets_lines(per_seed) + draws_lines(per_seed)
        lines.append("")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None where matplotlib (the `bench` extra) is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(results: dict, path: Path, plt) -> None:
    fig, axes = plt.subplots(len(results), 4, figsize=(16, 3.5 * len(results)), squeeze=False)
    for row, (mask_name, per_seed) in enumerate(results.items()):
        for col, (metric, x_key) in enumerate([("psnr", "round"), ("psnr", "wall_seconds"),
                                               ("mmd", "round"), ("mmd", "wall_seconds")]):
            ax = axes[row, col]
            for s in per_seed:
                ax.plot([r[x_key] for r in s["miri"]], [r[metric] for r in s["miri"]], "o-",
                        label=f"MIRI seed {s['seed']}")
            for i, (method, value) in enumerate(per_seed[0]["baselines"].items()):
                ax.axhline(value[metric], ls="--", lw=1, color=f"C{i + 4}", label=method)
            ax.set(xlabel=x_key.replace("_", " "), ylabel=metric, title=mask_name, yscale="log" if metric == "mmd" else "linear")
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="miri-bench compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", required=True, help=".npz with an `images` array (N,H,W[,C])")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--config", type=Path, default=Path("configs/mnist_cpu.yaml"))
    p.add_argument("--masks", nargs="+", choices=sorted(MASKS), default=["mcar60"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--baselines-only", action="store_true")
    p.add_argument("--skip-knn", action="store_true", help="leave out the 5-nearest neighbours (quadratic in images)")
    p.add_argument("--mi-steps", type=int, default=MI_STEPS,
                   help="mask-information classifier steps, for the baselines and MIRI alike (0 skips it)")
    p.add_argument("--mi-seeds", type=int, default=3,
                   help="mask-information classifier seeds (the estimate is their mean), baselines and MIRI alike")
    p.add_argument("--draws", type=int, default=8,
                   help="draws of every image by the trained run, for multiple imputation (0 skips them)")
    p.add_argument("--draws-precision", choices=["32", "bf16", "16"], default="32",
                   help="the draws' autocast precision (bf16 is what CPU training uses where the CPU has it)")
    p.add_argument("--calibration-images", type=int, default=250,
                   help="images the draws' interval is calibrated on (the collection's first; 0 skips it)")
    p.add_argument("--fid-images", type=int, default=250,
                   help="MIRI's per-round FID/KID subset (rounds.fid_images; the baselines and MIRI's last round "
                        "are scored on all the images; 0 skips FID/KID, which need the `fid` extra)")
    p.add_argument("--realism-images", type=int, default=0,
                   help="score FID/KID of the baselines and of every round of MIRI on the first this-many images "
                        "only (0: --fid-images and all the images, as above); each image costs an InceptionV3 "
                        "pass, about 0.18 s on 2 CPU cores, so 5,000 images are some 15 minutes a collection")
    p.add_argument("overrides", nargs="*", help="train.py overrides for MIRI, after --")
    return p.parse_args(argv)


def run_seed(args, images: torch.Tensor, mask_name: str, seed: int, methods: list[str],
             realism: Realism | None) -> dict:
    cls, kwargs = MASKS[mask_name]
    masks = cls(**kwargs, seed=seed)(images)
    entry = {"seed": seed, "baselines": score_baselines(images, masks, seed, methods, args, realism)}
    if not args.baselines_only:
        run_dir = args.out / "runs" / f"{mask_name}_seed{seed}"
        entry["miri"] = run_miri(args, mask_name, seed, run_dir)
        entry["targets"] = miri_targets(entry["miri"], entry["baselines"])
        if args.draws >= 2:
            entry["draws"] = score_draws(run_dir, images, masks, args.draws, args.draws_precision,
                                         args.calibration_images, realism)
        grids = sorted((run_dir / GRIDS_DIR).glob("*.png"))
        shutil.copy(grids[-1], args.out / f"grid_{mask_name}.png")
    return entry


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Checked before hours of baselines: what the runs need.
    if not args.baselines_only and not args.config.is_file():
        sys.exit(f"error: --config {args.config}: no such file (a config, e.g. configs/cifar10_cpu.yaml, "
                 "from the repository root)")
    if args.realism_images == 1 or args.realism_images < 0:
        sys.exit(f"error: --realism-images must be 0 (all) or at least 2, got {args.realism_images}")
    # Checked now, not after the runs: a missing plotting library must not end hours of work in a traceback.
    plt = None if args.baselines_only else pyplot()
    if not args.baselines_only and plt is None:
        print(MATPLOTLIB_MISSING, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    images = NpzImages(args.npz, num_images=args.num_images).load().images
    reference_mmd = truth_halves_mmd(images)
    features = load_inception() if args.fid_images else None
    if args.fid_images and features is None:
        print(INSTALL_HINT, flush=True)
    realism_truth = images[:args.realism_images] if args.realism_images else images
    realism = Realism(features, realism_truth) if features is not None else None  # the truth's features, once
    reference_realism = realism.halves() if realism is not None else None
    methods = [m for m in BASELINES if not (args.skip_knn and m == KNN)]
    results = {}
    for mask_name in args.masks:
        results[mask_name] = []
        for seed in args.seeds:
            entry = run_seed(args, images, mask_name, seed, methods, realism)
            results[mask_name].append(entry)
            print(json.dumps({"mask": mask_name, **entry})[:400], flush=True)
    with atomic_path(args.out / "results.json") as tmp:  # the runs behind it may have taken hours
        tmp.write_text(json.dumps({"truth_halves_mmd": reference_mmd, "truth_halves_realism": reference_realism,
                                   "mi_steps": args.mi_steps, "realism_images": args.realism_images or None,
                                   "mi_seeds": args.mi_seeds, "masks": results}, indent=1))
    write_table(results, args.out / "table.md", reference_mmd, reference_realism, args.realism_images)
    print((args.out / "table.md").read_text())
    if plt is not None:
        try:
            write_plot(results, args.out / "rounds.png", plt)
        except Exception as error:  # the results are saved: a plotting failure must not end the run in a traceback
            print(f"rounds.png not written ({error!r}); results.json and table.md are", file=sys.stderr)
