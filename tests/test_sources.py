"""Tests of the image sources. Every loader reads files that the test writes in the data set's real on-disk format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from miri_lightning.data.sources import (
    CIFAR10,
    MNIST,
    CelebA,
    ImageFolder,
    ImageSet,
    ImageSource,
    NpzImages,
    Shapes,
)
from miri_lightning.data import storage
from miri_lightning.data.images import read_image
from miri_lightning.errors import ConfigError, DataError, OutputError

from dataset_files import (
    CELEBA_COLORS,
    exists_only,
    write_celeba_jpegs,
    write_celeba_torchvision,
    write_cifar,
    write_mnist,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------------- Shapes


def test_shapes_shape_dtype_range():
    data = Shapes(num_images=10, image_size=16).load()
    assert isinstance(data, ImageSet)
    assert data.images.shape == (10, 3, 16, 16)
    assert data.images.dtype == torch.float32
    assert data.masks is None
    assert 0 <= data.images.min() and data.images.max() <= 1


@pytest.mark.parametrize("size", [8, 32, 64])
def test_shapes_image_sizes(size):
    assert Shapes(num_images=3, image_size=size).load().images.shape == (3, 3, size, size)


def test_shapes_deterministic_per_seed():
    a = Shapes(num_images=20, seed=3).load().images
    b = Shapes(num_images=20, seed=3).load().images
    c = Shapes(num_images=20, seed=4).load().images
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_shapes_num_images_takes_a_prefix():
    # More images than one render chunk, so the prefix also checks that chunking does not change the images.
    many = Shapes(num_images=300, image_size=16).load().images
    few = Shapes(num_images=5, image_size=16).load().images
    assert torch.equal(many[:5], few)
    assert Shapes().num_images == 2000


def test_shapes_have_spatial_structure():
    images = Shapes(num_images=50, image_size=32).load().images
    assert (images.flatten(1).std(dim=1) > 0.02).all(), "some images are (nearly) constant"
    neighbour_diff = (images[..., 1:] - images[..., :-1]).abs().mean()
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    shuffled = pixels[torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))]
    random_diff = (pixels - shuffled).abs().mean()
    assert neighbour_diff < 0.25 * random_diff


@pytest.mark.parametrize("kwargs, message", [({"image_size": 4}, "Shapes image_size must be >= 8, got 4"),
                                             ({"num_images": 0}, "Shapes num_images must be None .* or >= 1, got 0")])
def test_shapes_bad_config_names_the_setting(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Shapes(**kwargs)


# ---------------------------------------------------------------------------------------------------- NpzImages


def test_npz_uint8_nhw(tmp_path):
    images = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    np.savez(tmp_path / "d.npz", images=images)
    data = NpzImages(tmp_path / "d.npz").load()
    assert data.images.shape == (4, 1, 5, 6) and data.images.dtype == torch.float32
    assert data.masks is None
    torch.testing.assert_close(data.images[:, 0], torch.from_numpy(images).float() / 255)


def test_npz_uncompressed_uint8_is_mapped_and_read_a_chunk_at_a_time(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "stored.npz", images=images)
    np.savez_compressed(tmp_path / "compressed.npz", images=images)
    mapped, read = NpzImages(tmp_path / "stored.npz", num_images=40).load(), NpzImages(tmp_path / "compressed.npz",
                                                                                        num_images=40).load()
    assert mapped.eight_bit and len(mapped) == 40 and mapped.shape == (40, 3, 8, 8)
    assert torch.equal(mapped.images, read.images)  # the same float32 values, k/255
    assert torch.equal(torch.cat([mapped.floats(0, 7), mapped.floats(7, 40)]), read.images)
    # Mapped, not read: bytes changed in the file after load() show in what is read later.
    with open(tmp_path / "stored.npz", "r+b") as f:
        data = f.read()
        f.seek(data.index(images.tobytes()[:64]))
        f.write(bytes(255 - images[0, 0, 0, :1]))
    assert mapped.floats(0, 1)[0, 0, 0, 0] == (255 - int(images[0, 0, 0, 0])) / np.float32(255)


def test_npz_float_images_and_masks_stay_mapped_and_are_checked_a_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "CHUNK_BYTES", 1)  # chunks of 256 images
    rng = np.random.default_rng(2)
    images = rng.random((300, 2, 2, 3)).astype(np.float32)
    masks = rng.random((300, 2, 2)) < 0.8
    images[280, 1, 0, 2] = np.nan
    masks[280, 1, 0] = False
    np.savez(tmp_path / "d.npz", images=images, masks=masks)
    data = NpzImages(tmp_path / "d.npz").load()
    expected = torch.from_numpy(np.nan_to_num(images, nan=0.0)).permute(0, 3, 1, 2)
    assert torch.equal(torch.cat([data.floats(0, 256), data.floats(256, 300)]), expected)
    assert torch.equal(data.observed(270, 290), torch.from_numpy(masks[270:290, None]).expand(20, 3, 2, 2))
    # Mapped, not read: bytes changed in the file after load() show in what is read later.
    with open(tmp_path / "d.npz", "r+b") as f:
        content = f.read()
        f.seek(content.index(images[299].tobytes()))
        f.write(np.zeros(12, np.float32).tobytes())
        f.seek(content.index(masks[290:].tobytes()))
        f.write(bytes(40))
    assert not data.floats(299, 300).any() and not data.observed(290, 300).any()
    masks[280, 1, 0] = True  # now the mask calls the NaN observed, in the second chunk
    np.savez(tmp_path / "d.npz", images=images, masks=masks)
    with pytest.raises(DataError, match=r"is NaN \(missing\) at index \(280, 1, 0, 2\)"):
        NpzImages(tmp_path / "d.npz").load()
    np.savez(tmp_path / "d.npz", images=images, masks=np.where(masks, 1, 0).astype(np.int8) * np.int8(2))
    with pytest.raises(DataError, match=r"must hold only 0/1 .* it holds 2, the first at index \(0, 0, 0\)"):
        NpzImages(tmp_path / "d.npz").load()


def test_npz_float_nhwc_and_num_images(tmp_path):
    images = np.random.default_rng(0).random((5, 4, 4, 3), dtype=np.float32)
    np.savez(tmp_path / "d.npz", pixels=images)
    data = NpzImages(tmp_path / "d.npz", key="pixels", num_images=2).load()
    assert data.images.shape == (2, 3, 4, 4)
    torch.testing.assert_close(data.images, torch.from_numpy(images[:2]).permute(0, 3, 1, 2))


def test_npz_nan_means_missing(tmp_path):
    images = np.full((2, 3, 3, 3), 0.5)
    images[0, 1, 2, 0] = np.nan
    np.savez(tmp_path / "d.npz", images=images)
    data = NpzImages(tmp_path / "d.npz").load()
    assert data.masks is not None and data.masks.dtype == torch.bool and data.masks.shape == (2, 3, 3, 3)
    assert not data.masks[0, 0, 1, 2] and data.masks.sum() == data.masks.numel() - 1
    assert data.images[0, 0, 1, 2] == 0 and not data.images.isnan().any()


def test_npz_mask_array_broadcasts_over_channels_and_agrees_with_nan(tmp_path):
    images = np.full((2, 3, 3, 3), 0.25)
    images[1, 0, 0, :] = np.nan
    masks = np.ones((2, 3, 3), dtype=np.uint8)
    masks[0, 2, 1] = masks[1, 0, 0] = 0
    np.savez(tmp_path / "d.npz", images=images, masks=masks)
    got = NpzImages(tmp_path / "d.npz").load()
    assert got.masks.shape == (2, 3, 3, 3)
    assert not got.masks[0, :, 2, 1].any() and not got.masks[1, :, 0, 0].any()
    assert got.masks.sum() == got.masks.numel() - 6
    assert not got.images.isnan().any()
    assert NpzImages(tmp_path / "d.npz", mask_key=None).load().masks[0].all()


def test_npz_nan_that_the_masks_call_observed_is_an_error(tmp_path):
    images = np.full((2, 3, 3, 3), 0.25)
    images[1, 0, 2, 1] = np.nan
    np.savez(tmp_path / "d.npz", images=images, masks=np.ones((2, 3, 3), np.uint8))
    match = r"d\.npz array 'images' is NaN .* index \(1, 0, 2, 1\).* 'masks' says observed"
    with pytest.raises(DataError, match=match):
        NpzImages(tmp_path / "d.npz").load()


def test_npz_mask_array_per_channel(tmp_path):
    masks = np.ones((2, 4, 4, 3), dtype=bool)
    masks[1, 3, 0, 1] = False
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4, 3), np.uint8), observed=masks)
    got = NpzImages(tmp_path / "d.npz", mask_key="observed").load().masks
    assert torch.equal(got, torch.from_numpy(masks).permute(0, 3, 1, 2))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"images": np.full((2, 4, 4), 1.5)}, r"d\.npz.*'images'.*\[0, 1\]"),
        ({"images": np.full((2, 4, 4), -0.1)}, r"d\.npz.*'images'.*\[0, 1\]"),
        ({"other": np.zeros((2, 4, 4)), "labels": np.zeros(2)}, r"d\.npz.*'images'.*other, labels"),
        ({"images": np.zeros((2, 4))}, r"d\.npz.*'images'.*shape \(2, 4\)"),
        ({"images": np.zeros((2, 4, 4, 4))}, r"d\.npz.*'images'.*C 1 or 3"),
        ({"images": np.zeros((2, 4, 4), np.int64)}, r"d\.npz.*'images'.*dtype int64"),
        ({"images": np.zeros((2, 4, 4)), "masks": np.full((2, 4, 4), 2)},
         r"d\.npz.*'masks'.*0/1.*holds 2, the first at"),
        ({"images": np.zeros((2, 4, 4)), "masks": np.ones((2, 4, 5))},
         r"d\.npz array 'masks' has shape \(2, 4, 5\), expected \(2, 4, 4\) or \(2, 4, 4, 1\)"),
        ({"images": np.zeros((2, 4, 4, 3)), "masks": np.ones((3, 4, 4))},
         r"'masks' has shape \(3, 4, 4\), expected \(2, 4, 4\), \(2, 4, 4, 1\) or \(2, 4, 4, 3\)"),
        ({"images": np.zeros((5, 4, 4)), "masks": np.ones((2, 4, 4))},  # checked whatever num_images is
         r"'masks' has shape \(2, 4, 4\), expected \(5, 4, 4\)"),
        ({"images": np.zeros((2, 4, 4)), "masks": np.array([0, 1, 0.5, -1] * 8).reshape(2, 4, 4)},
         r"'masks' must hold only 0/1.*holds -1.0, 0.5, the first at index \(0, 0, 2\)"),
        ({"images": np.zeros((2, 4, 4)), "masks": np.full((2, 4, 4), "1")}, r"'masks' has dtype <U1, expected bool"),
        ({"images": np.zeros((2, 4, 4)), "masks": np.zeros((2, 4, 4), complex)}, r"'masks' has dtype complex128"),
        ({"images": np.array([[[0.5, np.inf]]])}, r"'images' holds the value inf at index \(0, 0, 1\)"),
        ({"images": np.array([[[np.nan, -np.inf]]], np.float16)},
         r"'images' holds the value -inf at index \(0, 0, 1\)"),
        ({"images": np.array([[[0.5], [1e300]]])}, r"'images' holds the value 1e\+300 at index \(0, 1, 0\)"),
        ({"images": np.zeros((0, 4, 4), np.uint8)}, r"d\.npz array 'images' holds no images \(shape \(0, 4, 4\)\)"),
        ({"images": np.zeros((3, 0, 4, 3))}, r"'images' has shape \(3, 0, 4, 3\): images without pixels"),
        ({"images": np.array(0.5)}, r"'images' has shape \(\), expected \(N, H, W\)"),
        ({"images": np.zeros((2, 4, 4), bool)}, r"'images' has dtype bool"),
        ({"images": np.array([[["a", None]]], object)}, r"cannot read the arrays \['images'\] of .*d\.npz"),
    ],
)
def test_npz_bad_content(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match):
        NpzImages(tmp_path / "d.npz", num_images=1).load()


def test_npz_unreadable_or_missing_file(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="junk.npz"):
        NpzImages(tmp_path / "junk.npz").load()
    with pytest.raises(DataError, match="absent.npz"):
        NpzImages(tmp_path / "absent.npz").load()


def test_npz_bad_num_images():
    with pytest.raises(ConfigError, match="num_images"):
        NpzImages("x.npz", num_images=0)


def test_shared_mnist_npz():
    path = SHARED_DATA / "mnist32_uint8.npz"
    if not path.is_file():
        pytest.skip(f"shared data set {path} is not available on this machine")
    data = NpzImages(path).load()
    assert data.images.shape == (5000, 1, 32, 32) and data.masks is None
    assert data.images.min() == 0 and data.images.max() == 1


# ---------------------------------------------------------------------------------------------------- ImageFolder


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    Image.fromarray(array).save(path, **kwargs)


def test_image_folder_png_and_jpeg_in_name_order(tmp_path):
    red = np.zeros((6, 8, 3), np.uint8)
    red[..., 0] = 255
    _save(tmp_path / "b.JPG", np.full((6, 8, 3), 128, np.uint8), quality=95)
    _save(tmp_path / "a.png", red)
    _save(tmp_path / "c.webp", np.full((6, 8, 3), 40, np.uint8), lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path).load()
    assert data.images.shape == (3, 3, 6, 8) and data.masks is None
    torch.testing.assert_close(data.images[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert (data.images[1] - 128 / 255).abs().max() < 0.02
    torch.testing.assert_close(data.images[2], torch.full((3, 6, 8), 40 / 255))
    assert ImageFolder(tmp_path, num_images=2).load().images.shape == (2, 3, 6, 8)


def test_image_folder_turns_photos_by_their_exif_orientation(tmp_path):
    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[:, :4] = 255  # left half white, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise, so the left half becomes the top
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    image = ImageFolder(tmp_path).load().images[0]
    assert image.shape == (3, 8, 6)
    assert image[:, :4].min() > 0.9 and image[:, 4:].max() < 0.1


def test_image_folder_mixed_sizes_list_sizes_and_files(tmp_path):
    for name, shape in [("a.png", (6, 8, 3)), ("b.png", (6, 8, 3)), ("c.png", (7, 8, 3)), ("d.png", (6, 8))]:
        _save(tmp_path / name, np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match=r"differ in size .* 8x6: 3 \(e\.g\. a\.png, b\.png, d\.png\); "
                                        r"8x7: 1 \(e\.g\. c\.png\); set image_size to center-crop and resize"):
        ImageFolder(tmp_path).load()
    assert ImageFolder(tmp_path, image_size=5).load().images.shape == (4, 3, 5, 5)


def test_image_folder_converts_mixed_modes_and_scales_16_bit(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "a_16bit.png")
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(tmp_path / "b_16bit.png")  # 128 * 257: mid-gray
    Image.fromarray(np.full((4, 4, 4), 255, np.uint8)).save(tmp_path / "c_rgba.png")
    Image.new("P", (4, 4), 0).save(tmp_path / "d_palette.png")
    Image.new("1", (4, 4), 1).save(tmp_path / "e_bilevel.png")
    for channels in (1, 3):
        images = ImageFolder(tmp_path, channels=channels).load().images
        assert images.shape == (5, channels, 4, 4)
        # 16-bit values are scaled to 8 bits, not clipped at 255 (which would make b white).
        torch.testing.assert_close(images[:, 0, 0, 0], torch.tensor([1, 128 / 255, 1, 0, 1]))


def _truncated(tmp_path: Path, name: str) -> str:
    """Write a real image under `name`, then cut off the second half of its bytes."""
    _save(tmp_path / name, np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    return name


def test_image_folder_bad_files_fail_or_skip(tmp_path):
    for i in range(5):
        _save(tmp_path / f"good{i}.png", np.full((4, 4, 3), 10 * i, np.uint8))
    bad = [_truncated(tmp_path, "cut.png"), _truncated(tmp_path, "cut.jpg"), "noise.png", "empty.jpg"]
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(1).bytes(300))
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in bad:
        with pytest.raises(DataError, match=rf"cannot read image file .*{name}"):
            read_image(tmp_path / name, "RGB")
    with pytest.raises(DataError, match=r"cannot read image file .*cut\.jpg"):  # the first bad file in name order
        ImageFolder(tmp_path).load()
    with pytest.warns(UserWarning, match=r"skipped 4 unreadable image files: cut\.jpg, cut\.png, empty\.jpg, "
                                         r"noise\.png") as record:
        data = ImageFolder(tmp_path, image_size=4, on_bad_file="skip").load()
    assert len(record) == 1 and data.images.shape == (5, 3, 4, 4)
    torch.testing.assert_close(data.images[:, 0, 0, 0], torch.arange(5) * 10 / 255)
    with pytest.warns(UserWarning, match="skipped 3"):  # num_images counts readable images
        assert len(ImageFolder(tmp_path, num_images=2, on_bad_file="skip").load().images) == 2


def test_image_folder_with_only_bad_files(tmp_path):
    _truncated(tmp_path, "cut.png")
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(DataError, match="no readable images"):
        ImageFolder(tmp_path, on_bad_file="skip").load()


def test_image_folder_center_crops_and_resizes(tmp_path):
    # 40 wide, 20 high: the center square is green, the left and right quarters red.
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10, 0] = image[:, 30:, 0] = 255
    image[:, 10:30, 1] = 255
    _save(tmp_path / "wide.png", image)
    _save(tmp_path / "small.png", np.full((10, 10, 3), 255, np.uint8))
    data = ImageFolder(tmp_path, image_size=16).load()
    assert data.images.shape == (2, 3, 16, 16)
    small, wide = data.images  # name order
    torch.testing.assert_close(small, torch.ones(3, 16, 16))
    assert (wide[1] > 0.98).all() and (wide[0] < 0.02).all()


def test_image_folder_grayscale(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255
    _save(tmp_path / "g.png", rgb)
    data = ImageFolder(tmp_path, channels=1).load()
    assert data.images.shape == (1, 1, 4, 4)
    torch.testing.assert_close(data.images, torch.full((1, 1, 4, 4), 150 / 255))  # PIL's L = 0.587 * G, rounded


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing").load()
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        ImageFolder(tmp_path).load()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        ImageFolder(tmp_path).load()
    with pytest.raises(ConfigError, match="channels"):
        ImageFolder(tmp_path, channels=4)
    with pytest.raises(ConfigError, match="on_bad_file"):
        ImageFolder(tmp_path, on_bad_file="ignore")


def _cache_files(suffix: str) -> list[Path]:
    return sorted(Path(os.environ["MIRI_CACHE_DIR"]).glob(f"*{suffix}"))


def _random_pngs(folder: Path, count: int, shape=(6, 8, 3), seed: int = 0) -> None:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        _save(folder / f"im{i}.png", rng.integers(0, 256, shape, np.uint8))


def test_image_folder_decodes_once_into_a_cache_that_later_loads_map(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "photos"
    _random_pngs(folder, 5)
    before = set(_cache_files(".u8"))
    with caplog.at_level("INFO"):
        ImageFolder(folder).prepare()  # what Lightning's prepare_data does, once per machine
    made = set(_cache_files(".u8")) - before
    assert len(made) == 1 and next(iter(made)).stat().st_size == 5 * 6 * 8 * 3
    assert f"decoding the 5 images of {folder} once, into {next(iter(made))}" in caplog.text
    assert "0.00 GB" in caplog.text and "later runs with the same files and settings map it" in caplog.text
    in_memory = ImageFolder(folder, cache=False).load()

    def no_decoding(*args):
        raise AssertionError("a cached folder was decoded again")

    monkeypatch.setattr("miri_lightning.data.images.read_image", no_decoding)
    cached = ImageFolder(folder).load()
    assert cached.eight_bit and cached.shape == (5, 3, 6, 8)
    assert torch.equal(cached.images, in_memory.images)  # bit for bit what decoding gives
    assert set(_cache_files(".u8")) - before == made
    monkeypatch.undo()
    # Other settings, or a changed file, decode afresh into a new cache.
    assert ImageFolder(folder, channels=1).load().shape == (5, 1, 6, 8)
    _random_pngs(folder, 1, shape=(6, 8, 3), seed=9)  # im0.png rewritten
    changed = ImageFolder(folder).load()
    assert not torch.equal(changed.images[0], cached.images[0]) and torch.equal(changed.images[1:], cached.images[1:])
    assert len(set(_cache_files(".u8")) - before) == 3


def test_a_decode_that_fails_leaves_no_cache_and_skips_are_reported_on_reuse(tmp_path):
    folder = tmp_path / "photos"
    _random_pngs(folder, 3)
    bad = _truncated(folder, "im1b.png")
    before = set(_cache_files(""))
    with pytest.raises(DataError, match=bad):
        ImageFolder(folder).load()
    assert set(_cache_files("")) == before  # neither data nor description nor a pending file
    for _ in range(2):  # decoded, then read from the cache: the same warning and images both times
        with pytest.warns(UserWarning, match=r"skipped 1 unreadable image files: im1b\.png") as record:
            data = ImageFolder(folder, on_bad_file="skip").load()
        assert len(record) == 1 and data.shape == (3, 3, 6, 8)


def test_a_cache_folder_that_cannot_be_written_is_named_with_the_ways_out(tmp_path, monkeypatch):
    _random_pngs(tmp_path / "photos", 2)
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("MIRI_CACHE_DIR", str(tmp_path / "a_file" / "cache"))
    with pytest.raises(OutputError, match=r"could not write .*a_file/cache/photos-.*\.u8.*set MIRI_CACHE_DIR to a "
                                          r"writable folder with room, or the source's `cache: false`"):
        ImageFolder(tmp_path / "photos").load()
    assert ImageFolder(tmp_path / "photos", cache=False).load().shape == (2, 3, 6, 8)


def test_a_cache_without_its_description_is_not_trusted(tmp_path):
    folder = tmp_path / "photos"
    _random_pngs(folder, 2)
    first = ImageFolder(folder).load().images
    description = [p for p in _cache_files(".json") if p.read_text().count(str(folder.resolve()))]
    assert len(description) == 1
    data = description[0].with_suffix(".u8")
    data.write_bytes(b"\0" * data.stat().st_size)  # as a run killed before its description was written leaves it
    description[0].unlink()
    assert torch.equal(ImageFolder(folder).load().images, first)


# ---------------------------------------------------------------------------------------------------- CIFAR10


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    # torchvision checks the md5 of every batch file against the official ones, which made-up files cannot match;
    # only that check is replaced (by an existence check), torchvision still parses the pickles.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", exists_only)
    return tmp_path, write_cifar(tmp_path)


def test_cifar10_layout(cifar_root):
    root, rows = cifar_root
    data = CIFAR10(root=root).load()
    assert data.images.shape == (15, 3, 32, 32) and data.images.dtype == torch.float32 and data.masks is None
    assert data.eight_bit  # kept as the file's bytes until read
    first = rows["data_batch_1"][0]
    # Channel c, row y, column x is byte c * 1024 + y * 32 + x of the row.
    assert data.images[0, 2, 5, 7] == first[2 * 1024 + 5 * 32 + 7] / 255
    expected = np.concatenate([rows[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32) / 255
    torch.testing.assert_close(data.images, torch.from_numpy(expected).float())


def test_cifar10_test_split_and_num_images(cifar_root):
    root, rows = cifar_root
    data = CIFAR10(root=root, train=False, num_images=2).load()
    expected = torch.from_numpy(rows["test_batch"][:2].reshape(2, 3, 32, 32) / 255).float()
    torch.testing.assert_close(data.images, expected)


def test_cifar10_missing(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        CIFAR10(root=tmp_path).load()


# ---------------------------------------------------------------------------------------------------- MNIST


def test_mnist_resized_to_32(tmp_path):
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    raw = write_mnist(tmp_path)["train"]
    data = MNIST(root=tmp_path).load()
    assert data.images.shape == (4, 1, 32, 32) and data.images.dtype == torch.float32 and data.masks is None
    assert 0 <= data.images.min() and data.images.max() <= 1
    # Image 0 is a white square at 8:20 of 28, which lands at about 9:23 of 32; the corners stay black.
    assert (data.images[0, 0, 11:21, 11:21] == 1).all()
    assert data.images[0, 0, :7].max() == 0 and data.images[0, 0, 25:].max() == 0
    reference = resize(torch.from_numpy(raw).float().unsqueeze(1) / 255, [32, 32], InterpolationMode.BILINEAR)
    torch.testing.assert_close(data.images, reference)


def test_mnist_test_split_and_num_images(tmp_path):
    raw = write_mnist(tmp_path)["t10k"]
    data = MNIST(root=tmp_path, train=False, num_images=2).load()
    assert data.images.shape == (2, 1, 32, 32)
    assert data.images[1].mean() == pytest.approx(raw[1].mean() / 255, abs=0.01)


def test_mnist_missing(tmp_path):
    with pytest.raises(DataError, match="MNIST"):
        MNIST(root=tmp_path).load()


# ---------------------------------------------------------------------------------------------------- CelebA

def _assert_celeba_colors(images: torch.Tensor, colors) -> None:
    assert images.shape == (len(colors), 3, 64, 64) and images.dtype == torch.float32
    expected = torch.tensor(colors, dtype=torch.float32)[:, :, None, None] / 255
    # Away from the crop border, where JPEG ringing and the resize filter reach the grey surround.
    assert (images[:, :, 4:-4, 4:-4] - expected).abs().max() < 0.04


def test_celeba_folder(tmp_path):
    write_celeba_jpegs(tmp_path / "faces")
    _assert_celeba_colors(CelebA(folder=tmp_path / "faces").load().images, CELEBA_COLORS)
    data = CelebA(folder=tmp_path / "faces", num_images=2, image_size=32).load()
    assert data.images.shape == (2, 3, 32, 32) and data.masks is None and data.eight_bit
    uncached = CelebA(folder=tmp_path / "faces", num_images=2, image_size=32, cache=False).load()
    assert torch.equal(data.images, uncached.images)


def test_celeba_torchvision_layout(tmp_path, monkeypatch):
    # torchvision checks the annotation files' md5 against the official ones, which made-up files cannot match;
    # only that check is replaced (by an existence check), torchvision still parses the files and picks the split.
    monkeypatch.setattr("torchvision.datasets.celeba.check_integrity", exists_only)
    write_celeba_torchvision(tmp_path)
    _assert_celeba_colors(CelebA(root=tmp_path).load().images, CELEBA_COLORS[:3])
    _assert_celeba_colors(CelebA(root=tmp_path, split="valid").load().images, CELEBA_COLORS[3:])
    _assert_celeba_colors(CelebA(root=tmp_path, split="all", num_images=4).load().images, CELEBA_COLORS[:4])
    with pytest.raises(DataError, match=r"list_eval_partition\.txt lists no images for split 'test'"):
        CelebA(root=tmp_path, split="test").load()


def test_celeba_errors(tmp_path):
    with pytest.raises(DataError, match="celeba"):
        CelebA(root=tmp_path).load()
    with pytest.raises(DataError, match="does not exist"):
        CelebA(folder=tmp_path / "nope").load()
    with pytest.raises(ConfigError, match="split"):
        CelebA(split="validation")


# ---------------------------------------------------------------------------------------------------- configuration


def test_sources_are_configurable_with_jsonargparse(tmp_path):
    from jsonargparse import ArgumentParser

    np.savez(tmp_path / "d.npz", images=np.zeros((3, 4, 4), np.uint8))
    parser = ArgumentParser()
    parser.add_subclass_arguments(ImageSource, "source")
    npz_config = {"path": str(tmp_path / "d.npz"), "num_images": 2}
    config = parser.parse_object(
        {"source": {"class_path": "miri_lightning.data.sources.NpzImages", "init_args": npz_config}}
    )
    source = parser.instantiate_classes(config).source
    assert isinstance(source, NpzImages) and source.load().images.shape == (2, 1, 4, 4)
    shapes = parser.instantiate_classes(parser.parse_object({"source": {"class_path": "Shapes"}})).source
    assert isinstance(shapes, Shapes) and shapes.num_images == 2000
