"""Checks of loaded images and masks shared by the sources, the datamodule and inference.

Each check raises a `DataError` whose message names the array (`where`) and the first offending index,
so a bad file can be fixed without searching it.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from miri_lightning.errors import ConfigError, DataError

# Lists in messages stop after this many items: enough to find the pattern, short enough to read.
SHOWN = 10


def first_index(bad: np.ndarray | torch.Tensor) -> tuple[int, ...]:
    """Index of the first True entry (row-major order) of a bool array that has one."""
    bad = bad.numpy() if isinstance(bad, torch.Tensor) else bad
    # argmax of a bool array is the first True, without the index list argwhere would build.
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))


def shorten(items: list) -> str:
    """The first `SHOWN` items, comma-separated, with how many more there are."""
    shown = ", ".join(str(item) for item in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def check_unit_range(array: np.ndarray, where: str) -> None:
    """Float values must be NaN (missing) or finite in [0, 1]; the error names the first bad index."""
    if array.size == 0:
        return
    # fmin/fmax skip NaN without copying the array (NaN only when all is NaN): one cheap pass when the data is fine.
    low, high = np.fmin.reduce(array, axis=None), np.fmax.reduce(array, axis=None)
    if np.isnan(low) or (low >= 0 and high <= 1):
        return
    index = first_index(~(np.isnan(array) | ((array >= 0) & (array <= 1))))
    raise DataError(
        f"{where} holds the value {float(array[index]):.6g} at index {index}; expected values in [0, 1] "
        "(NaN marks a missing entry; infinite values are never allowed)"
    )


def check_binary(array: np.ndarray, where: str, offset: int = 0) -> None:
    """Mask values must be bool or the numbers 0 and 1; the error names the bad values and the first index
    (`offset` is added to the first axis's, for an array that is a chunk of a larger one)."""
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{where} has dtype {array.dtype}, expected bool or the numbers 0/1 (1 = observed)")
    if array.dtype == bool:
        return
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        values = np.unique(array[bad])
        index = first_index(bad)
        raise DataError(
            f"{where} must hold only 0/1 (1 = observed); it holds {shorten(values.tolist())}, "
            f"the first at index {(index[0] + offset, *index[1:])}"
        )


def images_without_observed(masks: torch.Tensor) -> list[int]:
    """Indices of the images of bool masks (N, ...) that have no observed entry at all."""
    return (~masks.flatten(1).any(1)).nonzero().flatten().tolist()


def images_without_missing(masks: torch.Tensor) -> list[int]:
    """Indices of the images of bool masks (N, ...) that have every entry observed."""
    return masks.flatten(1).all(1).nonzero().flatten().tolist()


def check_collection(masks: torch.Tensor, shape: tuple[int, ...], batch_size: int) -> None:
    """Refuse collections training cannot use (masks bool (N, C, H, W)); report the ones it handles in a
    special way."""
    if tuple(masks.shape) != shape:
        raise DataError(f"masks have shape {tuple(masks.shape)}, expected {shape}")
    blind = images_without_observed(masks)
    if blind:
        raise DataError(
            f"no observed entry in {len(blind)} of {shape[0]} images, so there is nothing to condition their "
            f"imputation on: images {shorten(blind)} (after the source's masks and data.mask); remove them from "
            "the data or hide fewer entries"
        )
    if len(masks) < batch_size:
        raise ConfigError(f"data.batch_size ({batch_size}) is larger than the collection ({len(masks)} images)")
    never = ~masks.any(0)
    if never.any():
        rank_zero_warn(
            f"{int(never.sum())} entries are missing in every image: nothing in the data "
            "can tell what they hold, so their imputations are guesses from the rest."
        )
    complete = images_without_missing(masks)
    if complete:
        # Not an error: the velocity is zero on observed entries, so these images stay as they are.
        rank_zero_info(
            f"no missing entry in {len(complete)} of {shape[0]} images: they pass through every round unchanged"
        )
