"""What every mask mechanism shares: the base classes, the checks of their settings, and the ways to
draw masks a chunk of images at a time."""

import functools
import math
from abc import ABC, abstractmethod
from typing import Callable, Iterable, Optional

import torch

from miri_lightning.data.checks import first_index
from miri_lightning.errors import ConfigError, DataError
from miri_lightning.seeds import given_seed

# Passes over a collection's images, float32 (n, C, H, W) chunks in order: each call starts a new pass.
Chunks = Callable[[], Iterable[torch.Tensor]]


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


def require(ok: bool, owner: str, name: str, expected: str, value: object) -> None:
    if not ok:  # named as the config key: mechanisms are built from `data.mask`
        raise ConfigError(f"data.mask.{name} ({owner}) must be {expected}, got {value!r}")


def check_missing_rate(owner: str, value: float) -> None:
    require(isinstance(value, (int, float)) and 0 <= value < 1, owner, "missing_rate", "in [0, 1)", value)


def check_size(owner: str, name: str, value: float) -> None:
    require(isinstance(value, (int, float)) and 0 < value <= 1, owner, name, "in (0, 1]", value)


def check_count(owner: str, name: str, value: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    require(ok, owner, name, "an integer >= 1", value)


def check_seed(owner: str, seed: Optional[int]) -> int:
    return given_seed(f"data.mask.seed ({owner})", seed)


def check_strength(owner: str, value: float) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    require(ok, owner, "strength", "a finite number", value)


def as_images(images: torch.Tensor) -> torch.Tensor:
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


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def expand_channels(observed: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, 1 or C, H, W) -> (N, C, H, W); a materialised copy so callers may edit it in place."""
    n, _, h, w = observed.shape
    return observed.expand(n, channels, h, w).contiguous()


def per_image_stream(num_images: int, draw: Callable[[int, torch.Tensor], list[torch.Tensor]],
                      render: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]):
    """A stream of masks whose random draws are a few numbers per image: `draw(num_images, first_chunk)` makes
    them for the whole collection at the first chunk, in the order one call makes them, and `render(draws of
    the chunk's images, chunk)` turns them into the chunk's masks."""
    draws: list[torch.Tensor] = []
    position = 0

    def masks(images: torch.Tensor) -> torch.Tensor:
        nonlocal position
        images = as_images(images)
        if not draws:
            draws.extend(draw(num_images, images))
        rows = slice(position, position + len(images))
        position = rows.stop
        return render([d[rows] for d in draws], images)

    return masks


def draw_missing(missing_probability: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli draw: True where missing; rand is in [0, 1), so probability 0 is never missing."""
    return torch.rand(missing_probability.shape, generator=generator) < missing_probability

class ProbabilityMechanism(MaskMechanism):
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
        images = as_images(images)
        return self.stream(len(images), lambda: [images])(images)

    def stream(self, num_images: int, chunks: Chunks) -> Callable[[torch.Tensor], torch.Tensor]:
        fitted = self.fit(chunks)
        generator = seeded_generator(self.seed)  # runs on across the chunks: torch.rand draws in order

        def masks(images: torch.Tensor) -> torch.Tensor:
            images = as_images(images)
            missing = draw_missing(self.missing_probability(images, fitted), generator)
            return expand_channels(~missing, images.shape[1])

        return masks



class AnyOf(MaskMechanism):
    """Union of missingness: an entry is missing if any of the mechanisms hides it.

    Example: MCAR dead pixels plus a RandomBoxes occlusion. Give the parts different
    seeds when they are of the same kind, or they hide the same entries.

    Args:
        mechanisms: the mechanisms to combine (at least one).
    """

    def __init__(self, mechanisms: list[MaskMechanism]) -> None:
        ok = isinstance(mechanisms, (list, tuple)) and len(mechanisms) > 0
        require(ok, "AnyOf", "mechanisms", "a non-empty list of mask mechanisms", mechanisms)
        for index, mechanism in enumerate(mechanisms):
            require(isinstance(mechanism, MaskMechanism), "AnyOf", f"mechanisms[{index}]", "a MaskMechanism", mechanism)
        self.mechanisms = list(mechanisms)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._union([mechanism.__call__ for mechanism in self.mechanisms], images)

    def stream(self, num_images: int, chunks: Chunks) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        streams = [mechanism.stream(num_images, chunks) for mechanism in self.mechanisms]
        return None if None in streams else functools.partial(self._union, streams)

    @staticmethod
    def _union(parts: list[Callable[[torch.Tensor], torch.Tensor]], images: torch.Tensor) -> torch.Tensor:
        images = as_images(images)
        observed = parts[0](images)
        for part in parts[1:]:
            observed &= part(images)
        return observed
