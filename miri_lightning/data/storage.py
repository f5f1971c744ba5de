"""Where the imputation state lives: in (shared) memory, or in memory-mapped files on local disk.

A collection too large to copy into every process (CelebA at full size is
200,000 x 3 x 64 x 64 float32 = 9.8 GB) goes to `.npy` files that the ranks of
one node map together: the page cache holds one copy per node, not one per
process. Each round gets its own file, written by the node's local rank 0 to
a temporary name and renamed, so a checkpoint can name the file of its round
instead of embedding gigabytes, and a kill mid-write leaves no torn file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

from ..errors import DataError, OutputError

StateMode = Literal["auto", "memory", "memmap"]

# `auto` maps the state to disk when the float32 copies of all the node's
# processes would take more than this share of the machine's memory.
AUTO_MEMMAP_SHARE = 0.25
PENDING = ".pending.npy"


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_mode(mode: StateMode, entries: int, processes_per_node: int) -> Literal["memory", "memmap"]:
    """Resolve `auto`: memory unless the per-process float32 copies would crowd the machine."""
    if mode != "auto":
        return mode
    needed = 2 * 4 * entries * processes_per_node  # imputations and ground truth
    return "memmap" if needed > AUTO_MEMMAP_SHARE * physical_memory_bytes() else "memory"


def round_file(round_index: int) -> str:
    return f"imputations_round{round_index:03d}.npy"


class MemmapStore:
    """Named float32 arrays as `.npy` files in `folder`, written by one process per node, mapped by all.

    Args:
        folder: node-local folder for the files.
        writer: whether this process writes (the node's local rank 0).
        barrier: waits for every process (so readers open a file only once written).
    """

    def __init__(self, folder: Path, writer: bool, barrier: Callable[[], None]):
        self.folder, self.writer, self.barrier = Path(folder), writer, barrier
        if writer:
            self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / name

    def create(self, like: torch.Tensor) -> Optional[torch.Tensor]:
        """A new pending float32 file shaped like `like`, mapped for writing (None off the writer)."""
        if not self.writer:
            return None
        path = self.path(PENDING)
        try:
            self._pending = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(like.shape))
            # Reserve every block now: on a full disk this fails with ENOSPC, where writing into
            # a sparse mapped file later would kill the process with SIGBUS. (macOS has no posix_fallocate.)
            if hasattr(os, "posix_fallocate"):
                with open(path, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, path.stat().st_size)
        except OSError as err:
            raise OutputError(f"could not write the imputation state {path}: {err.strerror or err} "
                              "(the files of earlier rounds are kept)") from err
        return torch.from_numpy(self._pending)

    def commit(self, name: str) -> torch.Tensor:
        """Publish the pending file as `name` (an atomic rename), wait for every process, map it."""
        if self.writer:
            try:
                self._pending.flush()
                del self._pending
                os.replace(self.path(PENDING), self.path(name))
            except OSError as err:
                raise OutputError(f"could not write the imputation state {self.path(name)}: "
                                  f"{err.strerror or err}") from err
        self.barrier()
        return self.open(name)

    def save(self, name: str, tensor: Optional[torch.Tensor]) -> torch.Tensor:
        """Write `tensor` (only the writer needs it) as `name`, then map it in every process."""
        pending = self.create(tensor)
        if pending is not None:
            pending.copy_(tensor)
        return self.commit(name)

    def open(self, name: str) -> torch.Tensor:
        """Map an existing file (read-write: the collection is replaced by new files, never edited)."""
        path = self.path(name)
        if not path.is_file():
            raise DataError(f"imputation state file {path} is missing: it must stay beside the run to resume it")
        return torch.from_numpy(np.load(path, mmap_mode="r+"))
