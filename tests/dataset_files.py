"""Small data sets written in torchvision's real on-disk formats (no test downloads anything)."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def exists_only(fpath, md5=None):
    return os.path.isfile(fpath)


def save_image(path: Path, array: np.ndarray, **kwargs) -> None:
    Image.fromarray(array).save(path, **kwargs)


def write_cifar(root: Path, batch_size: int = 3) -> dict[str, np.ndarray]:
    """Write cifar-10-batches-py/ with `batch_size` random images per batch; returns each batch's rows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        # Rows hold the 1024 red, then green, then blue values, each plane row-major (CHW order).
        rows[name] = rng.integers(0, 256, (batch_size, 3072), dtype=np.uint8)
        # The real files are Python 2 pickles whose byte-string keys torchvision reads back (encoding="latin1")
        # as str keys, so str keys here give the same dict that torchvision sees.
        labels = [0] * batch_size
        batch = {"batch_label": name, "data": rows[name], "labels": labels, "filenames": ["a.png"] * batch_size}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return rows


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    # IDX: big-endian int32 magic (0x08 = unsigned byte data, low byte = number of dims), then the dims, then the bytes.
    path.write_bytes(struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, train: int = 4) -> dict[str, np.ndarray]:
    """MNIST/raw/ as torchvision reads it: `train` training digits and 3 test digits, each set's first a white
    square on black, the rest random bytes."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = {}
    for prefix, n in (("train", train), ("t10k", 3)):
        images[prefix] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[prefix][0] = 0
        images[prefix][0, 8:20, 8:20] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", 2051, images[prefix])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, np.arange(n) % 10)
    return images


CELEBA_COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def write_celeba_jpegs(folder: Path, count: int = len(CELEBA_COLORS)) -> list[str]:
    """178x218 aligned-face-sized JPEGs: a flat colour in the central 140x140 crop (CELEBA_COLORS in turn), grey
    outside it."""
    folder.mkdir(parents=True)
    names = []
    for i in range(1, count + 1):
        color = CELEBA_COLORS[(i - 1) % len(CELEBA_COLORS)]
        image = np.full((218, 178, 3), 128, np.uint8)
        image[39:179, 19:159] = color
        names.append(f"{i:06d}.jpg")
        save_image(folder / names[-1], image, quality=95)
    return names


def write_celeba_torchvision(root: Path) -> None:
    """The layout torchvision's CelebA reads: img_align_celeba/ and five annotation files (all parsed)."""
    base = root / "celeba"
    names = write_celeba_jpegs(base / "img_align_celeba")
    partition = [0, 0, 0, 1, 1]  # train: 1-3, valid: 4-5 (a split of one image breaks torchvision's indexing)
    (base / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, partition)))
    (base / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names, 1)))
    # These three have a count line and a header line before the rows.
    header = f"{len(names)}\n"
    (base / "list_attr_celeba.txt").write_text(
        header + "Smiling Young \n" + "".join(f"{n}  1 -1\n" for n in names)
    )
    (base / "list_bbox_celeba.txt").write_text(
        header + "image_id x_1 y_1 width height\n" + "".join(f"{n} 95 71 226 313\n" for n in names)
    )
    parts = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
    landmarks = " ".join(f"{part}_{xy}" for part in parts for xy in "xy")
    (base / "list_landmarks_align_celeba.txt").write_text(
        header + landmarks + "\n" + "".join(f"{n} 69 109 106 113 77 142 73 152 108 154\n" for n in names)
    )
