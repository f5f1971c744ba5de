"""Round 0's fill, x_hat^(0): one typed object that the datamodule builds, checkpoints and exports carry,
and inference applies to new images, so that a new image starts from where the training collection did.

MIRI's solve is deterministic, so an image's draws (multiple imputation) differ
only through their fills: a fill is random when it is the paper's noise, when
it adds noise (`noise`), or when it interpolates from a random share of the
observed entries (`keep` < 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Optional, Union

import torch

from .baselines import interpolation_fill, noise_fill
from .blocks import BlockSum, observed_mean, root_mean_square
from .errors import ConfigError
from .seeds import GAUSS_STREAM, HIDE_STREAM, NOISE_STREAM, THIN_STREAM, seed_stream

InitFill = Literal["noise", "mean", "interpolation"]


@dataclass(frozen=True)
class FillConfig:
    """Round 0's fill as configured (`data.fill`); the datamodule turns it into the `RoundZeroFill` it uses.

    Args:
        kind: `noise` (uniform in [0, 1], the paper's), `mean` (each entry's
            mean of observed values) or `interpolation` (the Gaussian-weighted
            mean of observed neighbours).
        sigma: width in pixels of the interpolation's Gaussian. 1 averages
            about a 3x3 neighbourhood; 0.4 all but copies the nearest observed
            pixels (a neighbour at distance 1 weighs 23 times one at sqrt(2)):
            it blurs less, and on CIFAR-10 MIRI went further from it
            (docs/performance.md).
        noise: standard deviation of Gaussian noise added to the `mean` and
            `interpolation` fills at missing entries (clipped to [0, 1]). The
            solve is deterministic, so without randomness in the fill every
            draw of an image (multiple imputation) is the same image. `auto`:
            the fill's own root-mean-square error, measured on a tenth of the
            observed entries hidden from it (no ground truth needed), times
            `noise_scale`; the value is kept in checkpoints, so new images get
            the same.
        noise_scale: the multiple of the fill's error that `noise: auto` adds:
            at 1 the noise alone is as wide as the error, and the mask
            information of the collection rises with it
            (docs/2026-12-02-multiple-imputation.md).
        keep: the share of observed entries each `interpolation` fill reads,
            drawn afresh for every fill (1: all, a deterministic fill). Below
            1, an image's draws differ most where its observed neighbours
            disagree.
    """

    kind: InitFill = "noise"
    sigma: float = 1.0
    noise: Union[float, Literal["auto"]] = 0.0
    noise_scale: float = 1.0
    keep: float = 1.0

    def __post_init__(self):
        if self.kind not in ("noise", "mean", "interpolation"):
            raise ConfigError(f"data.fill.kind must be noise, mean or interpolation, got {self.kind!r}")
        if not self.sigma > 0:
            raise ConfigError(f"data.fill.sigma must be > 0 (pixels), got {self.sigma}")
        if self.noise != "auto" and not self.noise >= 0:
            raise ConfigError(f"data.fill.noise must be >= 0 (a standard deviation) or auto, got {self.noise}")
        if not self.noise_scale > 0:
            raise ConfigError(f"data.fill.noise_scale must be > 0 (a multiple of the fill's error), "
                              f"got {self.noise_scale}")
        if self.noise_scale != 1 and self.noise != "auto":
            raise ConfigError(f"data.fill.noise_scale scales what fill.noise auto measures; fill.noise is "
                              f"{self.noise}: set it to auto or leave fill.noise_scale at 1")
        if self.noise and self.kind == "noise":
            raise ConfigError("data.fill.noise adds noise to the mean and interpolation fills; "
                              "fill.kind noise is noise already: leave fill.noise at 0")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"data.fill.keep must be in (0, 1] (a share of the observed entries), got {self.keep}")
        if self.keep < 1 and self.kind != "interpolation":
            raise ConfigError(f"data.fill.keep thins the observed entries an interpolation reads; fill.kind "
                              f"{self.kind} reads none: leave fill.keep at 1")


@dataclass(eq=False)
class RoundZeroFill:
    """How missing entries are filled before round 1, as used: `FillConfig`'s fields with `noise` a number
    (what `auto` measured) and `values`, the collection's per-entry observed mean (C, H, W) for `mean`."""

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
