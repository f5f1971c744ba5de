"""Round 0's fill, x_hat^(0): one typed object that the datamodule builds, checkpoints and exports carry,
and inference applies to new images, so that a new image starts from where the training collection did.

MIRI's solve is deterministic, so an image's draws (multiple imputation) differ
only through their fills: a fill is random when it is the paper's noise, when
it adds noise (`noise`), or when it interpolates from a random share of the
observed entries (`keep` < 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Optional

import torch

from .baselines import interpolation_fill, noise_fill
from .blocks import BlockSum, observed_mean, root_mean_square
from .seeds import GAUSS_STREAM, HIDE_STREAM, NOISE_STREAM, THIN_STREAM, seed_stream

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
        return self.stream(seed)(images, masks)

    def stream(self, seed: int = 0, fallback: Optional[torch.Tensor] = None) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                         torch.Tensor]:
        """The fill of a collection a chunk of images at a time, in order: each random stream runs on across
        the chunks, so they get what one call on the whole collection would (chunks of a multiple of 16
        images, for the Gaussian noise). `fallback` (C, H, W), the collection's observed mean, fills where
        an interpolation has no observed neighbour, and is the `mean` fill without `values`."""
        thin, uniform, gauss = (seed_stream(seed, salt) for salt in (THIN_STREAM, NOISE_STREAM, GAUSS_STREAM))

        def fill(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
            if self.kind == "noise":
                return noise_fill(images, masks, generator=uniform)
            if self.kind == "interpolation":
                read = masks if self.keep >= 1 else masks & (torch.rand(masks.shape, generator=thin) < self.keep)
                filled = torch.where(masks, images, interpolation_fill(images, read, self.sigma, fallback))
            else:
                mean = self.values if self.values is not None else fallback
                mean = observed_mean(images, masks) if mean is None else mean
                filled = torch.where(masks, images, mean.to(images.dtype).expand_as(images))
            if self.noise == 0:
                return filled
            noise = torch.randn(filled.shape, generator=gauss).to(filled.dtype)
            return torch.where(masks, filled, (filled + self.noise * noise).clamp(0.0, 1.0))

        return fill

    @property
    def random(self) -> bool:
        """Whether two fills of the same image differ: only then can the run's draws of it differ."""
        return self.kind == "noise" or self.noise > 0 or (self.kind == "interpolation" and self.keep < 1)

    def error(self, images: torch.Tensor, masks: torch.Tensor, seed: int = 0, share: float = 0.1) -> float:
        """The root-mean-square error of this fill without its noise, measured without ground truth: a
        `share` of the observed entries is hidden, filled from the rest, and compared with what was there."""
        error = self.error_stream(seed, share)
        error.add(images, masks)
        return error.result()

    def error_stream(self, seed: int = 0, share: float = 0.1, fallback: Optional[torch.Tensor] = None) -> FillError:
        """`error` accumulated over chunks of a collection (`add` each, then `result`)."""
        return FillError(replace(self, noise=0.0, values=None), seed, share, fallback)

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


class FillError(BlockSum):
    """The root-mean-square error of a fill on observed entries hidden from it, a chunk of images at a time."""

    def __init__(self, fill: RoundZeroFill, seed: int, share: float, fallback: Optional[torch.Tensor]):
        hide, filled = seed_stream(seed, HIDE_STREAM), fill.stream(seed, fallback)

        def squares(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = m & (torch.rand(m.shape, generator=hide) < share)
            return (filled(x, m & ~hidden) - x)[hidden].double().square().sum(), hidden.sum()

        super().__init__(squares)

    def result(self) -> float:
        return root_mean_square(self)
