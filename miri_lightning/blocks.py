"""Sums over a collection that come out the same, bit for bit, however the collection is read in chunks.

A collection of 200,000 images is built a chunk at a time (`data.storage.chunk_rows`), and a checkpoint
must hold what a run on it computed in one go. Floating-point sums depend on their order, so every sum over
images is taken by blocks of `BLOCK` images, in order, in float64; chunks are whole blocks.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

BLOCK = 256

Summand = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


class BlockSum:
    """The sums of `summand(images, masks)` (a tuple of tensors) over blocks of `BLOCK` images, added a chunk
    of images at a time (`add`); `summand` is called on the blocks in order, so it may draw from a generator."""

    def __init__(self, summand: Summand):
        self.summand, self.totals = summand, None

    def add(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        for start in range(0, len(images), BLOCK):
            parts = self.summand(images[start:start + BLOCK], masks[start:start + BLOCK])
            self.totals = parts if self.totals is None else tuple(a + b for a, b in zip(self.totals, parts))


def _observed_sums(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.where(masks, images, 0.0).double().sum(0), masks.sum(0, dtype=torch.int64)


class ObservedMean(BlockSum):
    """Each entry's mean over the images where it is observed."""

    def __init__(self):
        super().__init__(_observed_sums)

    def result(self) -> torch.Tensor:
        """(C, H, W) float32; the global observed mean where an entry is never observed (0.5 if none is)."""
        sums, counts = self.totals
        total = int(counts.sum())
        overall = float(sums.sum()) / total if total else 0.5
        return torch.where(counts > 0, sums / counts.clamp_min(1), overall).float()


def observed_mean(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(C, H, W): each entry's mean over the images where it is observed (the global observed mean elsewhere)."""
    mean = ObservedMean()
    mean.add(images, masks)
    return mean.result()


def root_mean_square(sums: BlockSum) -> float:
    """sqrt(sum / count) of a `BlockSum` whose summand gives (sum of squares, count); 0 before any count."""
    if sums.totals is None or not int(sums.totals[1]):
        return 0.0
    squares, count = sums.totals
    return math.sqrt(float(squares) / int(count))
