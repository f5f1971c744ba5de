"""Mask mechanisms: which entries of an image collection are hidden from the imputer.

Convention used everywhere in miri-lightning: a mask is a bool tensor shaped like
the images, ``True`` (1) = OBSERVED, ``False`` (0) = missing.

Every mechanism is a small class configured by plain typed ``__init__`` arguments
(so LightningCLI / jsonargparse can build it from YAML) and called on a whole
collection: ``images`` float32 ``(N, C, H, W)`` in ``[0, 1]`` -> bool ``(N, C, H, W)``.
Randomness comes only from a local ``torch.Generator`` seeded with ``seed``, so the
same seed and images always give bit-identical masks; all work happens on the CPU
and the masks are returned on the CPU.
"""

import functools
import math
from abc import ABC, abstractmethod
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from miri_lightning.data.checks import first_index
from miri_lightning.errors import ConfigError, DataError

# Passes over a collection's images, float32 (n, C, H, W) chunks in order: each call starts a new pass.
Chunks = Callable[[], Iterable[torch.Tensor]]

__all__ = ["MaskMechanism", "MCAR", "CenterBox", "RandomBoxes", "Strokes", "MAR", "MNAR", "AnyOf"]

# Bisection stops once the bias is known to this precision: the missing rate then
# differs from its target by less than a quarter of it (sigmoid slope <= 1/4).
_BIAS_TOLERANCE = 1e-7
# Histogram resolution used to fit the bias (see _fit_bias).
_BIAS_BINS = 2**16
# Beyond this logit margin sigmoid is within 5e-18 of 0 or 1, which brackets any rate.
_LOGIT_MARGIN = 40.0
# Strokes are polylines of this many segments, turning by at most this angle per
# vertex: wiggly like DeepFill v2 / LaMa free-form masks, but never doubling back.
_STROKE_SEGMENTS = 5
_STROKE_MAX_TURN = math.pi / 2
# A brush at least 2 px wide always covers a pixel, so no stroke is empty.
_STROKE_MIN_WIDTH_PX = 2.0


class MaskMechanism(ABC):
    """Draws masks for a whole collection."""

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images float32 (N, C, H, W) in [0, 1] -> bool (N, C, H, W), True = observed."""

    def stream(self, num_images: int, chunks: Chunks) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """Masks for a collection of `num_images` images a chunk of images at a time, in order, giving what one
        call on the whole collection gives; `chunks()` passes over the collection's images (for mechanisms
        that fit statistics of the whole collection first). None: the collection is masked at once."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------- shared helpers


def _require(ok: bool, owner: str, name: str, expected: str, value: object) -> None:
    if not ok:  # named as the config key: mechanisms are built from `data.mask`
        raise ConfigError(f"data.mask.{name} ({owner}) must be {expected}, got {value!r}")


def _check_missing_rate(owner: str, value: float) -> None:
    _require(isinstance(value, (int, float)) and 0 <= value < 1, owner, "missing_rate", "in [0, 1)", value)


def _check_size(owner: str, name: str, value: float) -> None:
    _require(isinstance(value, (int, float)) and 0 < value <= 1, owner, name, "in (0, 1]", value)


def _check_count(owner: str, name: str, value: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    _require(ok, owner, name, "an integer >= 1", value)


def _check_seed(owner: str, seed: int) -> None:
    _require(isinstance(seed, int) and not isinstance(seed, bool), owner, "seed", "an integer", seed)


def _check_strength(owner: str, value: float) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    _require(ok, owner, "strength", "a finite number", value)


def _as_images(images: torch.Tensor) -> torch.Tensor:
    """The images as float32 on the CPU, after checking they are what every mechanism assumes."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.numel() == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"images must be a non-empty tensor shaped (N, C, H, W), got {shape}")
    if images.is_complex():
        raise DataError(f"images must be real numbers in [0, 1], got dtype {images.dtype}")
    images = images.detach().to(device="cpu", dtype=torch.float32)
    # Value-driven mechanisms (MAR, MNAR) would turn NaN or inf into NaN scores and fail deep in the bias fit.
    # min and max propagate NaN, so this one pass catches NaN too; the index search runs only on failure.
    low, high = torch.aminmax(images)
    if not (low >= 0 and high <= 1):
        index = first_index(~((images >= 0) & (images <= 1)))
        raise DataError(f"images must hold values in [0, 1], got {images[index].item():.6g} at index {index}")
    return images


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _expand_channels(observed: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, 1 or C, H, W) -> (N, C, H, W); a materialised copy so callers may edit it in place."""
    n, _, h, w = observed.shape
    return observed.expand(n, channels, h, w).contiguous()


def _per_image_stream(num_images: int, draw: Callable[[int, torch.Tensor], list[torch.Tensor]],
                      render: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]):
    """A stream of masks whose random draws are a few numbers per image: `draw(num_images, first_chunk)` makes
    them for the whole collection at the first chunk, in the order one call makes them, and `render(draws of
    the chunk's images, chunk)` turns them into the chunk's masks."""
    draws: list[torch.Tensor] = []
    position = 0

    def masks(images: torch.Tensor) -> torch.Tensor:
        nonlocal position
        images = _as_images(images)
        if not draws:
            draws.extend(draw(num_images, images))
        rows = slice(position, position + len(images))
        position = rows.stop
        return render([d[rows] for d in draws], images)

    return masks


def _draw_missing(missing_probability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli draw: True where missing; rand is in [0, 1), so probability 0 is never missing."""
    return torch.rand(missing_probability.shape, generator=generator) < missing_probability


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


class _ProbabilityMechanism(MaskMechanism):
    """A mechanism defined by a per-entry missing probability, drawn once with the seed."""

    seed: int

    @abstractmethod
    def missing_probability(self, images: torch.Tensor, fitted: object = None) -> torch.Tensor:
        """float (N, 1 or C, H, W): the probability that each entry is missing, given what `fit` found in the
        collection (None: fit these images)."""

    def fit(self, chunks: Chunks) -> object:
        """What the probability needs to know of the whole collection (nothing, here)."""
        return None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_images(images)
        return self.stream(len(images), lambda: [images])(images)

    def stream(self, num_images: int, chunks: Chunks) -> Callable[[torch.Tensor], torch.Tensor]:
        fitted = self.fit(chunks)
        generator = _generator(self.seed)  # runs on across the chunks: torch.rand draws in order

        def masks(images: torch.Tensor) -> torch.Tensor:
            images = _as_images(images)
            missing = _draw_missing(self.missing_probability(images, fitted), generator)
            return _expand_channels(~missing, images.shape[1])

        return masks


class _ScoredMechanism(_ProbabilityMechanism):
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


# ----------------------------------------------------------------------------- mechanisms


class MCAR(_ProbabilityMechanism):
    """Missing completely at random: every pixel is missing independently.

    Args:
        missing_rate: probability that a pixel is missing, in [0, 1).
        per_channel: if False a pixel is missing in all its channels at once; if True
            each channel of each pixel is drawn independently.
        seed: seed of the local random generator.
    """

    def __init__(self, missing_rate: float = 0.6, per_channel: bool = False, seed: int = 0) -> None:
        _check_missing_rate("MCAR", missing_rate)
        _check_seed("MCAR", seed)
        self.missing_rate = missing_rate
        self.per_channel = per_channel
        self.seed = seed

    def missing_probability(self, images: torch.Tensor, fitted: object = None) -> torch.Tensor:
        n, c, h, w = images.shape
        # A broadcast view: the draw needs the shape, not c * h * w copies of one number.
        return torch.tensor(float(self.missing_rate)).expand(n, c if self.per_channel else 1, h, w)


class CenterBox(MaskMechanism):
    """A centred square hole, the same in every image.

    Args:
        size: side of the square as a fraction of the shorter image side, in (0, 1];
            the side in pixels is rounded (at least 1 pixel).
        seed: unused (the box is deterministic); accepted so all mechanisms share one interface.
    """

    def __init__(self, size: float = 0.5, seed: int = 0) -> None:
        _check_size("CenterBox", "size", size)
        _check_seed("CenterBox", seed)
        self.size = size
        self.seed = seed

    def stream(self, num_images: int, chunks: Chunks) -> Callable[[torch.Tensor], torch.Tensor]:
        return self  # the same hole in every image

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = _as_images(images).shape
        side = max(1, round(self.size * min(h, w)))
        top, left = (h - side) // 2, (w - side) // 2
        observed = torch.ones(n, 1, h, w, dtype=torch.bool)
        observed[:, :, top : top + side, left : left + side] = False
        return _expand_channels(observed, c)


class RandomBoxes(MaskMechanism):
    """Axis-aligned rectangular holes at random places, drawn anew for every image.

    Args:
        num_boxes: boxes per image (they may overlap), >= 1.
        min_size: smallest box side as a fraction of the image side along that axis, in (0, 1].
        max_size: largest box side, likewise, in (0, 1] and >= min_size; height and width
            are drawn independently and uniformly in [min_size, max_size] * side.
        seed: seed of the local random generator.
    """

    def __init__(self, num_boxes: int = 1, min_size: float = 0.25, max_size: float = 0.5, seed: int = 0) -> None:
        _check_count("RandomBoxes", "num_boxes", num_boxes)
        _check_size("RandomBoxes", "min_size", min_size)
        _check_size("RandomBoxes", "max_size", max_size)
        _require(min_size <= max_size, "RandomBoxes", "min_size", f"<= max_size ({max_size})", min_size)
        _check_seed("RandomBoxes", seed)
        self.num_boxes = num_boxes
        self.min_size = min_size
        self.max_size = max_size
        self.seed = seed

    def _draw(self, n: int, images: torch.Tensor) -> list[torch.Tensor]:
        """Uniform numbers (n, num_boxes): each box's height and top, then its width and left."""
        generator = _generator(self.seed)
        return [torch.rand(n, self.num_boxes, generator=generator) for _ in range(4)]

    def _spans(self, size: torch.Tensor, place: torch.Tensor, length: int) -> torch.Tensor:
        """bool (n, num_boxes, length): which coordinates along one axis each box covers."""
        fraction = self.min_size + (self.max_size - self.min_size) * size
        extent = (fraction * length).round().clamp(1, length)
        start = (place * (length - extent + 1)).floor()
        coords = torch.arange(length, dtype=torch.float32)
        return (coords >= start[..., None]) & (coords < (start + extent)[..., None])

    def _holes(self, draws: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        _, c, h, w = images.shape
        rows, cols = self._spans(draws[0], draws[1], h), self._spans(draws[2], draws[3], w)
        missing = (rows[..., :, None] & cols[..., None, :]).any(dim=1, keepdim=True)
        return _expand_channels(~missing, c)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_images(images)
        return self._holes(self._draw(len(images), images), images)

    def stream(self, num_images: int, chunks: Chunks) -> Callable[[torch.Tensor], torch.Tensor]:
        return _per_image_stream(num_images, self._draw, self._holes)


class Strokes(MaskMechanism):
    """Free-form brush strokes, as the irregular masks of DeepFill v2 / LaMa.

    Each stroke is a random walk of a few straight segments, turning by a random angle
    at every vertex, painted with a round brush (so joints and ends are round).
    Vertices are kept inside the image. The mask is shared by the channels.

    Args:
        num_strokes: strokes per image, >= 1.
        max_width: largest brush width as a fraction of the shorter image side, in (0, 1];
            widths are uniform in [2 px, max(2 px, max_width * side)] (2 px so that every
            stroke hides at least one pixel).
        max_length: largest total stroke length as a fraction of the shorter image side,
            in (0, 1]; each segment is between half and all of max_length / number of segments.
        seed: seed of the local random generator.
    """

    def __init__(self, num_strokes: int = 4, max_width: float = 0.1, max_length: float = 0.5, seed: int = 0) -> None:
        _check_count("Strokes", "num_strokes", num_strokes)
        _check_size("Strokes", "max_width", max_width)
        _check_size("Strokes", "max_length", max_length)
        _check_seed("Strokes", seed)
        self.num_strokes = num_strokes
        self.max_width = max_width
        self.max_length = max_length
        self.seed = seed

    def _polylines(self, n: int, images: torch.Tensor) -> list[torch.Tensor]:
        """Vertices (n, strokes, segments + 1, 2) as PIL (x, y), pixel centres at integers; widths (n, strokes)."""
        h, w = images.shape[-2:]
        generator = _generator(self.seed)
        shape, side = (n, self.num_strokes), min(h, w)
        corner = torch.tensor([w - 1, h - 1], dtype=torch.float32)
        start = torch.rand(*shape, 1, 2, generator=generator) * corner
        heading = 2 * math.pi * torch.rand(*shape, 1, generator=generator)
        turns = _STROKE_MAX_TURN * (2 * torch.rand(*shape, _STROKE_SEGMENTS - 1, generator=generator) - 1)
        angles = torch.cat([heading, heading + turns.cumsum(dim=-1)], dim=-1)
        segment_max = self.max_length * side / _STROKE_SEGMENTS
        lengths = segment_max * (0.5 + 0.5 * torch.rand(*shape, _STROKE_SEGMENTS, generator=generator))
        steps = torch.stack([angles.cos(), angles.sin()], dim=-1) * lengths[..., None]
        vertices = torch.cat([start, start + steps.cumsum(dim=-2)], dim=-2)
        max_width = max(_STROKE_MIN_WIDTH_PX, self.max_width * side)
        widths = _STROKE_MIN_WIDTH_PX + (max_width - _STROKE_MIN_WIDTH_PX) * torch.rand(*shape, generator=generator)
        return [torch.minimum(vertices.clamp(min=0), corner), widths]

    @staticmethod
    def _paint(polylines: list, widths: list, h: int, w: int) -> np.ndarray:
        """bool (h, w): True where one image's strokes pass."""
        canvas = Image.new("1", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for points, width in zip(polylines, widths):
            points = [tuple(point) for point in points]
            draw.line(points, fill=1, width=round(width), joint="curve")
            # PIL ends lines flat; a round brush leaves round ends.
            radius = width / 2
            for x, y in (points[0], points[-1]):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=1)
        return np.asarray(canvas, dtype=bool)

    def _strokes(self, polylines: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        _, c, h, w = images.shape
        vertices, widths = polylines
        # Python lists: PIL wants plain numbers, and indexing tensors per point is slow.
        painted = [self._paint(p, wd, h, w) for p, wd in zip(vertices.tolist(), widths.tolist())]
        missing = torch.from_numpy(np.stack(painted))
        return _expand_channels(~missing[:, None], c)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_images(images)
        return self._strokes(self._polylines(len(images), images), images)

    def stream(self, num_images: int, chunks: Chunks) -> Callable[[torch.Tensor], torch.Tensor]:
        return _per_image_stream(num_images, self._polylines, self._strokes)


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
        seed: seed of the local random generator.
    """

    def __init__(
        self, missing_rate: float = 0.5, observed_fraction: float = 0.25, strength: float = 5.0, seed: int = 0
    ) -> None:
        _check_missing_rate("MAR", missing_rate)
        ok = isinstance(observed_fraction, (int, float)) and 0 < observed_fraction < 1
        _require(ok, "MAR", "observed_fraction", "in (0, 1)", observed_fraction)
        _require(
            missing_rate < 1 - observed_fraction,
            "MAR",
            "missing_rate",
            f"< 1 - observed_fraction = {1 - observed_fraction:g} (only rows below the observed band can be missing)",
            missing_rate,
        )
        _check_strength("MAR", strength)
        _check_seed("MAR", seed)
        self.missing_rate = missing_rate
        self.observed_fraction = observed_fraction
        self.strength = strength
        self.seed = seed

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
        seed: seed of the local random generator.
    """

    def __init__(self, missing_rate: float = 0.5, strength: float = 5.0, seed: int = 0) -> None:
        _check_missing_rate("MNAR", missing_rate)
        _check_strength("MNAR", strength)
        _check_seed("MNAR", seed)
        self.missing_rate = missing_rate
        self.strength = strength
        self.seed = seed

    def target(self, shape: tuple[int, ...]) -> float:
        return self.missing_rate

    def statistic(self, images: torch.Tensor) -> torch.Tensor:
        return _brightness(images)

    def missing_probability(self, images: torch.Tensor, fitted: object = None) -> torch.Tensor:
        return self._probability(images, fitted)


class AnyOf(MaskMechanism):
    """Union of missingness: an entry is missing if any of the mechanisms hides it.

    Example: MCAR dead pixels plus a RandomBoxes occlusion. Give the parts different
    seeds when they are of the same kind, or they hide the same entries.

    Args:
        mechanisms: the mechanisms to combine (at least one).
    """

    def __init__(self, mechanisms: list[MaskMechanism]) -> None:
        ok = isinstance(mechanisms, (list, tuple)) and len(mechanisms) > 0
        _require(ok, "AnyOf", "mechanisms", "a non-empty list of mask mechanisms", mechanisms)
        for index, mechanism in enumerate(mechanisms):
            _require(isinstance(mechanism, MaskMechanism), "AnyOf", f"mechanisms[{index}]", "a MaskMechanism", mechanism)
        self.mechanisms = list(mechanisms)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._union([mechanism.__call__ for mechanism in self.mechanisms], images)

    def stream(self, num_images: int, chunks: Chunks) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        streams = [mechanism.stream(num_images, chunks) for mechanism in self.mechanisms]
        return None if None in streams else functools.partial(self._union, streams)

    @staticmethod
    def _union(parts: list[Callable[[torch.Tensor], torch.Tensor]], images: torch.Tensor) -> torch.Tensor:
        images = _as_images(images)
        observed = parts[0](images)
        for part in parts[1:]:
            observed &= part(images)
        return observed
