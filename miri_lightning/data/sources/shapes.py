"""The built-in synthetic images: the offline default source."""

from __future__ import annotations

import math

import torch

from miri_lightning.data.sources.base import ImageSet, ImageSource, check_num_images
from miri_lightning.errors import ConfigError


class Shapes(ImageSource):
    """Synthetic RGB images drawn offline: the built-in default source, no download.

    Each image has a smooth two-colour gradient background in a random direction and 2-4 filled shapes
    (ellipses, rectangles, triangles, randomly rotated) in solid colours with sharp edges; in about half of
    the images the first shape carries a stripe or checker texture. Edges are antialiased analytically: a pixel
    takes the share of a shape given by its signed distance to the edge (a one-pixel ramp, which is what
    box-filtering a sharp straight edge gives). Deterministic given the seed.

    Args:
        num_images: Number of images to generate (>= 1; None means the default of 2000).
        image_size: Height and width of the square images in pixels (>= 8).
        seed: Random seed; the same seed gives bit-identical images.
    """

    MAX_SHAPES = 4
    CHUNK_PIXELS = 2**20  # pixels rendered at once, bounds the memory of the intermediates

    def __init__(self, num_images: int | None = 2000, image_size: int = 32, seed: int = 0) -> None:
        if image_size < 8:
            raise ConfigError(f"Shapes image_size must be >= 8, got {image_size}")
        self.num_images = check_num_images(self, num_images) or 2000
        self.image_size = image_size
        self.seed = seed

    def load(self) -> ImageSet:
        params = self._draw_params()
        chunk = max(1, self.CHUNK_PIXELS // self.image_size**2)
        chunks = [
            self._render({k: v[i : i + chunk] for k, v in params.items()}) for i in range(0, self.num_images, chunk)
        ]
        return ImageSet(images=torch.cat(chunks))

    def _draw_params(self) -> dict[str, torch.Tensor]:
        # All randomness comes from one (N, K) draw, row by row, so image i is the same whatever num_images and
        # the chunk size are; each parameter is a slice of the columns, mapped from [0, 1) to its range.
        s = self.MAX_SHAPES
        shapes = {
            "bg_angle": (), "bg_colors": (2, 3), "count": (), "kind": (s,), "color": (s, 3), "center": (s, 2),
            "half_size": (s, 2), "angle": (s,), "textured": (), "checker": (), "texture_color": (3,), "period": (),
        }  # fmt: skip
        widths = [math.prod(shape) for shape in shapes.values()]
        draws = torch.rand(self.num_images, sum(widths), generator=torch.Generator().manual_seed(self.seed))
        r = {k: d.reshape(-1, *shape) for (k, shape), d in zip(shapes.items(), draws.split(widths, dim=1))}
        return {
            "bg_angle": r["bg_angle"] * 2 * math.pi,
            "bg_colors": r["bg_colors"],
            "active": torch.arange(s) < 2 + (r["count"] * (s - 1)).long().unsqueeze(1),  # 2..MAX_SHAPES shapes
            "kind": (r["kind"] * 3).long(),
            "color": r["color"],
            "center": 0.15 + 0.7 * r["center"],
            "half_size": 0.08 + 0.2 * r["half_size"],
            "angle": r["angle"] * math.pi,
            "textured": r["textured"] < 0.5,
            "checker": r["checker"] < 0.5,
            "texture_color": r["texture_color"],
            "period": 3 + 3 * r["period"],  # pixels: finer textures would blur into a flat colour
        }

    def _render(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        size = self.image_size
        grid = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres, in pixels
        x, y = grid.view(1, 1, size), grid.view(1, size, 1)
        canvas = self._background(p, x / size, y / size)
        for i in range(self.MAX_SHAPES):
            du, dv, distance = self._shape(p, i, x, y, size)
            color = p["color"][:, i, :, None, None]
            if i == 0:
                color = color + self._texture(p, du, dv).unsqueeze(1) * (p["texture_color"][:, :, None, None] - color)
            coverage = (0.5 - distance).clamp_(0, 1) * p["active"][:, i, None, None]
            canvas = canvas + coverage.unsqueeze(1) * (color - canvas)
        # Rounding in the blends can step a hair outside [0, 1].
        return canvas.clamp_(0, 1)

    @staticmethod
    def _background(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cos, sin = p["bg_angle"].cos().view(-1, 1, 1), p["bg_angle"].sin().view(-1, 1, 1)
        # Normalise the projection by its range over the unit square so the gradient spans both colours.
        low = cos.clamp(max=0) + sin.clamp(max=0)
        t = ((x * cos + y * sin - low) / (cos.abs() + sin.abs())).unsqueeze(1)
        c0, c1 = p["bg_colors"][:, 0, :, None, None], p["bg_colors"][:, 1, :, None, None]
        return c0 + (c1 - c0) * t

    @staticmethod
    def _shape(
        p: dict[str, torch.Tensor], i: int, x: torch.Tensor, y: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coordinates in shape i's rotated frame and signed distance to its edge (negative inside), in pixels."""
        cx, cy = (p["center"][:, i, k, None, None] * size for k in range(2))
        a, b = (p["half_size"][:, i, k, None, None] * size for k in range(2))
        cos, sin = p["angle"][:, i, None, None].cos(), p["angle"][:, i, None, None].sin()
        du = (x - cx) * cos + (y - cy) * sin
        dv = (y - cy) * cos - (x - cx) * sin
        # Ellipse: the implicit function over its gradient length, exact enough within the pixel around the edge
        # (at the centre it is -1/0 = -inf, fully inside).
        ellipse = ((du / a).square() + (dv / b).square() - 1) / (2 * torch.hypot(du / a**2, dv / b**2))
        rectangle = torch.maximum(du.abs() - a, dv.abs() - b)
        # Triangle with its apex at (0, b) and base from (-a, -b) to (a, -b): the farthest of its three edge lines.
        triangle = torch.maximum(-b - dv, (2 * b * du.abs() + a * dv - a * b) / torch.hypot(2 * b, a))
        kind = p["kind"][:, i, None, None]
        return du, dv, torch.where(kind == 0, ellipse, torch.where(kind == 1, rectangle, triangle))

    @staticmethod
    def _texture(p: dict[str, torch.Tensor], du: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        """Share of the texture colour per pixel: stripes along u, or a checker; 0 where untextured."""
        width = p["period"].view(-1, 1, 1) / 2
        even_u, even_v = _even_band(du, width), _even_band(dv, width)
        checker = even_u * even_v + (1 - even_u) * (1 - even_v)
        pattern = torch.where(p["checker"].view(-1, 1, 1), checker, even_u)
        return pattern * p["textured"].view(-1, 1, 1)


def _even_band(coord: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """How much of the pixel at `coord` lies in an even-numbered band of `width` pixels (antialiased 0..1)."""
    phase = coord / width
    band = torch.floor(phase)
    to_edge = torch.minimum(phase - band, band + 1 - phase) * width
    sign = 1 - 2 * band.remainder(2)  # +1 in even bands, -1 in odd ones
    return (0.5 + sign * to_edge).clamp_(0, 1)
