"""`miri-data`: the .npz files the configs read, built from files in torchvision's on-disk formats that the tests
write (CIFAR-10 pickles, MNIST IDX files, CelebA JPEGs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset_files import CELEBA_COLORS, exists_only, write_celeba_jpegs, write_cifar, write_mnist
from miri_lightning.data.build import main
from miri_lightning.data.sources import CIFAR10, MNIST, CelebA, NpzImages


def build(*args) -> None:
    main([str(a) for a in args])


def error_of(*args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build(*args)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    # Made-up batch files cannot match torchvision's md5 of the official ones; only that check is replaced.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", exists_only)
    return tmp_path, write_cifar(tmp_path / "data", batch_size=4)


def test_cifar10_test_images_byte_for_byte_as_the_source_trains_on_them(cifar_root, tmp_path):
    root, rows = cifar_root
    out = tmp_path / "cifar.npz"
    build("cifar10", "--root", root / "data", "--num-images", 3, "--out", out)
    with np.load(out) as archive:
        images = archive["images"]
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    # The test split by default; rows hold the red, green, then blue planes.
    assert np.array_equal(images, rows["test_batch"][:3].reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
    trained_on = CIFAR10(root=root / "data", train=False, num_images=3).load().images
    assert torch.equal(NpzImages(out).load().images, trained_on)


def test_cifar10_train_split(cifar_root, tmp_path):
    root, rows = cifar_root
    out = tmp_path / "train.npz"
    build("cifar10", "--root", root / "data", "--split", "train", "--num-images", 6, "--out", out)
    expected = np.concatenate([rows["data_batch_1"], rows["data_batch_2"][:2]]).reshape(6, 3, 32, 32)
    with np.load(out) as archive:
        assert np.array_equal(archive["images"], expected.transpose(0, 2, 3, 1))


def test_fewer_images_than_asked_is_an_error_that_writes_nothing(cifar_root, tmp_path):
    root, _ = cifar_root
    out = tmp_path / "cifar.npz"
    message = error_of("cifar10", "--root", root / "data", "--out", out)  # the default is 5,000; there are 4
    assert "holds 4 images, fewer than --num-images 5000" in message
    assert not out.exists() and not list(tmp_path.glob(".cifar.npz.*"))


def test_a_missing_or_partial_download_is_one_line_and_keeps_the_previous_file(tmp_path):
    out = tmp_path / "cifar.npz"
    out.write_bytes(b"the previous file")
    assert "cannot load CIFAR-10 from" in error_of("cifar10", "--root", tmp_path / "nothing", "--out", out)
    # A download cut short: the files are there, but torchvision's md5 check (not patched here) refuses them.
    write_cifar(tmp_path / "partial")
    batch = tmp_path / "partial" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    message = error_of("cifar10", "--root", tmp_path / "partial", "--out", out)
    assert "partial/cifar-10-batches-py" in message and "corrupted" in message
    assert out.read_bytes() == b"the previous file"
    assert "cannot load MNIST" in error_of("mnist", "--root", tmp_path / "nothing", "--out", out)
    assert "--split must be train or test" in error_of("mnist", "--root", tmp_path, "--split", "valid")


def test_mnist_at_32x32_as_the_source_resizes_it(tmp_path):
    write_mnist(tmp_path)
    out = tmp_path / "mnist.npz"
    build("mnist", "--root", tmp_path, "--num-images", 4, "--out", out)
    with np.load(out) as archive:
        images = archive["images"]
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32)  # one channel: (N, H, W), as the shared file
    # Image 0 is a white square on black: the resize keeps its inside white and the corners black.
    assert (images[0, 11:21, 11:21] == 255).all() and images[0, :7].max() == 0
    trained_on = MNIST(root=tmp_path, num_images=4).load().images
    # The source's floats, rounded to the nearest k/255.
    assert (NpzImages(out).load().images - trained_on).abs().max() <= 0.5 / 255 + 1e-6


def test_celeba_folder_cropped_resized_and_numbered(tmp_path):
    write_celeba_jpegs(tmp_path / "img_align_celeba")
    out = tmp_path / "celeba.npz"
    build("celeba", "--folder", tmp_path / "img_align_celeba", "--num-images", 5, "--out", out)
    with np.load(out) as archive:
        images, ids = archive["images"], archive["celeba_ids"]
    assert images.dtype == np.uint8 and images.shape == (5, 64, 64, 3)
    assert ids.tolist() == [1, 2, 3, 4, 5]
    # The centre 140x140 crop is the flat colour (away from its border, where JPEG ringing reaches).
    inner = images[:, 4:-4, 4:-4].reshape(5, -1, 3).astype(int)
    assert (np.abs(inner - np.array(CELEBA_COLORS)[:, None]) <= 10).all()
    trained_on = CelebA(folder=tmp_path / "img_align_celeba", num_images=5, cache=False).load().images
    assert torch.equal(NpzImages(out).load().images, trained_on)


def test_a_config_whose_file_is_missing_says_how_to_build_it_before_the_run_starts(tmp_path):
    from conftest import run_cli

    run_dir = tmp_path / "run"
    missing = tmp_path / "data" / "cifar10_uint8.npz"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run_dir, "--data.source", "NpzImages", "--data.source.path", str(missing),
                "--logging.backend", "csv")
    message = str(exit_info.value.code)
    assert f"data.source.path {missing} does not exist" in message and "miri-data cifar10" in message
    assert not any(run_dir.iterdir())  # no logger folder, no checkpoint: nothing was started


# What README's CPU commands read, written by miri-data from files in torchvision's formats; each config then runs
# (shortened: one round of a few steps on a tiny network) from the repository root, where its relative path points.
CPU_CONFIGS = {
    "cifar10_cpu.yaml": ("cifar10", "--root", "data"),
    "mnist_cpu.yaml": ("mnist", "--root", "data"),
    "celeba_cpu.yaml": ("celeba", "--folder", "img_align_celeba"),
}
SHORT = ["--rounds.num_rounds", "1", "--rounds.steps", "2", "--rounds.min_steps", "2", "--rounds.mi_steps", "0",
         "--rounds.fid_images", "0", "--rounds.solve_batch_size", "16", "--rounds.metrics_max_images", "16",
         "--model.net.width", "8", "--model.net.channel_mults", "[1]", "--model.train_crop", "8",
         "--data.batch_size", "8", "--logging.backend", "csv", "--trainer.enable_progress_bar", "false"]


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CPU_CONFIGS))
def test_the_cpu_configs_run_from_what_miri_data_builds(config, tmp_path, monkeypatch):
    from conftest import ROOT, read_rounds
    from miri_lightning.cli import main as train

    monkeypatch.chdir(tmp_path)  # the configs' data/ paths are relative to where train.py runs
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", exists_only)
    write_cifar(tmp_path / "data", batch_size=48)
    write_mnist(tmp_path / "data", train=48)
    write_celeba_jpegs(tmp_path / "img_align_celeba", count=48)
    build(*CPU_CONFIGS[config], "--num-images", 48)
    train(["--config", str(ROOT / "configs" / config), "--trainer.default_root_dir", "run", *SHORT])
    rounds = read_rounds(tmp_path / "run")
    assert [r["round"] for r in rounds] == [0, 1] and rounds[-1]["psnr"] > 0
