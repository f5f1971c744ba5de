"""Where the imputation state lives: in (shared) memory, or in memory-mapped files on local disk.

A collection too large to copy into every process (CelebA at full size is
200,000 x 3 x 64 x 64 float32 = 9.8 GB) goes to `.npy` files that the ranks of
one node map together: the page cache holds one copy per node, not one per
process. Each round gets its own file, written by the node's local rank 0 to
a temporary name and renamed, so a checkpoint can name the file of its round
instead of embedding gigabytes, and a kill mid-write leaves no torn file.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

from ..blocks import BLOCK
from ..errors import ConfigError, DataError, OutputError

StateMode = Literal["auto", "memory", "memmap"]

# `auto` maps the state to disk when the float32 copies of all the node's
# processes would take more than this share of the machine's memory.
AUTO_MEMMAP_SHARE = 0.25
PENDING = ".pending.npy"
NUMPY_TYPES = {torch.float32: np.float32, torch.uint8: np.uint8, torch.bool: np.bool_}


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_mode(mode: StateMode, entries: int, processes_per_node: int) -> Literal["memory", "memmap"]:
    """Resolve `auto`: memory unless the per-process float32 copies would crowd the machine."""
    if mode != "auto":
        return mode
    needed = 2 * 4 * entries * processes_per_node  # imputations and ground truth
    return "memmap" if needed > AUTO_MEMMAP_SHARE * physical_memory_bytes() else "memory"


def available_memory_bytes() -> int:
    """What the kernel says new allocations can take without swapping (MemAvailable), else all memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return physical_memory_bytes()


def state_bytes_per_entry(truth_bytes: int) -> int:
    """Bytes per image entry of the state: imputations and the next round's (float32), masks (bool), truth."""
    return 4 + 4 + 1 + truth_bytes


def check_fits(mode: Literal["memory", "memmap"], entries: int, truth_bytes: int, processes_per_node: int,
               folder: Optional[Path]) -> None:
    """A ConfigError naming the key to change, before any work, when the state cannot fit where `mode` puts it:
    every process's memory (`memory`), or the node's disk at `folder` (`memmap`: round 0 and 1, masks, truth)."""
    need = entries * state_bytes_per_entry(truth_bytes)
    if mode == "memory":
        have = available_memory_bytes()
        if need * processes_per_node > have:
            raise ConfigError(
                f"data.state memory: the imputation state needs about {need / 1e9:.1f} GB in each of this node's "
                f"{processes_per_node} processes, and the machine has {have / 1e9:.1f} GB available; set data.state "
                "to memmap (node-local files, mapped by all its processes)")
        return
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise ConfigError(
            f"data.state memmap: the imputation state needs about {need / 1e9:.1f} GB on disk in {folder} (and "
            f"{4 * entries / 1e9:.1f} GB more each round), which has {free / 1e9:.1f} GB free; set data.state_dir to a "
            "local disk with room")


# The collection is built and read this many float32 bytes of images at a time (at least BLOCK images,
# and whole blocks of them, so that sums over the collection come out the same however it is chunked).
CHUNK_BYTES = 8 << 20


def chunk_rows(shape: tuple[int, ...]) -> list[slice]:
    """The chunks of images (N, ...) a collection is built in: whole blocks of `BLOCK` images."""
    entries = math.prod(shape[1:])
    rows = max(1, CHUNK_BYTES // (4 * entries * BLOCK)) * BLOCK
    return [slice(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


def round_file(round_index: int) -> str:
    return f"imputations_round{round_index:03d}.npy"


class MemmapStore:
    """Named arrays as `.npy` files in `folder`, written by one process per node, mapped by all.

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

    def create(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Optional[torch.Tensor]:
        """A new pending file of `shape` and `dtype`, mapped for writing (None off the writer)."""
        if not self.writer:
            return None
        path = self.path(PENDING)
        try:
            self._pending = np.lib.format.open_memmap(path, mode="w+", dtype=NUMPY_TYPES[dtype], shape=tuple(shape))
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
        pending = self.create(tuple(tensor.shape), tensor.dtype) if self.writer else None
        if pending is not None:
            pending.copy_(tensor)
        return self.commit(name)

    def shared(self, name: str, compute: Callable[[], dict]) -> dict:
        """`compute()` on the writer, saved as `name` (tensors and plain values); every process returns it."""
        if self.writer:
            result = compute()
            try:
                torch.save(result, self.path(PENDING))
                os.replace(self.path(PENDING), self.path(name))
            except OSError as err:
                raise OutputError(f"could not write {self.path(name)}: {err.strerror or err}") from err
        self.barrier()
        return result if self.writer else torch.load(self.path(name), weights_only=True)

    def open(self, name: str) -> torch.Tensor:
        """Map an existing file (read-write: the collection is replaced by new files, never edited)."""
        path = self.path(name)
        if not path.is_file():
            raise DataError(f"imputation state file {path} is missing: it must stay beside the run to resume it")
        return torch.from_numpy(np.load(path, mmap_mode="r+"))
