"""Image sources: each gives its image collection as an `ImageSet`, kept as it is stored (8-bit stays 8-bit,
a file that can be mapped is mapped) until setup() reads it a chunk of images at a time.

Sources are configured from YAML through jsonargparse/LightningCLI, so every option is a plain typed
`__init__` argument with a default, documented in the class docstring.
"""

from miri_lightning.data.sources.base import ImageSet, ImageSource
from miri_lightning.data.sources.datasets import CIFAR10, MNIST, CelebA
from miri_lightning.data.sources.files import ImageFolder, NpzImages
from miri_lightning.data.sources.shapes import Shapes

__all__ = ["ImageSet", "ImageSource", "Shapes", "NpzImages", "ImageFolder", "CIFAR10", "MNIST", "CelebA"]
