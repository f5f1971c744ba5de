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
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from miri_lightning.data.checks import first_index
from miri_lightning.errors import ConfigError, DataError

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

    def stream(self, num_images: int) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """Masks for a collection of `num_images` images a chunk of images at a time, in order, giving what one
        call on the whole collection gives; None where an image's masks depend on the other images (the
        collection is then masked at once)."""
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


def _fit_bias(scores: torch.Tensor, target: float) -> float:
    """Bias b with mean(sigmoid(scores + b)) == target, by bisection (the mean increases with b).

    The scores are first binned into a fine histogram so each bisection step is cheap
    however large the collection; using bin centres moves the rate by at most
    range(scores) / (8 * bins), about 1e-4 for strength 5.
    """
    if target <= 0:
        return -math.inf
    low_score, high_score = float(scores.min()), float(scores.max())
    if low_score == high_score:
        return math.log(target / (1 - target)) - low_score
    counts = torch.histc(scores.float(), bins=_BIAS_BINS, min=low_score, max=high_score).double().numpy()
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


def _standardise(values: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the collection; constant values map to 0 (no signal, no NaN)."""
    std = values.std() if values.numel() > 1 else values.new_zeros(())
    centred = values - values.mean()
    return centred / std if float(std) > 0 else torch.zeros_like(centred)


def _brightness(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W) mean over channels: one value per pixel, as the masks are shared."""
    return images.mean(dim=1, keepdim=True)


class _ProbabilityMechanism(MaskMechanism):
    """A mechanism defined by a per-entry missing probability, drawn once with the seed."""

    seed: int

    @abstractmethod
    def missing_probability(self, images: torch.Tensor) -> torch.Tensor:
        """float (N, 1 or C, H, W): the probability that each entry is missing."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_images(images)
        missing = _draw_missing(self.missing_probability(images), _generator(self.seed))
        return _expand_channels(~missing, images.shape[1])


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

    def stream(self, num_images: int) -> Callable[[torch.Tensor], torch.Tensor]:
        generator = _generator(self.seed)  # runs on across the chunks: torch.rand draws in order

        def masks(images: torch.Tensor) -> torch.Tensor:
            images = _as_images(images)
            return _expand_channels(~_draw_missing(self.missing_probability(images), generator), images.shape[1])

        return masks

    def missing_probability(self, images: torch.Tensor) -> torch.Tensor:
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

    def stream(self, num_images: int) -> Callable[[torch.Tensor], torch.Tensor]:
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

    def stream(self, num_images: int) -> Callable[[torch.Tensor], torch.Tensor]:
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

    def stream(self, num_images: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return _per_image_stream(num_images, self._polylines, self._strokes)


class MAR(_ProbabilityMechanism):
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

    def missing_probability(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        band = self.band_rows(h)
        # Below the band every column has h - band pixels, so hitting the whole-image rate
        # means hitting this larger rate among the rows that may go missing.
        if self.missing_rate * h >= h - band and self.missing_rate > 0:
            raise DataError(
                f"MAR: images of height {h} keep {band} rows observed, too many for missing_rate {self.missing_rate}"
            )
        target = self.missing_rate * h / (h - band) if self.missing_rate > 0 else 0.0
        column_mean = _brightness(images[:, :, :band]).mean(dim=2)  # (N, 1, W)
        scores = self.strength * _standardise(column_mean)
        column_probability = torch.sigmoid(scores + _fit_bias(scores, target))
        probability = column_probability[:, :, None, :].expand(n, 1, h, w).clone()
        probability[:, :, :band] = 0
        return probability


class MNAR(_ProbabilityMechanism):
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

    def missing_probability(self, images: torch.Tensor) -> torch.Tensor:
        scores = self.strength * _standardise(_brightness(images))
        return torch.sigmoid(scores + _fit_bias(scores, self.missing_rate))


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

    def stream(self, num_images: int) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        streams = [mechanism.stream(num_images) for mechanism in self.mechanisms]
        return None if None in streams else functools.partial(self._union, streams)

    @staticmethod
    def _union(parts: list[Callable[[torch.Tensor], torch.Tensor]], images: torch.Tensor) -> torch.Tensor:
        images = _as_images(images)
        observed = parts[0](images)
        for part in parts[1:]:
            observed &= part(images)
        return observed
