"""Output files written atomically: a crash or kill mid-write leaves the previous good file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .errors import OutputError

PROBE_BYTES = 1 << 16  # enough to need a free data block: a full disk fails the probe


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, path: Path) -> None:
    """Give `tmp` the mode a new file would get, flush it to disk, then rename it over `path`."""
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private (0600); outputs are ordinary files
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # else a crash of the machine could leave the new name on an empty file
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A failed write (full disk, no permission) raises an `OutputError` that names
    `path`; the temporary file is removed and any previous `path` is untouched.
    A killed process can leave only a hidden `.NAME.*.tmp` file behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        yield tmp
        _publish(tmp, path)
    except OSError as err:
        raise OutputError(f"could not write {path}: {err.strerror or err} (any previous {path.name} is kept)") from err
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def check_writable(folder: str | os.PathLike, key: str) -> None:
    """Create `folder` and write, sync and delete a probe file in it, or raise an `OutputError` naming `key`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe.") as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise OutputError(f"{key} {folder} is not a writable folder: {err.strerror or err}") from err


def save_imputations(path, imputations: torch.Tensor, masks: torch.Tensor, **extra) -> None:
    """`images` float32 (N, H, W, C) in [0, 1] (lossless), `masks` uint8 (N, H, W, C) (1 = observed), and `extra`.

    The layout is the one `NpzImages` reads, so an output can be fed back in.
    Leading dimensions before (N, C, H, W) (several samples) are kept.
    """
    # Views, not copies (bool read as uint8 in place): np.savez writes a strided array a buffer at a time, so
    # a collection larger than memory (memory-mapped) is written without a collection-sized temporary.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=imputations.float().movedim(-3, -1).numpy(),
                 masks=masks.bool().movedim(-3, -1).numpy().view(np.uint8), **extra)


def publish_copy(source, path) -> None:
    """`path` becomes a copy of the finished file `source`: a hard link where the file system has them (no
    second write of a collection-sized file; `source` is only ever replaced by a rename, never edited, so the
    copy keeps its content), else a byte copy."""
    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def to_8bit(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) image (or a batch of them) in [0, 1] as uint8 (H, W, C), rounded: what a PNG of it holds."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).numpy()


def save_png(path, image: torch.Tensor) -> None:
    """A (C, H, W) image in [0, 1] as an 8-bit PNG."""
    array = to_8bit(image)
    array = array[..., 0] if array.shape[-1] == 1 else array  # grayscale PNGs are (H, W)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_round_record(path, record: dict) -> None:
    """Add one round's line to a JSON-lines file, dropping lines of that round or later (a redone round).

    The whole file is rewritten and renamed into place, never appended to, so
    a kill mid-write cannot leave a torn last line.
    """
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.strip() and json.loads(line)["round"] < record["round"]]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept + [json.dumps(record)]))
