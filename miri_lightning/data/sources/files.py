"""Sources that read the user's own files: a NumPy `.npz` archive, or a folder of images."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from miri_lightning.data.checks import check_binary, check_unit_range, first_index
from miri_lightning.data.images import Decoding, channels_first, decode_once, image_files
from miri_lightning.data.sources.base import ImageSet, ImageSource, check_num_images
from miri_lightning.data.storage import chunk_rows
from miri_lightning.errors import ConfigError, DataError


class NpzImages(ImageSource):
    """Images from a NumPy `.npz` archive.

    The image array is (N, H, W) or (N, H, W, C) with C = 1 or 3, either uint8 (0..255) or float in [0, 1].
    NaN entries of a float array mark missing values: they become 0 in the images and False in the masks;
    infinite values are an error. If the archive holds an array under `mask_key`, (N, H, W) (shared by all
    channels) or (N, H, W, C), bool or 0/1 (1 = observed), it gives the masks; a NaN image entry that the
    mask array calls observed is an error (the two disagree, e.g. masks stored in another image order).

    Args:
        path: Path of the `.npz` file.
        key: Name of the image array in the archive.
        mask_key: Name of the optional mask array; None ignores masks in the file.
        num_images: Use only the first `num_images` images (>= 1); None uses all.
    """

    def __init__(
        self, path: str | Path, key: str = "images", mask_key: str | None = "masks", num_images: int | None = None
    ) -> None:
        self.path = Path(path)
        self.key = key
        self.mask_key = mask_key
        self.num_images = check_num_images(self, num_images)

    def check(self) -> None:
        if self.path.is_file():
            return
        from miri_lightning.data.build import DEFAULT_OUT, build_command

        built = {name: dataset for dataset, name in DEFAULT_OUT.items()}.get(self.path.name)
        hint = f"; build it with `{build_command(built, self.path)}` (README, Datasets)" if built else ""
        raise DataError(f"data.source.path {self.path} does not exist{hint}")

    def load(self) -> ImageSet:
        arrays = self._read_arrays()
        self._check_shapes(arrays)
        # Shapes are checked on the whole file (a mask array for other images is wrong whatever num_images is),
        # values only on the images used.
        arrays = {k: a[: self.num_images] for k, a in arrays.items()}
        array = arrays[self.key]
        self._check_images(array)
        if not array.dtype.isnative:  # torch reads native byte order only
            array = array.astype(array.dtype.newbyteorder("="))
        if self.mask_key not in arrays:
            return ImageSet(channels_first(array), nan_missing=array.dtype != np.uint8 and _has_nan(array))
        masks = arrays[self.mask_key]
        self._check_masks(masks, array)
        n, h, w = array.shape[:3]
        # Kept as they are (mapped, if the member is stored): bools are made a chunk at a time.
        return ImageSet(channels_first(array), masks=masks.reshape(n, h, w, -1).transpose(0, 3, 1, 2))

    def _read_arrays(self) -> dict[str, np.ndarray]:
        try:
            archive = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"cannot read {self.path} as an .npz archive: {err}") from err
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{self.path} is a single .npy array, expected an .npz archive")
        with archive:
            if self.key not in archive.files:
                found = ", ".join(archive.files) or "nothing"
                raise DataError(f"{self.path} has no array {self.key!r}; it holds: {found}")
            wanted = [k for k in (self.key, self.mask_key) if k in archive.files]
            try:
                # An uncompressed member is mapped, not read: a collection larger than memory stays on disk.
                return {k: _mapped_member(self.path, k) if _stored(archive, k) else archive[k] for k in wanted}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise DataError(f"cannot read the arrays {wanted} of {self.path}: {err}") from err

    def _where(self, key: str) -> str:
        return f"{self.path} array {key!r}"

    def _check_shapes(self, arrays: dict[str, np.ndarray]) -> None:
        images, where = arrays[self.key], self._where(self.key)
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise DataError(f"{where} has shape {images.shape}, expected (N, H, W) or (N, H, W, C) with C 1 or 3")
        if images.shape[0] == 0:
            raise DataError(f"{where} holds no images (shape {images.shape})")
        if 0 in images.shape[1:3]:
            raise DataError(f"{where} has shape {images.shape}: images without pixels")
        if self.mask_key not in arrays:
            return
        n, h, w, c = images.shape if images.ndim == 4 else (*images.shape, 1)
        shapes = list(dict.fromkeys([(n, h, w), (n, h, w, 1), (n, h, w, c)]))
        masks = arrays[self.mask_key]
        if masks.shape not in shapes:
            expected = ", ".join(map(str, shapes[:-1])) + f" or {shapes[-1]}"
            raise DataError(
                f"{self._where(self.mask_key)} has shape {masks.shape}, expected {expected} to match "
                f"{self.key!r} of shape {images.shape}"
            )

    def _check_images(self, array: np.ndarray) -> None:
        where = self._where(self.key)
        if array.dtype == np.uint8:
            return
        if not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{where} has dtype {array.dtype}, expected uint8 (0..255) or float in [0, 1]")
        check_unit_range(array, where)

    def _check_masks(self, masks: np.ndarray, images: np.ndarray) -> None:
        """0/1 masks that call no NaN image entry observed, checked a chunk of images at a time."""
        where = self._where(self.mask_key)
        h, w = images.shape[1:3]
        for rows in chunk_rows(images.shape):
            chunk = masks[rows]
            check_binary(chunk, where, offset=rows.start)
            if images.dtype == np.uint8:
                continue
            # (n, H, W, C) views of both, so a mask shared by the channels broadcasts over them.
            contradicts = np.isnan(images[rows].reshape(len(chunk), h, w, -1))
            contradicts &= chunk.reshape(len(chunk), h, w, -1).astype(bool)
            if contradicts.any():
                index = first_index(contradicts)[: images.ndim]
                index = (index[0] + rows.start, *index[1:])
                raise DataError(
                    f"{self._where(self.key)} is NaN (missing) at index {index}, where {where} says observed (1); "
                    "expected the masks to be 0 wherever the images are NaN"
                )


def _has_nan(array: np.ndarray) -> bool:
    """Whether a float array holds a NaN (the float64 sum of finite values in [0, 1] is finite), without a
    copy the size of the array."""
    return bool(np.isnan(np.add.reduce(array, axis=None, dtype=np.float64)))


def _stored(archive: np.lib.npyio.NpzFile, key: str) -> bool:
    """Whether the archive keeps `key` uncompressed (np.savez does; np.savez_compressed does not)."""
    return archive.zip.getinfo(key + ".npy").compress_type == zipfile.ZIP_STORED


def _mapped_member(path: Path, key: str) -> np.ndarray:
    """An uncompressed `.npz` member as a copy-on-write map of the file: pages are read when touched, and
    writes (none are made) would stay private."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        info = archive.getinfo(key + ".npy")
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header; its name and extra field lengths can differ from the directory's
        if local[:4] != b"PK\x03\x04":
            raise DataError(f"{path} member {key!r} has no local file header: the archive is damaged")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:  # as np.load says it
            raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
        return np.memmap(path, dtype=dtype, mode="c", offset=f.tell(), shape=shape, order="F" if fortran else "C")


class ImageFolder(ImageSource):
    """All PNG/JPEG/BMP/WEBP images in one folder (not recursive), in file name order.

    Every image is converted to `channels` (grayscale ones repeated to RGB, alpha dropped, 16-bit grayscale
    scaled to 8 bits), so mixed modes are fine; mixed sizes need `image_size`.

    Args:
        path: The folder.
        image_size: If given, center crop every image to a square and resize it to this size (bicubic, antialiased).
            If None, all images must already have the same size.
        channels: 3 converts to RGB, 1 to grayscale.
        num_images: Use only the first `num_images` readable images (>= 1); None uses all.
        on_bad_file: What to do with a file that cannot be decoded (corrupt or truncated): `fail` stops with an
            error naming it; `skip` leaves it out and warns once with the count and the first names.
        cache: Decode the files once into an 8-bit cache file (under `images.cache_dir()`: $MIRI_CACHE_DIR,
            else the user's cache folder) that later runs of the same files and settings map; False decodes
            them into memory on every run.
    """

    def __init__(
        self,
        path: str | Path,
        image_size: int | None = None,
        channels: int = 3,
        num_images: int | None = None,
        on_bad_file: Literal["fail", "skip"] = "fail",
        cache: bool = True,
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError(f"ImageFolder channels must be 1 or 3, got {channels}")
        if image_size is not None and image_size < 1:
            raise ConfigError(f"ImageFolder image_size must be None or >= 1, got {image_size}")
        if on_bad_file not in ("fail", "skip"):
            raise ConfigError(f"ImageFolder on_bad_file must be 'fail' or 'skip', got {on_bad_file!r}")
        self.path = Path(path)
        self.image_size = image_size
        self.channels = channels
        self.num_images = check_num_images(self, num_images)
        self.on_bad_file = on_bad_file
        self.cache = cache

    def prepare(self) -> None:
        if self.cache:  # decoded here, once per machine, so that every process maps one file
            self._decoded()

    def load(self) -> ImageSet:
        return ImageSet(images=channels_first(self._decoded()))

    def _decoded(self) -> np.ndarray:
        decoding = Decoding("RGB" if self.channels == 3 else "L", self.image_size, limit=self.num_images,
                            skip_bad=self.on_bad_file == "skip")
        return decode_once(self.path, image_files(self.path), decoding, self.cache)
