"""Mask mechanisms: which entries of an image collection are hidden from the imputer.

Convention used everywhere in miri-lightning: a mask is a bool tensor shaped like
the images, ``True`` (1) = OBSERVED, ``False`` (0) = missing.

Every mechanism is a small class configured by plain typed ``__init__`` arguments
(so LightningCLI / jsonargparse can build it from YAML) and called on a whole
collection: ``images`` float32 ``(N, C, H, W)`` in ``[0, 1]`` -> bool ``(N, C, H, W)``.
Randomness comes only from a local ``torch.Generator`` seeded with ``seed``, so the
same seed and images always give bit-identical masks; all work happens on the CPU
and the masks are returned on the CPU.
"""

from miri_lightning.data.masks.base import AnyOf, Chunks, MaskMechanism
from miri_lightning.data.masks.by_value import MAR, MNAR
from miri_lightning.data.masks.mcar import MCAR, CenterBox, RandomBoxes, Strokes

__all__ = ["MaskMechanism", "Chunks", "MCAR", "CenterBox", "RandomBoxes", "Strokes", "MAR", "MNAR", "AnyOf"]
