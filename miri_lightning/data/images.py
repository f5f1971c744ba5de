"""Reading image files, shared by the training sources and `miri-impute`: decoding, 8-bit conversion, crop
and resize, and the decode-once cache that turns a folder of files into one mapped 8-bit array.

Decoding 200,000 JPEGs takes many minutes and, held as a Python list, more memory than the collection; the
cache decodes them once, straight to a file, and every later run (and every process of a node) maps that
file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
import PIL
from PIL import Image, ImageOps, features
from tqdm.auto import tqdm

from miri_lightning.data.checks import shorten
from miri_lightning.errors import DataError, OutputError
from miri_lightning.io import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Grayscale modes of more than 8 bits per pixel (16-bit PNGs open as I;16, older Pillow gives I).
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I", "I;16N")
# Part of every cache key: raise it whenever decoding changes what a file gives, so old caches go unused.
CACHE_VERSION = 1
CACHE_DIR_VARIABLE = "MIRI_CACHE_DIR"


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder, sorted by name (a DataError when there are none)."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(
            f"image folder {folder} holds no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def channels_first(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) -> an (N, C, H, W) view, no copy (a mapped array stays mapped)."""
    tensor = torch.as_tensor(array)
    return (tensor.unsqueeze(-1) if tensor.ndim == 3 else tensor).permute(0, 3, 1, 2)


def uint8_to_floats(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    # Made contiguous while still uint8, the cheaper copy; float() keeps the layout.
    return channels_first(array).contiguous().float().div_(255)


def read_image(path: Path, mode: str) -> Image.Image:
    """A decoded image in PIL `mode` (a DataError naming the file when it cannot be read)."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes the whole file, so truncated files fail here
            # Phone photos store pixels unrotated plus an EXIF orientation: turn them as viewers show them.
            return _to_8bit(ImageOps.exif_transpose(image)).convert(mode)
    # PIL's decoders signal corrupt data with many exception types (struct.error, IndexError, EOFError, ...), and
    # DecompressionBombError for absurd sizes in a header; any of them means this file cannot be used.
    except Exception as err:
        raise DataError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err


def _to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer grayscale (16-bit PNGs) scaled to 8-bit L; other modes as they are.

    PIL's own conversion of these modes clips at 255 instead of scaling, which turns most pixels white.
    """
    if image.mode not in HIGH_DEPTH_MODES:
        return image
    values = np.asarray(image, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(f"image mode {image.mode} holds values outside 0..65535, expected 16-bit grayscale")
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))  # 2-D uint8 gives mode L


def center_crop_resize(image: Image.Image, crop: int, size: int) -> Image.Image:
    """Center crop to a `crop` x `crop` square, then resize to `size` x `size` (bicubic, antialiased)."""
    # Images smaller than the crop (e.g. already cropped copies) are cropped to their short side instead of padded.
    crop = min(crop, *image.size)
    left, top = round((image.width - crop) / 2), round((image.height - crop) / 2)
    # Cropping first keeps the resize filter from reaching pixels outside the crop; PIL's resize filters over
    # the whole source support, which antialiases when shrinking.
    return image.crop((left, top, left + crop, top + crop)).resize((size, size), Image.Resampling.BICUBIC)


RESIZE_ADVICE = "set image_size to center-crop and resize them all to one square size"


def check_same_size(folder: Path, sizes: dict[tuple[int, int], list[str]], advice: str = RESIZE_ADVICE) -> None:
    """A DataError listing the sizes found (width, height -> file names), with example files, when there are
    several; `advice` says what to do about it."""
    if len(sizes) <= 1:
        return
    groups = sorted(sizes.items(), key=lambda item: -len(item[1]))
    listing = "; ".join(f"{w}x{h}: {len(names)} (e.g. {', '.join(names[:3])})" for (w, h), names in groups[:5])
    listing += f"; and {len(groups) - 5} more sizes" if len(groups) > 5 else ""
    raise DataError(
        f"images in {folder} differ in size (width x height: count) - {listing}; {advice}"
    )


@dataclass(frozen=True)
class Decoding:
    """How image files become one 8-bit collection (a cache is reused only for the same files and these).

    Args:
        mode: PIL mode, "RGB" or "L".
        size: side of the square images, after a center crop (None: as stored, and all must have one size).
        crop: side of the center square cut out before resizing (None: the image's short side).
        limit: decode the first `limit` readable files (None: all).
        skip_bad: leave out files that cannot be decoded (else the first one is an error).
    """

    mode: str
    size: Optional[int] = None
    crop: Optional[int] = None
    limit: Optional[int] = None
    skip_bad: bool = False

    def image(self, path: Path) -> Image.Image:
        image = read_image(path, self.mode)
        return image if self.size is None else center_crop_resize(image, self.crop or min(image.size), self.size)


class _Decoder:
    """Decodes files in order, one array at a time, and remembers what it skipped and the sizes it met."""

    def __init__(self, folder: Path, files: list[Path], decoding: Decoding, advice: str = RESIZE_ADVICE):
        self.folder, self.files, self.decoding, self.advice = folder, files, decoding, advice
        self.skipped: list[str] = []
        self.sizes: dict[tuple[int, int], list[str]] = {}

    def __iter__(self) -> Iterator[np.ndarray]:
        total = len(self.files) if self.decoding.limit is None else min(self.decoding.limit, len(self.files))
        count = 0
        with tqdm(total=total, desc=f"decoding {self.folder}", unit="img", disable=None, leave=False) as bar:
            for file in self.files:
                if count == self.decoding.limit:
                    break
                try:
                    image = self.decoding.image(file)
                except DataError:
                    if not self.decoding.skip_bad:
                        raise
                    self.skipped.append(file.name)
                    continue
                self.sizes.setdefault(image.size, []).append(file.name)
                count += 1
                bar.update()
                if len(self.sizes) == 1:  # other sizes are only listed in the error at the end
                    yield np.asarray(image)
        _warn_skipped(self.folder, self.skipped)
        if not self.sizes:
            raise DataError(f"image folder {self.folder} holds no readable images: all {len(self.skipped)} image "
                            "files are bad")
        check_same_size(self.folder, self.sizes, self.advice)


def _warn_skipped(folder: Path, names: list[str]) -> None:
    if names:
        rank_zero_warn(f"image folder {folder}: skipped {len(names)} unreadable image files: {shorten(names)}")


def decode(folder: Path, files: list[Path], decoding: Decoding, advice: str = RESIZE_ADVICE) -> np.ndarray:
    """The files decoded into memory: uint8 (N, H, W) or (N, H, W, C); `advice` follows a size mismatch."""
    return np.stack(list(_Decoder(folder, files, decoding, advice)))


def cache_dir() -> Path:
    """Where decoded collections are kept: $MIRI_CACHE_DIR, else the user's cache folder ($XDG_CACHE_HOME,
    by default ~/.cache) / miri-lightning."""
    if os.environ.get(CACHE_DIR_VARIABLE):
        return Path(os.environ[CACHE_DIR_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "miri-lightning"


class DecodeCache:
    """One folder's files decoded once into `<key>.u8` (raw uint8 rows) and `<key>.json` (shape, skipped files)
    under `cache_dir()`, the key a hash of the files (path, size, modification time) and the decoding settings:
    a changed, added or removed file, or other settings, make a new cache.

    Both are written to temporary names, synced and renamed, the description last, so a run killed while
    decoding leaves no cache that a later run would trust.
    """

    def __init__(self, folder: Path, files: list[Path], decoding: Decoding):
        self.folder, self.files, self.decoding = folder, files, decoding
        listing = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        # A new Pillow or libjpeg may decode the same file to other pixels.
        decoders = {"pillow": PIL.__version__, "jpeg": features.version("jpg")}
        text = json.dumps({"version": CACHE_VERSION, "decoders": decoders, "decoding": asdict(decoding),
                           "files": listing})
        key = hashlib.sha1(text.encode()).hexdigest()[:20]
        root = cache_dir()
        self.data, self.description = root / f"{folder.name}-{key}.u8", root / f"{folder.name}-{key}.json"

    def read(self) -> Optional[np.ndarray]:
        """The decoded images, mapped (None when there is no complete cache)."""
        try:
            about = json.loads(self.description.read_text())
            shape = tuple(about["shape"])
            if self.data.stat().st_size != int(np.prod(shape)):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        _warn_skipped(self.folder, about["skipped"])
        return self._map(shape)

    def _map(self, shape: tuple[int, ...]) -> np.ndarray:
        # Copy-on-write: pages are read when touched, and a tensor over it may be written without touching the file.
        return np.memmap(self.data, dtype=np.uint8, mode="c", shape=shape)

    def build(self) -> np.ndarray:
        """Decode every file into the cache, then map it."""
        rank_zero_info(f"decoding the {len(self.files)} images of {self.folder} once, into {self.data} "
                       f"(set {CACHE_DIR_VARIABLE} to keep it elsewhere; the source's `cache: false` skips it)")
        decoder, count, shape = _Decoder(self.folder, self.files, self.decoding), 0, None
        try:
            with atomic_path(self.data) as pending, open(pending, "wb") as out:
                for array in decoder:
                    shape = array.shape
                    out.write(array.tobytes())
                    count += 1
            about = {"shape": [count, *shape], "skipped": decoder.skipped, "folder": str(self.folder.resolve())}
            with atomic_path(self.description) as pending:
                pending.write_text(json.dumps(about))
        except OutputError as err:
            raise OutputError(f"{err}: set {CACHE_DIR_VARIABLE} to a writable folder with room, or the source's "
                              "`cache: false` to decode into memory") from err
        rank_zero_info(f"{self.data}: {count} decoded images, {self.data.stat().st_size / 1e9:.2f} GB; later runs "
                       "with the same files and settings map it instead of decoding (delete it to free the space)")
        return self._map((count, *shape))


def decode_once(folder: Path, files: list[Path], decoding: Decoding, cache: bool) -> np.ndarray:
    """The files decoded, uint8 (N, H, W) or (N, H, W, C): mapped from the cache (made now if missing) when
    `cache`, else decoded into memory."""
    if not cache:
        return decode(folder, files, decoding)
    store = DecodeCache(folder, files, decoding)
    found = store.read()
    if found is not None:
        rank_zero_info(f"reading the decoded images of {folder} from {store.data} "
                       f"({store.data.stat().st_size / 1e9:.2f} GB)")
        return found
    return store.build()
