"""MIRI against simple baselines on the same images and masks, over mask settings and seeds.

    python scripts/benchmark.py --npz ../shared/data/mnist32_uint8.npz --num-images 1000 \
        --config configs/mnist_cpu.yaml --masks mcar60 boxes strokes --seeds 1 2 3 --out docs/benchmarks

For every (mask setting, seed): the masks are drawn once; the baselines (the
noise fill, the per-entry observed mean, normalised Gaussian interpolation,
wide and narrow, 5-nearest neighbours over mutually observed entries) are scored on them; then
`train.py --config CONFIG` runs on the same images and masks, and its
rounds.jsonl gives MIRI's metrics per round with the wall time. Writes
`results.json`, `table.md` (mean and spread over seeds), `rounds.png`
(MIRI's PSNR and MMD against round and against wall time, baselines as lines)
and the last run's grid. `--baselines-only` skips MIRI and the plot.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from miri_lightning.baselines import interpolation_fill, knn_fill, mean_fill, noise_fill  # noqa: E402
from miri_lightning.data.masks import MCAR, RandomBoxes, Strokes  # noqa: E402
from miri_lightning.data.sources import NpzImages  # noqa: E402
from miri_lightning.io import atomic_path  # noqa: E402
from miri_lightning.metrics import mmd_rbf, missing_rmse, psnr, ssim  # noqa: E402

# Mask settings: (mechanism class, its arguments). A mask that is the same for
# every image (one centred box) is left out on purpose: nothing trained on the
# incomplete data alone can learn pixels that no image shows.
MASKS = {
    "mcar60": (MCAR, {"missing_rate": 0.6}),
    "mcar80": (MCAR, {"missing_rate": 0.8}),
    "boxes": (RandomBoxes, {"num_boxes": 1, "min_size": 0.25, "max_size": 0.5}),
    "strokes": (Strokes, {"num_strokes": 4}),
}
BASELINES = {
    "noise fill": lambda x, m, seed: noise_fill(x, m, seed),
    "per-entry mean": lambda x, m, seed: mean_fill(x, m),
    "Gaussian interpolation (sigma 1)": lambda x, m, seed: interpolation_fill(x, m, sigma=1.0),
    # Almost the mean of the nearest observed neighbours: a neighbour at distance 1 weighs 23 times one at sqrt(2).
    "Gaussian interpolation (sigma 0.4)": lambda x, m, seed: interpolation_fill(x, m, sigma=0.4),
    "5-nearest neighbours": lambda x, m, seed: knn_fill(x, m, k=5),
}


def score(imputed: torch.Tensor, truth: torch.Tensor, masks: torch.Tensor) -> dict:
    rmse = missing_rmse(imputed, truth, masks)
    return {"mmd": mmd_rbf(imputed, truth), "psnr": psnr(rmse), "rmse": rmse, "ssim": ssim(imputed, truth)}


def truth_halves_mmd(images: torch.Tensor, seed: int = 0) -> float:
    """MMD between two random halves of the true images: the metric's reading for two samples of one distribution."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    half = len(images) // 2
    return mmd_rbf(images[order[:half]], images[order[half:2 * half]])


def run_miri(args, mask_name: str, seed: int, run_dir: Path) -> list[dict]:
    cls, kwargs = MASKS[mask_name]
    mask = {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": {**kwargs, "seed": seed}}
    source = {"class_path": "miri_lightning.data.sources.NpzImages",
              "init_args": {"path": str(Path(args.npz).resolve()), "num_images": args.num_images}}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(args.config),
           "--data.source", json.dumps(source), "--data.mask", json.dumps(mask), "--seed_everything", str(seed),
           "--data.seed", str(seed), "--model.seed", str(seed), "--trainer.default_root_dir", str(run_dir),
           "--logging.backend", "csv", "--trainer.enable_progress_bar", "false",
           "--rounds.metrics_max_images", str(args.num_images), *args.overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    elapsed = 0.0
    for r in rounds:
        elapsed += r["train_seconds"] + r["impute_seconds"]
        r["wall_seconds"] = elapsed
    return rounds


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3g} ± {spread:.2g}" if len(values) > 1 else f"{mean:.3g}"


def write_table(results: dict, path: Path, reference_mmd: float) -> None:
    lines = [f"MMD between two random halves of the true images: {reference_mmd:.3g}", ""]
    for mask_name, per_seed in results.items():
        lines += [f"### {mask_name} ({len(per_seed)} seed(s))", "",
                  "| method | MMD | PSNR over missing (dB) | SSIM | wall time (s) |", "|---|---|---|---|---|"]
        methods = per_seed[0]["baselines"].keys()
        for method in methods:
            cells = [summary([s["baselines"][method][k] for s in per_seed]) for k in ("mmd", "psnr", "ssim", "seconds")]
            lines.append(f"| {method} | {' | '.join(cells)} |")
        if "miri" in per_seed[0]:
            finals = [s["miri"][-1] for s in per_seed]
            cells = [summary([f[k] for f in finals]) for k in ("mmd", "psnr", "ssim", "wall_seconds")]
            lines.append(f"| MIRI ({len(per_seed[0]['miri']) - 1} rounds) | {' | '.join(cells)} |")
        lines.append("")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 4, figsize=(16, 3.5 * len(results)), squeeze=False)
    for row, (mask_name, per_seed) in enumerate(results.items()):
        for col, (metric, x_key) in enumerate([("psnr", "round"), ("psnr", "wall_seconds"),
                                               ("mmd", "round"), ("mmd", "wall_seconds")]):
            ax = axes[row, col]
            for s in per_seed:
                if "miri" in s:
                    ax.plot([r[x_key] for r in s["miri"]], [r[metric] for r in s["miri"]], "o-",
                            label=f"MIRI seed {s['seed']}")
            for method, value in per_seed[0]["baselines"].items():
                ax.axhline(value[metric], ls="--", lw=1, color=f"C{list(per_seed[0]['baselines']).index(method) + 4}",
                           label=method)
            ax.set(xlabel=x_key.replace("_", " "), ylabel=metric, title=mask_name, yscale="log" if metric == "mmd" else "linear")
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", required=True, help=".npz with an `images` array (N,H,W[,C])")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "mnist_cpu.yaml")
    p.add_argument("--masks", nargs="+", choices=sorted(MASKS), default=["mcar60"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--baselines-only", action="store_true")
    p.add_argument("overrides", nargs="*", help="train.py overrides for MIRI, after --")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = NpzImages(args.npz, num_images=args.num_images).load().images
    reference_mmd = truth_halves_mmd(images)
    results = {}
    for mask_name in args.masks:
        cls, kwargs = MASKS[mask_name]
        results[mask_name] = []
        for seed in args.seeds:
            masks = cls(**kwargs, seed=seed)(images)
            entry = {"seed": seed, "baselines": {}}
            for method, fill in BASELINES.items():
                start = time.perf_counter()
                imputed = fill(images, masks, seed)
                seconds = time.perf_counter() - start  # the fill's, not the scoring's
                entry["baselines"][method] = {**score(imputed, images, masks), "seconds": seconds}
            if not args.baselines_only:
                run_dir = args.out / "runs" / f"{mask_name}_seed{seed}"
                entry["miri"] = run_miri(args, mask_name, seed, run_dir)
                grids = sorted((run_dir / "grids").glob("*.png"))
                shutil.copy(grids[-1], args.out / f"grid_{mask_name}.png")
            results[mask_name].append(entry)
            print(json.dumps({"mask": mask_name, **entry})[:400], flush=True)
    with atomic_path(args.out / "results.json") as tmp:  # the runs behind it may have taken hours
        tmp.write_text(json.dumps({"truth_halves_mmd": reference_mmd, "masks": results}, indent=1))
    write_table(results, args.out / "table.md", reference_mmd)
    if not args.baselines_only:  # the plot is MIRI's rounds; it needs matplotlib (the `bench` extra)
        write_plot(results, args.out / "rounds.png")
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
