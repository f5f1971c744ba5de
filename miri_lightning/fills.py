"""Round 0's fill, x_hat^(0): one typed object that the datamodule builds, checkpoints and exports carry,
and inference applies to new images, so that a new image starts from where the training collection did.

MIRI's solve is deterministic, so an image's draws (multiple imputation) differ
only through their fills: a fill is random when it is the paper's noise, when
it adds noise (`noise`), or when it interpolates from a random share of the
observed entries (`keep` < 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional

import torch

from .baselines import interpolation_fill, noise_fill, observed_mean, seed_stream

InitFill = Literal["noise", "mean", "interpolation"]


@dataclass(eq=False)
class RoundZeroFill:
    """How missing entries are filled before round 1.

    Args:
        kind: `noise` (uniform in [0, 1], the paper's), `mean` (each entry's
            observed mean over the collection) or `interpolation` (the
            Gaussian-weighted mean of observed neighbours).
        sigma: the interpolation's Gaussian width in pixels.
        noise: standard deviation of Gaussian noise added at missing entries
            of the `mean` and `interpolation` fills (clipped to [0, 1]).
        keep: the share of observed entries each interpolation reads, drawn
            afresh for every fill: below 1, two fills of an image differ most
            where its observed neighbours disagree, which is where its true
            values are least certain.
        values: the collection's per-entry observed mean (C, H, W), for `mean`.
    """

    kind: InitFill = "noise"
    sigma: float = 1.0
    noise: float = 0.0
    keep: float = 1.0
    values: Optional[torch.Tensor] = None

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """x_hat^(0) of `images` (N, C, H, W) with bool `masks` (True = observed); observed entries untouched."""
        if self.kind == "noise":
            return noise_fill(images, masks, seed)
        if self.kind == "interpolation":
            read = masks if self.keep >= 1 else masks & (torch.rand(masks.shape, generator=seed_stream(seed, 0xCEE9))
                                                         < self.keep)
            fill = torch.where(masks, images, interpolation_fill(images, read, self.sigma))
        else:
            mean = observed_mean(images, masks) if self.values is None else self.values
            fill = torch.where(masks, images, mean.to(images.dtype).expand_as(images))
        if self.noise == 0:
            return fill
        noise = torch.randn(fill.shape, generator=seed_stream(seed, 0xF111)).to(fill.dtype)
        return torch.where(masks, fill, (fill + self.noise * noise).clamp(0.0, 1.0))

    @property
    def random(self) -> bool:
        """Whether two fills of the same image differ: only then can the run's draws of it differ."""
        return self.kind == "noise" or self.noise > 0 or (self.kind == "interpolation" and self.keep < 1)

    def error(self, images: torch.Tensor, masks: torch.Tensor, seed: int = 0, share: float = 0.1) -> float:
        """The root-mean-square error of this fill without its noise, measured without ground truth: a
        `share` of the observed entries is hidden, filled from the rest, and compared with what was there."""
        hidden = masks & (torch.rand(masks.shape, generator=seed_stream(seed, 0xE11)) < share)
        if not hidden.any():
            return 0.0
        filled = replace(self, noise=0.0, values=None)(images, masks & ~hidden, seed)
        return float((filled - images)[hidden].square().mean().sqrt())

    def state(self) -> dict:
        """What checkpoints and exports keep (the key names of the `data.*` options)."""
        return {"init_fill": self.kind, "fill_sigma": self.sigma, "fill_noise": self.noise, "fill_keep": self.keep,
                "fill_values": self.values}

    @classmethod
    def from_state(cls, state: dict) -> RoundZeroFill:
        """From a checkpoint's datamodule state or an export. Files from before an option existed read as
        what was used then: the noise fill, sigma 1, no added noise, every observed entry read."""
        return cls(state.get("init_fill", "noise"), state.get("fill_sigma", 1.0), state.get("fill_noise", 0.0),
                   state.get("fill_keep", 1.0), state.get("fill_values"))
