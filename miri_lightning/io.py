"""Output files written atomically: a crash or kill mid-write leaves the previous good file."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_imputations(path, imputations: torch.Tensor, masks: torch.Tensor, **extra) -> None:
    """`images` float32 (N, H, W, C) in [0, 1] (lossless), `masks` uint8 (N, H, W, C) (1 = observed), and `extra`.

    The layout is the one `NpzImages` reads, so an output can be fed back in.
    Leading dimensions before (N, C, H, W) (several samples) are kept.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=imputations.float().movedim(-3, -1).numpy(),
                 masks=masks.to(torch.uint8).movedim(-3, -1).numpy(), **extra)


def save_png(path, image: torch.Tensor) -> None:
    """A (C, H, W) image in [0, 1] as an 8-bit PNG."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_round_record(path, record: dict) -> None:
    """Add one round's line to a JSON-lines file, dropping lines of that round or later (a redone round)."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.strip() and json.loads(line)["round"] < record["round"]]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept + [json.dumps(record)]))
