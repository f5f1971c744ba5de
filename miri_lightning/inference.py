"""Impute new images with a trained run: fill them as round 0 did, then apply v_1 ... v_T in order.

    imputer = MIRIImputer.load("checkpoints/quickstart/checkpoints/last.ckpt")
    filled = imputer.impute(images, masks, seed=0)          # (N, C, H, W) in [0, 1]
    draws = imputer.impute(images, masks, num_samples=8)    # (8, N, C, H, W): multiple imputation

`load` reads a training checkpoint, a file written by `export` (only what
inference needs, optionally in half precision) or a one-pass imputer written
by `miri-distill` (one network in place of the chain), all with `weights_only`
loading: no pickled code runs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from .seeds import CALIBRATION_STREAM, seed_stream
from .draws import conformal_scale
from .fills import RoundZeroFill
from .checkpoints import data_state, miri_state, read_checkpoint
from .data.checks import check_binary, images_without_observed
from .errors import DataError
from .flow import SolverConfig, solve_batches
from .io import atomic_path
from .models.unet import UNetConfig, VelocityUNet

EXPORT_FORMAT = "miri-lightning-imputer"
EXPORT_VERSION = 1
PRECISIONS = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}
# A chain of per-round fields (train.py, miri-export), or one network distilled from one (miri-distill), stored
# as a one-round chain solved by one Euler step.
KINDS = ("chain", "one_pass")


def _from_training_checkpoint(data: dict, path: Path) -> dict:
    """The export dict of a Lightning checkpoint written by `train.py`."""
    hparams = data.get("hyper_parameters", {})
    weights = miri_state(data, path).get("round_weights")
    if not hparams.get("image_shape") or weights is None:
        raise DataError(f"{path} is not a miri-lightning checkpoint (no MIRI model or per-round weights in it)")
    if not weights:
        raise DataError(f"{path} was saved before the first round ended: it has no velocity field to apply")
    fill = RoundZeroFill.from_state(data_state(data, path))
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "image_shape": list(hparams["image_shape"]),
            "net": hparams["net"], "solver": hparams["solver"], **fill.state(),
            "round_weights": weights}


class MIRIImputer:
    """The chain of per-round velocity fields of a trained run, ready to impute new images.

    Args:
        image_shape: (C, H, W) the network was trained on.
        net: the U-Net's shape.
        round_weights: state dicts of v_1 ... v_T.
        solver: default ODE solver (overridable per call).
        fill: round 0's fill, as the training collection was filled (default: the paper's noise).
        device, precision: where and how to compute (`32`, `bf16` or `16` autocast).
        kind: `chain` (v_1 ... v_T) or `one_pass` (a `miri-distill` student: its solver is part of it).
        source: where a one-pass imputer came from, for messages.
    """

    def __init__(self, image_shape, net: UNetConfig, round_weights: list[dict], solver: SolverConfig,
                 fill: Optional[RoundZeroFill] = None, device: str | torch.device = "cpu", precision: str = "32",
                 kind: str = "chain", source: str = ""):
        if precision not in PRECISIONS:
            raise DataError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if kind not in KINDS:
            raise DataError(f"an imputer's kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind, self.source = kind, source
        self.image_shape = tuple(int(s) for s in image_shape)
        self.net_config, self.solver, self.round_weights = net, solver, round_weights
        self.fill = fill or RoundZeroFill()
        self.device, self.precision = torch.device(device), precision
        # NHWC, as training solves: 1.4 to 1.5 times the images a second on this CPU in bf16 (docs/performance.md).
        self.net = VelocityUNet(self.image_shape[0], self.image_shape[1], net).to(
            self.device, memory_format=torch.channels_last).eval()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", precision: str = "32") -> MIRIImputer:
        """From a training checkpoint (`.ckpt`) or an exported file; errors name what is wrong."""
        path = Path(path)
        data = read_checkpoint(path)
        if data.get("format") != EXPORT_FORMAT:
            data = _from_training_checkpoint(data, path)
        elif data.get("version") != EXPORT_VERSION:
            raise DataError(f"{path} is export version {data.get('version')}; this miri-lightning reads "
                            f"version {EXPORT_VERSION}")
        return cls(data["image_shape"], UNetConfig(**data["net"]), data["round_weights"],
                   SolverConfig(**data["solver"]), RoundZeroFill.from_state(data), device, precision,
                   data.get("kind", "chain"), data.get("source", ""))

    def describe(self) -> str:
        """What was loaded, in words."""
        if self.kind == "one_pass":
            return f"a one-pass imputer ({self.source})" if self.source else "a one-pass imputer"
        return f"a chain of {len(self.round_weights)} rounds ({self.solver.method}, {self.solver.steps} steps each)"

    def export(self, path: str | os.PathLike, half: bool = False) -> None:
        """Write only what inference needs (weights in float16 if `half`), atomically."""
        dtype = torch.float16 if half else torch.float32
        weights = [{k: v.to(dtype) if v.is_floating_point() else v for k, v in w.items()} for w in self.round_weights]
        data = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "image_shape": list(self.image_shape),
                "net": asdict(self.net_config), "solver": asdict(self.solver), **self.fill.state(),
                "round_weights": weights, "kind": self.kind, "source": self.source}
        with atomic_path(path) as tmp:
            torch.save(data, tmp)

    # -- imputing ---------------------------------------------------------

    def check(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Validate inputs before any work; returns the masks as bool (N, C, H, W)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"images must be (N, {', '.join(map(str, self.image_shape))}) as the network was "
                            f"trained on, got {shape}")
        n, c, h, w = images.shape
        if not isinstance(masks, torch.Tensor) or tuple(masks.shape) not in {(n, 1, h, w), (n, c, h, w)}:
            shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise DataError(f"masks must be ({n}, 1, {h}, {w}) or ({n}, {c}, {h}, {w}) to match the images, got {shape}")
        check_binary(masks.detach().cpu().numpy(), "masks")
        masks = masks.bool().expand(n, c, h, w)
        empty = images_without_observed(masks)
        if empty:
            raise DataError(f"images {empty[:10]} have no observed pixel: there is nothing to condition on")
        observed = images[masks]
        if not torch.isfinite(observed).all():
            raise DataError("observed entries of the images hold NaN or infinite values")
        if observed.numel() and (observed.min() < 0 or observed.max() > 1):
            raise DataError("observed entries of the images must lie in [0, 1]")
        return masks

    def initial_fill(self, images: torch.Tensor, masks: torch.Tensor, seed: int) -> torch.Tensor:
        """x_hat^(0) of new images, filled the way round 0 filled the training collection."""
        return self.fill(images.float(), masks, seed)

    @property
    def stochastic(self) -> bool:
        """Whether two fills of the same image differ, and so its draws."""
        return self.fill.random

    def impute(self, images: torch.Tensor, masks: torch.Tensor, seed: int = 0, num_samples: int = 1,
               batch_size: int = 256, method: Optional[str] = None, steps: Optional[int] = None,
               progress: bool = False) -> torch.Tensor:
        """Impute images (N, C, H, W) in [0, 1] whose masks (N, 1 or C, H, W) say 1 = observed.

        Returns (N, C, H, W), or (num_samples, N, C, H, W) when num_samples > 1
        (independent fills, seeds seed, seed + 1, ...). Observed entries are
        returned bit for bit. `method` and `steps` override the trained solver.
        Several draws need a run whose round 0 fill was random (`stochastic`):
        the solve is deterministic, so a deterministic fill gives one image S times.
        """
        if num_samples > 1 and not self.stochastic:
            raise DataError(f"this run filled round 0 by {self.fill.kind} without randomness, so every draw would "
                            "be the same image: train with data.fill.keep < 1 or data.fill.noise > 0 (or fill.kind "
                            "noise) for several draws")
        if self.kind == "one_pass" and (method, steps) != (None, None):
            raise DataError("a one-pass imputer has no solver to change (its one step is what it was trained for): "
                            "leave method and steps unset")
        masks = self.check(images, masks)
        solver = replace(self.solver, **{k: v for k, v in (("method", method), ("steps", steps)) if v is not None})
        bar = tqdm(total=num_samples * len(self.round_weights) * len(images), disable=not progress, unit="img",
                   desc="imputing (images x rounds)")
        # Sample by sample, so that sample s is exactly what a single imputation with seed + s gives.
        samples = [self._chain(self.initial_fill(images, masks, seed + s), masks, solver, batch_size, bar)
                   for s in range(num_samples)]
        bar.close()
        return samples[0] if num_samples == 1 else torch.stack(samples)

    def calibrate(self, images: torch.Tensor, masks: torch.Tensor, num_samples: int = 8, share: float = 0.1,
                  level: float = 0.9, seed: int = 0, **impute_args) -> float:
        """The scale that makes `draws.calibrated_interval` hold the truth at `level`, without ground truth:
        a `share` of the observed entries is hidden, drawn `num_samples` times and compared with what was
        there (split conformal). The draws' own spread is too narrow for that (docs/2026-12-02-multiple-imputation.md)."""
        if not 0 < share < 1:
            raise DataError(f"the share of observed entries to hide must be in (0, 1), got {share}")
        full = self.check(images, masks)
        # Hide as entries went missing: whole pixels where the masks are shared by the channels (a pixel with
        # one channel hidden is a pattern the velocity never trained on, and its errors are not the others').
        shared = bool((full == full[:, :1]).all())
        draw = torch.rand((*full.shape[:1], 1, *full.shape[2:]) if shared else full.shape,
                          generator=seed_stream(seed, CALIBRATION_STREAM))
        hidden = full & (draw < share).expand_as(full)
        kept = full & ~hidden
        empty = images_without_observed(kept)
        if empty:
            raise DataError(f"hiding {share:g} of the observed entries leaves images {empty[:10]} with none")
        draws = self.impute(images, kept, seed=seed, num_samples=num_samples, **impute_args)
        return conformal_scale(draws, kept, images.float(), hidden, level)

    def _chain(self, z: torch.Tensor, masks: torch.Tensor, solver: SolverConfig, batch_size: int, bar) -> torch.Tensor:
        """Apply v_1 ... v_T in order, each to the whole set."""
        dtype = PRECISIONS[self.precision]
        context = ((lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype != torch.float32
                   else contextlib.nullcontext)
        for weights in self.round_weights:
            self.net.load_state_dict({k: v.float() for k, v in weights.items()})
            z, batch_size = solve_batches(self.net, z, masks, solver, batch_size, self.device, context,
                                          torch.channels_last, on_batch=bar.update)
        return z.contiguous()
