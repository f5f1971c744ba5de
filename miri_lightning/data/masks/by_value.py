"""Mechanisms whose masks depend on the images' values: MAR (on an always-observed band of each image) and
MNAR (on each entry's own value), both fitted to a missing rate over the whole collection."""

import math
from abc import abstractmethod
from typing import Optional

import numpy as np
import torch

from miri_lightning.data.masks.base import (
    Chunks, ProbabilityMechanism, check_missing_rate, check_seed, check_strength, require,
)
from miri_lightning.errors import DataError

# Bisection stops once the bias is known to this precision: the missing rate then
# differs from its target by less than a quarter of it (sigmoid slope <= 1/4).
_BIAS_TOLERANCE = 1e-7
# Histogram resolution used to fit the bias (see _fit_bias).
_BIAS_BINS = 2**16
# Beyond this logit margin sigmoid is within 5e-18 of 0 or 1, which brackets any rate.
_LOGIT_MARGIN = 40.0


class _Moments:
    """Mean, standard deviation, minimum and maximum of values streamed in chunks of any size: summed in float64
    by fixed blocks of values (a partial block is carried to the next chunk), so that the result does not
    depend on where the stream is cut."""

    BLOCK = 1 << 16

    def __init__(self):
        self.carry = torch.empty(0, dtype=torch.float64)
        self.count, self.total, self.squares = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, values: torch.Tensor) -> None:
        if values.numel():
            self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        values = torch.cat([self.carry, values.flatten().double()])
        whole = len(values) // self.BLOCK * self.BLOCK
        self._sum(values[:whole].view(-1, self.BLOCK))
        self.carry = values[whole:].clone()

    def _sum(self, blocks: torch.Tensor) -> None:
        for total, squares in zip(blocks.sum(1).tolist(), blocks.square().sum(1).tolist()):
            self.total, self.squares = self.total + total, self.squares + squares
        self.count += blocks.numel()

    def result(self) -> tuple[float, float]:
        """(mean, standard deviation with Bessel's correction; 0 for a single value)."""
        if len(self.carry):
            self._sum(self.carry[None])
            self.carry = self.carry[:0]
        mean = self.total / self.count
        variance = (self.squares - self.total * mean) / (self.count - 1) if self.count > 1 else 0.0
        return mean, math.sqrt(max(variance, 0.0))


def _fit_bias(counts: np.ndarray, low_score: float, high_score: float, target: float) -> float:
    """Bias b with mean(sigmoid(scores + b)) == target, by bisection (the mean increases with b), from a
    histogram of the scores: `counts` in `_BIAS_BINS` equal bins over [low_score, high_score].

    A fine histogram makes each bisection step cheap however large the collection; using bin centres moves
    the rate by at most range(scores) / (8 * bins), about 1e-4 for strength 5.
    """
    if target <= 0:
        return -math.inf
    if low_score == high_score:
        return math.log(target / (1 - target)) - low_score
    # numpy for the loop (no thread pool): on these small arrays a pool's start-up costs more than the work.
    occupied = counts > 0
    centres = np.linspace(low_score, high_score, 2 * _BIAS_BINS + 1)[1::2][occupied]
    weights = counts[occupied] / counts.sum()
    low, high = -high_score - _LOGIT_MARGIN, -low_score + _LOGIT_MARGIN
    while high - low > _BIAS_TOLERANCE:
        middle = 0.5 * (low + high)
        if float((weights * (0.5 + 0.5 * np.tanh(0.5 * (centres + middle)))).sum()) < target:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def _brightness(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W) mean over channels: one value per pixel, as the masks are shared."""
    return images.mean(dim=1, keepdim=True)



class _ScoredMechanism(ProbabilityMechanism):
    """Missing with probability sigmoid(strength * z + bias): z a statistic of the images standardised over
    the collection, the bias fitted so that the expected rate is the target. Two passes fit them: the
    statistic's moments, then a histogram of the scores."""

    strength: float

    @abstractmethod
    def statistic(self, images: torch.Tensor) -> torch.Tensor:
        """The values that drive missingness, one per image and position."""

    @abstractmethod
    def target(self, shape: tuple[int, ...]) -> float:
        """The missing rate the scores must reach, for images of `shape`."""

    def _scores(self, values: torch.Tensor, mean: float, std: float) -> torch.Tensor:
        # Constant values carry no signal: z = 0, not NaN.
        z = (values - mean) / std if std > 0 else torch.zeros_like(values)
        return self.strength * z

    def fit(self, chunks: Chunks) -> tuple[float, float, float]:
        moments, shape = _Moments(), None
        for images in chunks():
            moments.add(self.statistic(images))
            shape = tuple(images.shape)
        mean, std = moments.result()
        # The score is monotonic in the statistic, so its extremes are the extremes' scores.
        low, high = (float(v) for v in self._scores(torch.tensor([moments.low, moments.high]), mean, std).aminmax())
        counts = np.zeros(_BIAS_BINS)
        if low < high:
            for images in chunks():
                scores = self._scores(self.statistic(images), mean, std)
                counts += torch.histc(scores, bins=_BIAS_BINS, min=low, max=high).double().numpy()
        return mean, std, _fit_bias(counts, low, high, self.target(shape))

    def _probability(self, images: torch.Tensor, fitted: Optional[tuple[float, float, float]]) -> torch.Tensor:
        mean, std, bias = fitted if fitted is not None else self.fit(lambda: [images])
        return torch.sigmoid(self._scores(self.statistic(images), mean, std) + bias)


class MAR(_ScoredMechanism):
    """Missing at random: missingness depends only on an always-observed part of the image.

    The top ``observed_fraction`` of rows (rounded, at least one row) is never missing.
    Below it, a pixel in column x is missing with probability
    ``sigmoid(strength * z + bias)``, where z is the mean brightness of the observed
    band in column x, standardised over the collection; ``bias`` is found by bisection
    so that the expected missing fraction over the whole image is ``missing_rate``.
    The mask therefore never depends on values below the band. Shared by the channels.

    Args:
        missing_rate: expected missing fraction of the whole image, in [0, 1 - observed_fraction).
        observed_fraction: fraction of rows at the top that is always observed, in (0, 1).
        strength: how strongly the band drives missingness; > 0 makes columns under a
            bright band more often missing, < 0 under a dark band, 0 gives MCAR below the band.
        seed: seed of the local random generator (unset: `seed_everything`'s under train.py, else 0).
    """

    def __init__(
        self, missing_rate: float = 0.5, observed_fraction: float = 0.25, strength: float = 5.0,
        seed: Optional[int] = None,
    ) -> None:
        check_missing_rate("MAR", missing_rate)
        ok = isinstance(observed_fraction, (int, float)) and 0 < observed_fraction < 1
        require(ok, "MAR", "observed_fraction", "in (0, 1)", observed_fraction)
        require(
            missing_rate < 1 - observed_fraction,
            "MAR",
            "missing_rate",
            f"< 1 - observed_fraction = {1 - observed_fraction:g} (only rows below the observed band can be missing)",
            missing_rate,
        )
        check_strength("MAR", strength)
        self.seed = check_seed("MAR", seed)
        self.missing_rate = missing_rate
        self.observed_fraction = observed_fraction
        self.strength = strength

    def band_rows(self, height: int) -> int:
        """Number of rows at the top that are always observed for images of this height."""
        return min(height, max(1, round(self.observed_fraction * height)))

    def target(self, shape: tuple[int, ...]) -> float:
        h = shape[2]
        band = self.band_rows(h)
        # Below the band every column has h - band pixels, so hitting the whole-image rate
        # means hitting this larger rate among the rows that may go missing.
        if self.missing_rate * h >= h - band and self.missing_rate > 0:
            raise DataError(
                f"MAR: images of height {h} keep {band} rows observed, too many for missing_rate {self.missing_rate}"
            )
        return self.missing_rate * h / (h - band) if self.missing_rate > 0 else 0.0

    def statistic(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, W): the mean brightness of the observed band in each column."""
        return _brightness(images[:, :, : self.band_rows(images.shape[2])]).mean(dim=2)

    def missing_probability(self, images: torch.Tensor, fitted: object = None) -> torch.Tensor:
        n, _, h, w = images.shape
        column_probability = self._probability(images, fitted)
        probability = column_probability[:, :, None, :].expand(n, 1, h, w).clone()
        probability[:, :, : self.band_rows(h)] = 0
        return probability


class MNAR(_ScoredMechanism):
    """Missing not at random: a pixel's chance to be missing depends on its own value.

    A pixel is missing with probability ``sigmoid(strength * z + bias)``, where z is its
    brightness (mean over channels) standardised over the collection and ``bias`` is found
    by bisection so that the expected missing fraction over the collection is
    ``missing_rate``. Shared by the channels.

    Args:
        missing_rate: expected missing fraction, in [0, 1).
        strength: > 0 hides bright pixels more often, < 0 dark ones, 0 gives MCAR.
        seed: seed of the local random generator (unset: `seed_everything`'s under train.py, else 0).
    """

    def __init__(self, missing_rate: float = 0.5, strength: float = 5.0, seed: Optional[int] = None) -> None:
        check_missing_rate("MNAR", missing_rate)
        check_strength("MNAR", strength)
        self.seed = check_seed("MNAR", seed)
        self.missing_rate = missing_rate
        self.strength = strength

    def target(self, shape: tuple[int, ...]) -> float:
        return self.missing_rate

    def statistic(self, images: torch.Tensor) -> torch.Tensor:
        return _brightness(images)

    def missing_probability(self, images: torch.Tensor, fitted: object = None) -> torch.Tensor:
        return self._probability(images, fitted)
