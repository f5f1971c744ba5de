"""Fuzzing the loaders with seeded random inputs: each gives a clean ImageSet / mask or one of our own errors.

Plain seeded loops (no property-testing library): a failure prints the case, and the seed reproduces it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from miri_lightning.data.masks import MAR, MCAR, MNAR, AnyOf, CenterBox, RandomBoxes, Strokes
from miri_lightning.data.sources import ImageFolder, ImageSet, NpzImages
from miri_lightning.errors import MIRIError

CASES = 200
# Weighted towards what loads, so that the checks of a clean result run often too.
DTYPES = [np.uint8, np.float32, np.float64, np.float16, np.bool_, np.int16, np.int64, object, str]
DTYPE_WEIGHTS = [0.2, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.075, 0.075]
# Odds of values in [0, 1], 0/1, 0..255 and normal(0, 100), for images and for masks.
IMAGE_KINDS, MASK_KINDS = [0.4, 0.25, 0.2, 0.15], [0.15, 0.6, 0.1, 0.15]
SPECIAL = np.array([np.nan, np.inf, -np.inf, -1.0, 1.5, 256.0, 1e6, 0.0, 1.0])
MECHANISMS = [MCAR(missing_rate=0.5), CenterBox(), RandomBoxes(), Strokes(), MAR(), MNAR(),
              AnyOf([MCAR(seed=1), RandomBoxes(seed=2)])]


def _shape(rng: np.random.Generator, plausible: tuple[int, ...]) -> tuple[int, ...]:
    """Mostly `plausible`, otherwise any shape of 0 to 5 dims, 0-sized ones included."""
    if rng.random() < 0.7:
        return plausible
    return tuple(int(s) for s in rng.integers(0, 5, rng.integers(0, 6)))


def _image_shape(rng: np.random.Generator) -> tuple[int, ...]:
    """(N, H, W) or (N, H, W, C) with C 1 or 3."""
    return tuple(int(s) for s in rng.integers(1, 6, 3)) + [(), (1,), (3,)][rng.integers(3)]


def _values(rng: np.random.Generator, shape: tuple[int, ...], p: list[float] = IMAGE_KINDS) -> np.ndarray:
    """Values in [0, 1], 0/1, 0..255 or anything (odds `p`), sometimes with NaN, inf or out-of-range ones."""
    kind = rng.choice(4, p=p)
    draws = [rng.random, lambda s: rng.integers(0, 2, s), lambda s: rng.integers(0, 256, s),
             lambda s: rng.normal(0, 100, s)]
    values = draws[kind](shape).astype(np.float64)
    if values.size and rng.random() < 0.25:
        values.flat[rng.integers(0, values.size, rng.integers(1, 4))] = rng.choice(SPECIAL)
    return values


def _array(rng: np.random.Generator, shape: tuple[int, ...], p: list[float] = IMAGE_KINDS) -> np.ndarray:
    values, dtype = _values(rng, shape, p), DTYPES[rng.choice(len(DTYPES), p=DTYPE_WEIGHTS)]
    if dtype is str:
        return values.astype(str)
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN or inf cast to integers: garbage is what we want
        return values.astype(dtype)


def _check_image_set(data: ImageSet) -> None:
    images, masks = data.images, data.masks
    assert images.dtype == torch.float32 and images.ndim == 4 and images.numel() > 0
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert masks is None or (masks.dtype == torch.bool and masks.shape == images.shape)


def _loads_cleanly_or_raises_ours(load, case) -> None:
    try:
        data = load()
    except MIRIError:
        return
    except Exception as err:  # noqa: BLE001 - the point of the test: name any other exception with its case
        pytest.fail(f"case {case}: {type(err).__name__}: {err}")
    _check_image_set(data)
    return data


def test_npz_images_fuzz(tmp_path):
    rng = np.random.default_rng(7)
    for case in range(CASES):
        images = _array(rng, _shape(rng, _image_shape(rng)))
        arrays = {"images": images}
        if rng.random() < 0.6:
            like = images.shape if rng.random() < 0.5 or images.ndim < 3 else images.shape[:3]
            arrays["masks"] = _array(rng, _shape(rng, like), MASK_KINDS)
        path = tmp_path / f"case{case}.npz"
        np.savez(path, **arrays)
        shapes = {k: (a.shape, a.dtype) for k, a in arrays.items()}
        num_images = [None, 1, 3][rng.integers(3)]
        _loads_cleanly_or_raises_ours(NpzImages(path, num_images=num_images).load, (case, shapes))


def test_mask_mechanisms_fuzz():
    rng = np.random.default_rng(8)
    torch_dtypes = [torch.float32, torch.float64, torch.float16, torch.bool, torch.uint8, torch.int16, torch.int64,
                    torch.complex64]
    for case in range(CASES):
        shape = _shape(rng, tuple(int(s) for s in rng.integers(1, 6, 4)))
        values = torch.from_numpy(_values(rng, shape))
        images = values.to(torch_dtypes[rng.integers(len(torch_dtypes))])
        for mechanism in MECHANISMS:
            try:
                masks = mechanism(images if rng.random() < 0.9 else images.numpy())
            except MIRIError:
                continue
            except Exception as err:  # noqa: BLE001 - see _loads_cleanly_or_raises_ours
                pytest.fail(f"case {case}: {mechanism} on {images.dtype} {tuple(shape)}: {type(err).__name__}: {err}")
            assert masks.dtype == torch.bool and masks.shape == images.shape, (case, mechanism)
            # Images outside the contract must have been refused, not turned into masks from NaN scores.
            assert images.double().min() >= 0 and images.double().max() <= 1, (case, mechanism)


def _image_bytes(rng: np.random.Generator, fmt: str) -> bytes:
    """A real image of a random mode and size, encoded as `fmt`."""
    h, w = (int(s) for s in rng.integers(1, 12, 2))
    modes = {"PNG": ["L", "RGB", "RGBA", "LA", "I;16", "P", "1"], "JPEG": ["L", "RGB"]}[fmt]
    mode = modes[rng.integers(len(modes))]
    data = rng.integers(0, 256, (h, w, 4)).astype(np.uint8)
    image = Image.fromarray(data, "RGBA").convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _damaged(rng: np.random.Generator, data: bytes) -> bytes:
    """The bytes as they are, cut short, with random bytes overwritten, or replaced by noise."""
    kind = rng.integers(4)
    if kind == 1:
        return data[: rng.integers(0, len(data))]
    if kind == 2:
        noisy = bytearray(data)
        for i in rng.integers(0, len(data), rng.integers(1, 8)):
            noisy[i] = int(rng.integers(256))
        return bytes(noisy)
    if kind == 3:
        return rng.bytes(int(rng.integers(0, 200)))
    return data


def test_image_folder_fuzz(tmp_path):
    rng = np.random.default_rng(9)
    for case in range(CASES // 2):
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        for i in range(rng.integers(1, 4)):
            fmt = ["PNG", "JPEG"][rng.integers(2)]
            suffix = {"PNG": ".png", "JPEG": ".jpg"}[fmt]
            (folder / f"{i}{suffix}").write_bytes(_damaged(rng, _image_bytes(rng, fmt)))
        source = ImageFolder(folder, image_size=[None, 6][rng.integers(2)], channels=[1, 3][rng.integers(2)],
                             on_bad_file=["fail", "skip"][rng.integers(2)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skip mode warns by design
            _loads_cleanly_or_raises_ours(source.load, (case, sorted(p.name for p in folder.iterdir())))
