"""Multiple imputation: what several draws of the same images say together.

Draws are (S, N, C, H, W), all sharing the observed entries; masks (N, C, H, W)
or broadcastable, True = observed. The mean of the draws is the best single
guess (it beats one draw by about 3 dB where draws are exact posterior
samples), and their spread says which entries to trust.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import t as student_t

from .errors import DataError


def _check(draws: torch.Tensor) -> None:
    if draws.dim() != 5 or len(draws) < 2:
        raise DataError(f"draws must be (S, N, C, H, W) with S >= 2 draws, got {tuple(draws.shape)}")


def draw_mean(draws: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The mean of the draws; observed entries copied from the first draw, since an average of equal
    floats need not give back the same float."""
    _check(draws)
    return torch.where(masks.bool(), draws[0], draws.mean(0))


def draw_std(draws: torch.Tensor) -> torch.Tensor:
    """The per-entry standard deviation over draws (0 at observed entries)."""
    _check(draws)
    return draws.std(0, unbiased=False)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise DataError(f"the interval's level must be in (0, 1), got {level}")


def prediction_interval(draws: torch.Tensor, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Per entry, where the truth lies with probability `level` if it is one more draw like the S others:
    mean -+ t_{(1+level)/2, S-1} * std * sqrt(1 + 1/S) (Student's t prediction interval, exact for Gaussian
    draws). The draws' own quantiles are too narrow for this when S is small: of 8 exact draws, the 5 % to
    95 % quantiles hold a ninth only 72 % of the time (`tests/test_draws.py`)."""
    _check(draws)
    _check_level(level)
    s = len(draws)
    half = float(student_t.ppf((1 + level) / 2, s - 1)) * math.sqrt(1 + 1 / s) * draws.std(0, unbiased=True)
    mean = draws.mean(0)
    return mean - half, mean + half


def _widened_spread(draws: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each entry's standard deviation plus their mean over the missing entries: an entry whose draws all
    agree can still be wrong, so a calibrated interval is never empty there."""
    std = draw_std(draws)
    return std + std[~masks.bool().expand_as(std)].mean()


def interval_coverage(interval: tuple[torch.Tensor, torch.Tensor], truth: torch.Tensor,
                      missing: torch.Tensor) -> float:
    """The share of the `missing` entries whose true value lies inside `interval` (low, high)."""
    low, high = interval
    return float(((truth >= low) & (truth <= high))[missing].float().mean())


def conformal_scale(draws: torch.Tensor, masks: torch.Tensor, truth: torch.Tensor, scored: torch.Tensor,
                    level: float = 0.9) -> float:
    """Split conformal calibration: the multiple q of (std + floor) that holds the truth of the `scored`
    entries (missing in `masks`, known to the caller: observed entries hidden for the purpose) at `level`,
    with the finite-sample correction; `calibrated_interval` then holds a new missing entry at `level`
    when missing and hidden entries are alike (MCAR)."""
    _check(draws)
    _check_level(level)
    scored = scored.bool().expand_as(truth) & ~masks.bool().expand_as(truth)
    if not scored.any():
        raise DataError("conformal calibration needs scored entries that the masks call missing")
    score = ((truth - draws.mean(0)).abs() / _widened_spread(draws, masks))[scored]
    n = score.numel()
    rank = min(math.ceil((n + 1) * level), n)
    return float(score.double().kthvalue(rank).values)


def calibrated_interval(draws: torch.Tensor, masks: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mean -+ scale * (std + floor), clipped to [0, 1]; `scale` from `conformal_scale` (`MIRIImputer.calibrate`).
    Observed entries are known: their interval is the data alone, low = high = the value, bit for bit."""
    _check(draws)
    observed = masks.bool().expand_as(draws[0])
    half = torch.where(observed, 0.0, scale * _widened_spread(draws, masks))
    mean = draw_mean(draws, masks)
    return torch.where(observed, mean, (mean - half).clamp(0, 1)), torch.where(observed, mean, (mean + half).clamp(0, 1))


def central_interval(draws: torch.Tensor, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Per entry, the draws' quantiles (1 - level) / 2 and (1 + level) / 2 (linear interpolation)."""
    _check(draws)
    _check_level(level)
    ordered = draws.sort(0).values  # (torch.quantile refuses inputs of more than 2**24 entries)

    def quantile(q: float) -> torch.Tensor:
        position = q * (len(draws) - 1)
        below = int(position)
        above = min(below + 1, len(draws) - 1)
        return torch.lerp(ordered[below], ordered[above], position - below)

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def calibration(draws: torch.Tensor, masks: torch.Tensor, truth: torch.Tensor, level: float = 0.9,
                scale: float | None = None) -> dict:
    """How well the spread predicts the error, over missing entries:

    - `coverage`, `width`: the share of true values inside the draws' `level` prediction
      interval, and the interval's mean width;
    - `quantile_coverage`: the same inside the draws' own central quantiles (at most
      about 72 % for a 90 % level with 8 draws, however good the draws);
    - with `scale` (`MIRIImputer.calibrate` at the same level): `calibrated_coverage`
      and `calibrated_width`, of `calibrated_interval`;
    - `spread_error_correlation`: Pearson correlation between an entry's standard
      deviation over draws and the absolute error of the draws' mean.
    """
    missing = ~masks.bool().expand_as(truth)
    error = (draw_mean(draws, masks) - truth).abs()[missing]
    spread = draw_std(draws)[missing]
    correlation = torch.corrcoef(torch.stack([spread.double(), error.double()]))[0, 1]
    scores = {"quantile_coverage": interval_coverage(central_interval(draws, level), truth, missing),
              "spread_error_correlation": float(correlation)}
    intervals = {"": prediction_interval(draws, level)}
    if scale is not None:
        intervals["calibrated_"] = calibrated_interval(draws, masks, scale)
        scores["scale"] = scale
    for prefix, (low, high) in intervals.items():
        scores[prefix + "coverage"] = interval_coverage((low, high), truth, missing)
        scores[prefix + "width"] = float((high - low)[missing].mean())
    return scores
