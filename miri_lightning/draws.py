"""Multiple imputation: what several draws of the same images say together.

Draws are (S, N, C, H, W), all sharing the observed entries; masks (N, C, H, W)
or broadcastable, True = observed. The mean of the draws is the best single
guess (it beats one draw by about 3 dB where draws are exact posterior
samples), and their spread says which entries to trust.
"""

from __future__ import annotations

import torch

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


def central_interval(draws: torch.Tensor, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Per entry, the draws' quantiles (1 - level) / 2 and (1 + level) / 2 (linear interpolation)."""
    _check(draws)
    if not 0 < level < 1:
        raise DataError(f"the interval's level must be in (0, 1), got {level}")
    ordered = draws.sort(0).values  # (torch.quantile refuses inputs of more than 2**24 entries)

    def quantile(q: float) -> torch.Tensor:
        position = q * (len(draws) - 1)
        below = int(position)
        above = min(below + 1, len(draws) - 1)
        return torch.lerp(ordered[below], ordered[above], position - below)

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def calibration(draws: torch.Tensor, masks: torch.Tensor, truth: torch.Tensor, level: float = 0.9) -> dict:
    """How well the spread predicts the error, over missing entries:

    - `coverage`: the share of true values inside the draws' central `level` interval;
    - `spread_error_correlation`: Pearson correlation between an entry's standard
      deviation over draws and the absolute error of the draws' mean.
    """
    missing = ~masks.bool().expand_as(truth)
    low, high = central_interval(draws, level)
    inside = (truth >= low) & (truth <= high)
    error = (draw_mean(draws, masks) - truth).abs()[missing]
    spread = draw_std(draws)[missing]
    correlation = torch.corrcoef(torch.stack([spread.double(), error.double()]))[0, 1]
    return {"coverage": float(inside[missing].float().mean()), "spread_error_correlation": float(correlation)}
