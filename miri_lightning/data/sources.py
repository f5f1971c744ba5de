"""Image sources: each loads a whole image collection into memory as an `ImageSet`.

Sources are configured from YAML through jsonargparse/LightningCLI, so every option is a plain typed
`__init__` argument with a default, documented in the class docstring.
"""

from __future__ import annotations

import math
import struct
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from miri_lightning.data.checks import check_binary, check_unit_range, first_index
from miri_lightning.data.images import Decoding, channels_first, decode_once, image_files, uint8_to_floats
from miri_lightning.data.storage import chunk_rows
from miri_lightning.errors import ConfigError, DataError



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
        """All images as float32 (N, C, H, W) in [0, 1], 0 where missing."""
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
        return torch.nan_to_num(chunk.float(), 0.0)  # NaN is missing (masked by the source): 0, as a fill starts

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

    @abstractmethod
    def load(self) -> ImageSet: ...


def _check_num_images(source: ImageSource, num_images: int | None) -> int | None:
    if num_images is not None and num_images < 1:
        raise ConfigError(f"{type(source).__name__} num_images must be None (all images) or >= 1, got {num_images}")
    return num_images


class Shapes(ImageSource):
    """Synthetic RGB images drawn offline: the built-in default source, no download.

    Each image has a smooth two-colour gradient background in a random direction and 2-4 filled shapes
    (ellipses, rectangles, triangles, randomly rotated) in solid colours with sharp edges; in about half of
    the images the first shape carries a stripe or checker texture. Edges are antialiased analytically: a pixel
    takes the share of a shape given by its signed distance to the edge (a one-pixel ramp, which is what
    box-filtering a sharp straight edge gives). Deterministic given the seed.

    Args:
        num_images: Number of images to generate (>= 1; None means the default of 2000).
        image_size: Height and width of the square images in pixels (>= 8).
        seed: Random seed; the same seed gives bit-identical images.
    """

    MAX_SHAPES = 4
    CHUNK_PIXELS = 2**20  # pixels rendered at once, bounds the memory of the intermediates

    def __init__(self, num_images: int | None = 2000, image_size: int = 32, seed: int = 0) -> None:
        if image_size < 8:
            raise ConfigError(f"Shapes image_size must be >= 8, got {image_size}")
        self.num_images = _check_num_images(self, num_images) or 2000
        self.image_size = image_size
        self.seed = seed

    def load(self) -> ImageSet:
        params = self._draw_params()
        chunk = max(1, self.CHUNK_PIXELS // self.image_size**2)
        chunks = [
            self._render({k: v[i : i + chunk] for k, v in params.items()}) for i in range(0, self.num_images, chunk)
        ]
        return ImageSet(images=torch.cat(chunks))

    def _draw_params(self) -> dict[str, torch.Tensor]:
        # All randomness comes from one (N, K) draw, row by row, so image i is the same whatever num_images and
        # the chunk size are; each parameter is a slice of the columns, mapped from [0, 1) to its range.
        s = self.MAX_SHAPES
        shapes = {
            "bg_angle": (), "bg_colors": (2, 3), "count": (), "kind": (s,), "color": (s, 3), "center": (s, 2),
            "half_size": (s, 2), "angle": (s,), "textured": (), "checker": (), "texture_color": (3,), "period": (),
        }  # fmt: skip
        widths = [math.prod(shape) for shape in shapes.values()]
        draws = torch.rand(self.num_images, sum(widths), generator=torch.Generator().manual_seed(self.seed))
        r = {k: d.reshape(-1, *shape) for (k, shape), d in zip(shapes.items(), draws.split(widths, dim=1))}
        return {
            "bg_angle": r["bg_angle"] * 2 * math.pi,
            "bg_colors": r["bg_colors"],
            "active": torch.arange(s) < 2 + (r["count"] * (s - 1)).long().unsqueeze(1),  # 2..MAX_SHAPES shapes
            "kind": (r["kind"] * 3).long(),
            "color": r["color"],
            "center": 0.15 + 0.7 * r["center"],
            "half_size": 0.08 + 0.2 * r["half_size"],
            "angle": r["angle"] * math.pi,
            "textured": r["textured"] < 0.5,
            "checker": r["checker"] < 0.5,
            "texture_color": r["texture_color"],
            "period": 3 + 3 * r["period"],  # pixels: finer textures would blur into a flat colour
        }

    def _render(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        size = self.image_size
        grid = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres, in pixels
        x, y = grid.view(1, 1, size), grid.view(1, size, 1)
        canvas = self._background(p, x / size, y / size)
        for i in range(self.MAX_SHAPES):
            du, dv, distance = self._shape(p, i, x, y, size)
            color = p["color"][:, i, :, None, None]
            if i == 0:
                color = color + self._texture(p, du, dv).unsqueeze(1) * (p["texture_color"][:, :, None, None] - color)
            coverage = (0.5 - distance).clamp_(0, 1) * p["active"][:, i, None, None]
            canvas = canvas + coverage.unsqueeze(1) * (color - canvas)
        # Rounding in the blends can step a hair outside [0, 1].
        return canvas.clamp_(0, 1)

    @staticmethod
    def _background(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cos, sin = p["bg_angle"].cos().view(-1, 1, 1), p["bg_angle"].sin().view(-1, 1, 1)
        # Normalise the projection by its range over the unit square so the gradient spans both colours.
        low = cos.clamp(max=0) + sin.clamp(max=0)
        t = ((x * cos + y * sin - low) / (cos.abs() + sin.abs())).unsqueeze(1)
        c0, c1 = p["bg_colors"][:, 0, :, None, None], p["bg_colors"][:, 1, :, None, None]
        return c0 + (c1 - c0) * t

    @staticmethod
    def _shape(
        p: dict[str, torch.Tensor], i: int, x: torch.Tensor, y: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coordinates in shape i's rotated frame and signed distance to its edge (negative inside), in pixels."""
        cx, cy = (p["center"][:, i, k, None, None] * size for k in range(2))
        a, b = (p["half_size"][:, i, k, None, None] * size for k in range(2))
        cos, sin = p["angle"][:, i, None, None].cos(), p["angle"][:, i, None, None].sin()
        du = (x - cx) * cos + (y - cy) * sin
        dv = (y - cy) * cos - (x - cx) * sin
        # Ellipse: the implicit function over its gradient length, exact enough within the pixel around the edge
        # (at the centre it is -1/0 = -inf, fully inside).
        ellipse = ((du / a).square() + (dv / b).square() - 1) / (2 * torch.hypot(du / a**2, dv / b**2))
        rectangle = torch.maximum(du.abs() - a, dv.abs() - b)
        # Triangle with its apex at (0, b) and base from (-a, -b) to (a, -b): the farthest of its three edge lines.
        triangle = torch.maximum(-b - dv, (2 * b * du.abs() + a * dv - a * b) / torch.hypot(2 * b, a))
        kind = p["kind"][:, i, None, None]
        return du, dv, torch.where(kind == 0, ellipse, torch.where(kind == 1, rectangle, triangle))

    @staticmethod
    def _texture(p: dict[str, torch.Tensor], du: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        """Share of the texture colour per pixel: stripes along u, or a checker; 0 where untextured."""
        width = p["period"].view(-1, 1, 1) / 2
        even_u, even_v = _even_band(du, width), _even_band(dv, width)
        checker = even_u * even_v + (1 - even_u) * (1 - even_v)
        pattern = torch.where(p["checker"].view(-1, 1, 1), checker, even_u)
        return pattern * p["textured"].view(-1, 1, 1)


def _even_band(coord: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """How much of the pixel at `coord` lies in an even-numbered band of `width` pixels (antialiased 0..1)."""
    phase = coord / width
    band = torch.floor(phase)
    to_edge = torch.minimum(phase - band, band + 1 - phase) * width
    sign = 1 - 2 * band.remainder(2)  # +1 in even bands, -1 in odd ones
    return (0.5 + sign * to_edge).clamp_(0, 1)


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
        self.num_images = _check_num_images(self, num_images)

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
        cache: Decode the files once into an 8-bit cache file (under $MIRI_CACHE_DIR, by default
            ~/.cache/miri-lightning) that later runs of the same files and settings map; False decodes them
            into memory on every run.
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
        self.num_images = _check_num_images(self, num_images)
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


class _TorchvisionSplit(ImageSource):
    """Options shared by torchvision's data sets that come as a train and a test split.

    Args:
        root: Folder that holds (or will receive) the data set's files.
        train: True for the training split, False for the test split.
        download: Download the data set into `root` if it is missing.
        num_images: Use only the first `num_images` images (>= 1); None uses all.
    """

    def __init__(
        self, root: str | Path = "data", train: bool = True, download: bool = False, num_images: int | None = None
    ) -> None:
        self.root = Path(root)
        self.train = train
        self.download = download
        self.num_images = _check_num_images(self, num_images)

    def prepare(self) -> None:
        if self.download:
            self.load()


class CIFAR10(_TorchvisionSplit):
    """CIFAR-10 (3x32x32) through `torchvision.datasets.CIFAR10` (reads `root/cifar-10-batches-py/`).

    Args: as `_TorchvisionSplit` (train: 50,000 images, test: 10,000).
    """

    def load(self) -> ImageSet:
        from torchvision.datasets import CIFAR10 as TorchCIFAR10

        try:
            dataset = TorchCIFAR10(self.root, train=self.train, download=self.download)
        except (RuntimeError, OSError, ValueError, EOFError) as err:
            raise DataError(f"cannot load CIFAR-10 from {self.root / 'cifar-10-batches-py'}: {err}") from err
        # `.data` is already a uint8 (N, 32, 32, 3) array: no per-item PIL round trip needed.
        return ImageSet(images=channels_first(dataset.data[: self.num_images]))


class MNIST(_TorchvisionSplit):
    """MNIST digits through `torchvision.datasets.MNIST` (reads `root/MNIST/raw/*-ubyte`), resized to 1x32x32.

    Args: as `_TorchvisionSplit` (train: 60,000 images, test: 10,000).
    """

    IMAGE_SIZE = 32

    def load(self) -> ImageSet:
        from torchvision.datasets import MNIST as TorchMNIST

        try:
            dataset = TorchMNIST(self.root, train=self.train, download=self.download)
        # torchvision's IDX parser reports malformed files with assert/TypeError/ValueError.
        except (RuntimeError, OSError, ValueError, TypeError, AssertionError) as err:
            raise DataError(f"cannot load MNIST from {self.root / 'MNIST' / 'raw'}: {err}") from err
        images = uint8_to_floats(dataset.data[: self.num_images])
        # Upsampling 28 -> 32, where bilinear needs no antialiasing and stays within [0, 1].
        return ImageSet(images=F.interpolate(images, size=self.IMAGE_SIZE, mode="bilinear", align_corners=False))


class CelebA(ImageSource):
    """CelebA aligned faces, center cropped to 140x140 (of 178x218) and resized to `image_size`.

    Reads through `torchvision.datasets.CelebA` (`root/celeba/img_align_celeba/` plus its five `.txt`
    annotation files, which torchvision requires and checks by md5 even though no targets are used), or,
    when `folder` is given, from a plain folder of the aligned JPEGs in file name order (the official
    download often fails); `split` is then ignored.

    Args:
        root: Folder that holds (or will receive) `celeba/`.
        split: One of "train", "valid", "test", "all".
        download: Download the data set into `root` if it is missing (needs gdown).
        folder: A folder of img_align_celeba JPEGs to use instead of torchvision's layout.
        num_images: Use only the first `num_images` images (>= 1); None uses all.
        image_size: Height and width of the resized square images.
        cache: Decode the files once into an 8-bit cache file, as `ImageFolder` does.
    """

    CROP = 140

    def __init__(
        self,
        root: str | Path = "data",
        split: str = "train",
        download: bool = False,
        folder: str | Path | None = None,
        num_images: int | None = None,
        image_size: int = 64,
        cache: bool = True,
    ) -> None:
        if split not in ("train", "valid", "test", "all"):
            raise ConfigError(f"CelebA split must be one of train, valid, test, all; got {split!r}")
        if image_size < 1:
            raise ConfigError(f"CelebA image_size must be >= 1, got {image_size}")
        self.root = Path(root)
        self.split = split
        self.download = download
        self.folder = None if folder is None else Path(folder)
        self.num_images = _check_num_images(self, num_images)
        self.image_size = image_size
        self.cache = cache

    def prepare(self) -> None:
        if self.download and self.folder is None:
            self._torchvision_files()
        if self.cache:
            self._decoded()

    def load(self) -> ImageSet:
        return ImageSet(images=channels_first(self._decoded()))

    def _decoded(self) -> np.ndarray:
        files = image_files(self.folder) if self.folder is not None else self._torchvision_files()
        folder = self.folder if self.folder is not None else files[0].parent
        return decode_once(folder, files, Decoding("RGB", self.image_size, self.CROP, self.num_images), self.cache)

    def _torchvision_files(self) -> list[Path]:
        from torchvision.datasets import CelebA as TorchCelebA

        try:
            dataset = TorchCelebA(self.root, split=self.split, target_type=[], download=self.download)
        except (RuntimeError, OSError, ValueError) as err:
            raise DataError(f"cannot load CelebA from {self.root / 'celeba'}: {err}") from err
        if not dataset.filename:
            partition = self.root / "celeba" / "list_eval_partition.txt"
            raise DataError(f"{partition} lists no images for split {self.split!r}")
        # Only the split's file list is taken from torchvision; decoding and cropping are shared with the folder mode.
        return [Path(dataset.root, dataset.base_folder, "img_align_celeba", name) for name in dataset.filename]
