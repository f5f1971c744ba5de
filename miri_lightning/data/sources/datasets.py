"""Public data sets read through torchvision: CIFAR-10, MNIST and CelebA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F

from miri_lightning.data.images import Decoding, channels_first, decode_once, image_files, uint8_to_floats
from miri_lightning.data.sources.base import ImageSet, ImageSource, check_num_images
from miri_lightning.errors import ConfigError, DataError


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
        self.num_images = check_num_images(self, num_images)

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
        self.num_images = check_num_images(self, num_images)
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
