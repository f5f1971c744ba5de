"""Where a run's imputations stop looking real: FID, KID and speckle by round, by solver and over draws.

    python scripts/realism_probe.py RUN_DIR --npz ../shared/data/cifar10_uint8.npz --num-images 1000 \
        --new-images 300 --out docs/benchmarks/probe.json

For a finished `train.py` run on the first `--num-images` images of `--npz`:

- the collection, round by round (each round's checkpoint holds its
  imputations): FID and KID of its first `--fid-images` against their truth,
  `speckle` (high-frequency energy at missing entries over the truth's: above
  1 is noise the photos do not have), PSNR and MMD;
- `--new-images` images the run never saw (the rows after the collection,
  masks drawn like the run's with a new seed), imputed by the run's chain:
  after each round (v_1 ... v_t), with the trained solver, with `--rk4-steps`
  RK4 steps a round (the solve's discretisation error removed), and as the mean
  of `--draws` draws (what varies from draw to draw averaged away);
- the Gaussian interpolations (sigma 1 and 0.4) on the same new images and masks;
- with `--grid PNG`, the first `--grid-images` new images at 4x (nearest):
  rows masked input, sigma-1 interpolation, round 0's fill, the chain, truth.

If more solver steps change nothing, the speckle is the velocity field's,
not the solve's; if the mean of draws loses it, it varies between draws.
Needs the `fid` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from miri_lightning.baselines import interpolation_fill
from miri_lightning.checkpoints import DATA_STATE_MARK, read_checkpoint, run_checkpoint
from miri_lightning.data.masks import MCAR
from miri_lightning.data.sources import NpzImages
from miri_lightning.draws import draw_mean
from miri_lightning.flow import solve_batches
from miri_lightning.grids import show_missing, to_rgb
from miri_lightning.io import save_png
from miri_lightning.inference import MIRIImputer
from miri_lightning.io import atomic_path
from miri_lightning.metrics import mask_information, missing_rmse, mmd_rbf, psnr, speckle
from miri_lightning.realism import INSTALL_HINT, Realism, load_inception


def collection_at(run: Path, t: int) -> torch.Tensor:
    """Round t's imputations of the run's collection, from its round checkpoint."""
    data = read_checkpoint(run_checkpoint(run, t))
    state = next(v for v in data.values() if isinstance(v, dict) and DATA_STATE_MARK in v)
    return state["imputations"].float()


def scores(realism: Realism, imputed: torch.Tensor, truth: torch.Tensor, masks: torch.Tensor) -> dict:
    fid = realism(imputed, (len(imputed),))[0]
    return {"fid": fid["fid"], "kid": fid["kid"], "speckle": speckle(imputed, truth, masks),
            "psnr": psnr(missing_rmse(imputed, truth, masks)), "mmd": mmd_rbf(imputed, truth)}


def line(name: str, s: dict) -> str:
    extra = "".join(f" {key} {value:.4f} |" for key, value in s.items() if key.startswith("mi_"))
    return (f"| {name} | {s['fid']:.1f} | {s['kid']:.4f} | {s['speckle']:.3f} | {s['psnr']:.2f} | "
            f"{s['mmd']:.3g} |{extra}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--npz", required=True)
    p.add_argument("--num-images", type=int, default=1000, help="the run's collection: the file's first rows")
    p.add_argument("--fid-images", type=int, default=300, help="the collection's images scored each round")
    p.add_argument("--new-images", type=int, default=300, help="rows after the collection, imputed afresh (0: none)")
    p.add_argument("--per-channel", action="store_true", help="the new masks hide each channel on its own")
    p.add_argument("--missing-rate", type=float, default=0.6)
    p.add_argument("--mask-seed", type=int, default=1000)
    p.add_argument("--rk4-steps", type=int, default=8)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--skip-rounds", action="store_true", help="leave out the collection's rounds")
    p.add_argument("--mi", nargs=2, type=int, action="append", metavar=("STEPS", "WIDTH"), default=[],
                   help="also estimate the collection's mask information by round with a classifier of this many "
                        "steps and hidden channels (on all --num-images; repeatable)")
    p.add_argument("--grid", type=Path, help="a PNG of the first --grid-images new images at 4x")
    p.add_argument("--grid-images", type=int, default=8)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    features = load_inception()
    if features is None:
        sys.exit(INSTALL_HINT)
    imputer = MIRIImputer.load(run_checkpoint(args.run))
    rows = ["| imputations | FID | KID | speckle | PSNR (dB) | MMD |", "|---|---|---|---|---|---|"]
    out = {"run": str(args.run), "collection": [], "new": {}}

    images = NpzImages(args.npz, num_images=args.num_images + args.new_images).load().images
    if not args.skip_rounds:
        k = args.fid_images
        truth = images[:k]
        with np.load(args.run / "imputations.npz") as f:
            all_masks = torch.from_numpy(f["masks"]).permute(0, 3, 1, 2).bool()
        masks = all_masks[:k]
        realism = Realism(features, truth)
        for t in range(len(imputer.round_weights) + 1):
            path = run_checkpoint(args.run, t)
            if t and not path.exists():
                continue
            # round 0: a fill like the run's (its random draw may differ)
            collection = collection_at(args.run, t) if t else imputer.fill(images[:len(all_masks)], all_masks, seed=0)
            imputed = collection[:k]
            s = scores(realism, imputed, truth, masks)
            for steps, width in args.mi:
                s[f"mi_{steps}_{width}"] = mask_information(collection, all_masks, steps=steps, width=width)
            out["collection"].append({"round": t, **s})
            rows.append(line(f"collection, round {t}" + (" (a fresh fill)" if not t else ""), s))
            print(rows[-1], flush=True)

    if not args.new_images:
        return finish(args, out, rows)
    new = images[args.num_images:]
    masks = MCAR(missing_rate=args.missing_rate, per_channel=args.per_channel, seed=args.mask_seed)(new)
    realism = Realism(features, new)

    def record(name: str, imputed: torch.Tensor) -> None:
        out["new"][name] = scores(realism, imputed, new, masks)
        rows.append(line(f"new images: {name}", out["new"][name]))
        print(rows[-1], flush=True)

    record("Gaussian interpolation (sigma 1)", interpolation_fill(new, masks, sigma=1.0))
    record("Gaussian interpolation (sigma 0.4)", interpolation_fill(new, masks, sigma=0.4))
    z = fill = imputer.initial_fill(new, masks.bool(), seed=0)
    record("round 0 (the fill)", z)
    for t, weights in enumerate(imputer.round_weights, start=1):  # the chain, scored after each round
        imputer.net.load_state_dict(weights)
        z, _ = solve_batches(imputer.net, z, masks.bool().expand_as(new), imputer.solver, 256, imputer.device)
        record(f"chain to round {t} ({imputer.solver.method}, {imputer.solver.steps} steps)", z)
    if args.grid:
        k = args.grid_images
        panels = [show_missing(new[:k], masks[:k]), interpolation_fill(new[:k], masks[:k], sigma=1.0), fill[:k], z[:k],
                  new[:k]]
        grid = make_grid(torch.cat([to_rgb(panel) for panel in panels]), nrow=k, padding=1, pad_value=1.0)
        save_png(args.grid, grid.repeat_interleave(4, 1).repeat_interleave(4, 2))
    record(f"chain, rk4 {args.rk4_steps} steps a round", imputer.impute(new, masks, method="rk4", steps=args.rk4_steps))
    if imputer.stochastic and args.draws > 1:
        draws = imputer.impute(new, masks, num_samples=args.draws)
        record(f"chain, mean of {args.draws} draws", draw_mean(draws, masks))
        record("chain, draw 2", draws[1])
    finish(args, out, rows)


def finish(args, out: dict, rows: list[str]) -> None:
    print("\n".join(rows))
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({**out, "table": rows}, indent=1))


if __name__ == "__main__":
    main()
