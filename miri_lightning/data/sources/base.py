"""What a source gives (`ImageSet`) and what every source is (`ImageSource`)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from miri_lightning.errors import ConfigError


class ImageSet:
    """A whole image collection, kept as the source gives it: 8-bit sources stay 8-bit (and a mapped file stays
    on disk) until a consumer reads them, whole (`images`, `masks`) or a few images at a time (`floats`,
    `observed`).

    Args:
        images: (N, C, H, W), uint8 (k stands for k/255) or float in [0, 1], where NaN marks a missing entry
            when `nan_missing`.
        masks: (N, 1 or C, H, W) tensor or array, bool or 0/1 (1 = observed; one channel is shared by all),
            or None.
        nan_missing: whether NaN values in `images` mark missing entries (then `masks` is None).
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor | None = None, nan_missing: bool = False):
        if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
            raise TypeError(f"ImageSet images must be uint8 or float, got {images.dtype}")
        if nan_missing and masks is not None:
            raise ValueError("ImageSet takes its missing entries from masks or from NaN values, not both")
        self.values, self.own_masks, self.nan_missing = images, masks, nan_missing

    def __len__(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def eight_bit(self) -> bool:
        """Whether every value is some k/255, stored as k."""
        return self.values.dtype == torch.uint8

    @property
    def has_masks(self) -> bool:
        """Whether the source marks missing entries itself (then there is no ground truth for them)."""
        return self.own_masks is not None or self.nan_missing

    @property
    def images(self) -> torch.Tensor:
        """All images as float32 (N, C, H, W) in [0, 1] (NaN of a masked source read as 0)."""
        return self.floats(0, len(self))

    @property
    def masks(self) -> torch.Tensor | None:
        """All the source's masks, bool (N, C, H, W), True = observed; None when it has none."""
        return self.observed(0, len(self))

    def floats(self, start: int, stop: int) -> torch.Tensor:
        """Images start..stop-1 as float32 in [0, 1]: k/255 computed in float32, as a whole read gives."""
        chunk = self.values[start:stop]
        if self.eight_bit:
            return chunk.float().div_(255)
        # NaN marks what the source's masks call missing: 0, as a fill starts. Unmasked values stay as given.
        return torch.nan_to_num(chunk.float(), 0.0) if self.has_masks else chunk.float()

    def observed(self, start: int, stop: int) -> torch.Tensor | None:
        """The source's masks of images start..stop-1, bool (n, C, H, W); None when it has none."""
        if self.nan_missing:
            return ~self.values[start:stop].isnan()
        if self.own_masks is None:
            return None
        chunk = torch.as_tensor(np.asarray(self.own_masks[start:stop], dtype=bool))
        return chunk.expand(len(chunk), *self.shape[1:]).contiguous()


class ImageSource(ABC):
    """Base class. Subclasses implement `load() -> ImageSet`, and `prepare()` if they download."""

    def prepare(self) -> None:
        """Fetch what `load()` needs (called once per machine, before `load()` on every process)."""

    def check(self) -> None:
        """Raise a DataError now if `load()` is bound to fail (a missing file): called before a run opens its
        logger or writes anything, so that a typo costs nothing."""

    @abstractmethod
    def load(self) -> ImageSet: ...


def check_num_images(source: ImageSource, num_images: int | None) -> int | None:
    if num_images is not None and num_images < 1:
        raise ConfigError(f"{type(source).__name__} num_images must be None (all images) or >= 1, got {num_images}")
    return num_images
