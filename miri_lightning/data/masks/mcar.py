"""Mechanisms whose masks do not look at the images (missing completely at random): independent entries,
a centred box, random boxes, brush strokes."""

import math
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from miri_lightning.data.masks.base import (
    Chunks, MaskMechanism, ProbabilityMechanism, as_images, check_count, check_missing_rate, check_seed, check_size,
    expand_channels, per_image_stream, require, seeded_generator,
)

# Strokes are polylines of this many segments, turning by at most this angle per
# vertex: wiggly like DeepFill v2 / LaMa free-form masks, but never doubling back.
_STROKE_SEGMENTS = 5
_STROKE_MAX_TURN = math.pi / 2
# A brush at least 2 px wide always covers a pixel, so no stroke is empty.
_STROKE_MIN_WIDTH_PX = 2.0


class MCAR(ProbabilityMechanism):
    """Missing completely at random: every pixel is missing independently.

    Args:
        missing_rate: probability that a pixel is missing, in [0, 1).
        per_channel: if False a pixel is missing in all its channels at once; if True
            each channel of each pixel is drawn independently.
        seed: seed of the local random generator (unset: `seed_everything`'s under train.py, else 0).
    """

    def __init__(self, missing_rate: float = 0.6, per_channel: bool = False, seed: Optional[int] = None) -> None:
        check_missing_rate("MCAR", missing_rate)
        self.seed = check_seed("MCAR", seed)
        self.missing_rate = missing_rate
        self.per_channel = per_channel

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

    def __init__(self, size: float = 0.5, seed: Optional[int] = None) -> None:
        check_size("CenterBox", "size", size)
        self.seed = check_seed("CenterBox", seed)
        self.size = size

    def stream(self, num_images: int, chunks: Chunks) -> Callable[[torch.Tensor], torch.Tensor]:
        return self  # the same hole in every image

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = as_images(images).shape
        side = max(1, round(self.size * min(h, w)))
        top, left = (h - side) // 2, (w - side) // 2
        observed = torch.ones(n, 1, h, w, dtype=torch.bool)
        observed[:, :, top : top + side, left : left + side] = False
        return expand_channels(observed, c)


class RandomBoxes(MaskMechanism):
    """Axis-aligned rectangular holes at random places, drawn anew for every image.

    Args:
        num_boxes: boxes per image (they may overlap), >= 1.
        min_size: smallest box side as a fraction of the image side along that axis, in (0, 1].
        max_size: largest box side, likewise, in (0, 1] and >= min_size; height and width
            are drawn independently and uniformly in [min_size, max_size] * side.
        seed: seed of the local random generator (unset: `seed_everything`'s under train.py, else 0).
    """

    def __init__(self, num_boxes: int = 1, min_size: float = 0.25, max_size: float = 0.5,
                 seed: Optional[int] = None) -> None:
        check_count("RandomBoxes", "num_boxes", num_boxes)
        check_size("RandomBoxes", "min_size", min_size)
        check_size("RandomBoxes", "max_size", max_size)
        require(min_size <= max_size, "RandomBoxes", "min_size", f"<= max_size ({max_size})", min_size)
        self.seed = check_seed("RandomBoxes", seed)
        self.num_boxes = num_boxes
        self.min_size = min_size
        self.max_size = max_size

    def _draw(self, n: int, images: torch.Tensor) -> list[torch.Tensor]:
        """Uniform numbers (n, num_boxes): each box's height and top, then its width and left."""
        generator = seeded_generator(self.seed)
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
        return expand_channels(~missing, c)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = as_images(images)
        return self._holes(self._draw(len(images), images), images)

    def stream(self, num_images: int, chunks: Chunks) -> Callable[[torch.Tensor], torch.Tensor]:
        return per_image_stream(num_images, self._draw, self._holes)


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
        seed: seed of the local random generator (unset: `seed_everything`'s under train.py, else 0).
    """

    def __init__(self, num_strokes: int = 4, max_width: float = 0.1, max_length: float = 0.5,
                 seed: Optional[int] = None) -> None:
        check_count("Strokes", "num_strokes", num_strokes)
        check_size("Strokes", "max_width", max_width)
        check_size("Strokes", "max_length", max_length)
        self.seed = check_seed("Strokes", seed)
        self.num_strokes = num_strokes
        self.max_width = max_width
        self.max_length = max_length

    def _polylines(self, n: int, images: torch.Tensor) -> list[torch.Tensor]:
        """Vertices (n, strokes, segments + 1, 2) as PIL (x, y), pixel centres at integers; widths (n, strokes)."""
        h, w = images.shape[-2:]
        generator = seeded_generator(self.seed)
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
        return expand_channels(~missing[:, None], c)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = as_images(images)
        return self._strokes(self._polylines(len(images), images), images)

    def stream(self, num_images: int, chunks: Chunks) -> Callable[[torch.Tensor], torch.Tensor]:
        return per_image_stream(num_images, self._polylines, self._strokes)
