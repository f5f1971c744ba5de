"""FID and KID: torchmetrics' estimates on features of a (stand-in or real) InceptionV3, per round and at the end."""

import pytest
import torch
from torch import nn

import miri_lightning.callbacks.scoring as scoring_module
from conftest import SHARED_DATA, read_imputations, read_rounds, run_cli, stand_in
from miri_lightning.data.sources import Shapes
from miri_lightning.realism import Realism, fid_kid, inception_path, load_inception


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Random smooth colour images: a coarse random field upsampled, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)


def test_a_set_against_itself_reads_zero_and_a_shifted_set_more():
    features = stand_in()
    images = smooth_images(120, seed=0)
    real = features(images)
    same = fid_kid(real, features(images))
    shifted = fid_kid(real, features((images + 0.3 * torch.rand_like(images)).clamp(0, 1)))
    assert abs(same["fid"]) < 1e-3 * shifted["fid"]
    assert shifted["fid"] > 0 and shifted["kid"] > 10 * abs(same["kid"])


def test_kid_is_near_zero_for_two_samples_of_one_distribution():
    features = stand_in()
    a, b = features(smooth_images(300, seed=1)), features(smooth_images(300, seed=2))
    speckled = features((smooth_images(300, seed=2) + 0.15 * torch.randn(300, 3, 16, 16)).clamp(0, 1))
    two_samples, speckle = fid_kid(a, b, subset_size=100), fid_kid(a, speckled, subset_size=100)
    assert abs(two_samples["kid"]) < 0.1 * speckle["kid"]
    assert two_samples["kid_std"] > 0  # subsets of 100 of 300 differ
    assert fid_kid(a, b, subset_size=100) == two_samples  # the subsets come from the seed


def test_grey_images_are_scored_as_three_equal_channels_and_bad_shapes_are_named():
    features = stand_in()
    grey = smooth_images(10, seed=3)[:, :1]
    assert torch.equal(features(grey), features(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\).*\(10, 2, 16, 16\)"):
        features(torch.rand(10, 2, 16, 16))
    with pytest.raises(ValueError, match="at least 2 images"):
        fid_kid(features(grey[:1]), features(grey))


def test_realism_scores_prefixes_with_the_truth_s_features_computed_once():
    features = stand_in()
    calls = []
    features.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    truth, imputed = smooth_images(40, seed=4), smooth_images(40, seed=5)
    realism = Realism(features, truth)
    small, whole = realism(imputed, (20, 40))
    assert calls == [40, 40]  # the truth's 40 and the imputations' 40: each image once
    assert small == fid_kid(features(truth[:20]), features(imputed[:20]))
    assert whole == fid_kid(features(truth), features(imputed))
    before = len(calls)
    realism(imputed, (20,))
    assert calls[before:] == [20]  # the imputations' only: the truth's features were kept
    with pytest.raises(ValueError, match="41 images"):
        realism(imputed, (41,))
    before = len(calls)
    assert realism.halves() == realism.halves() and len(calls) == before  # seeded halves of the kept features


@pytest.mark.slow
def test_rounds_log_fid_and_kid_on_a_fixed_subset_and_on_all_images_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_module, "load_inception", lambda device: stand_in())
    run = run_cli(tmp_path, "--rounds.num_rounds", "2", "--rounds.steps", "3", "--rounds.fid_images", "24")
    records = read_rounds(run)
    assert [r["fid_images"] for r in records] == [24, 24, 24]
    assert all(r["fid"] > 0 and "kid" in r for r in records)
    assert "fid_all" not in records[1] and records[-1]["fid_all_images"] == 64
    # The per-round figure is the subset's: scoring the saved round-2 imputations again reproduces it.
    imputed, _ = read_imputations(run)
    truth = Shapes(num_images=64, image_size=16, seed=0).load().images
    truth = truth.float() / 255 if truth.dtype == torch.uint8 else truth
    again = Realism(stand_in(), truth)(imputed, (24, 64))
    assert again[0]["fid"] == pytest.approx(records[-1]["fid"], rel=1e-4)
    assert again[1]["kid"] == pytest.approx(records[-1]["kid_all"], rel=1e-4, abs=1e-7)


def test_a_run_without_the_extra_says_how_to_get_it_and_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(scoring_module, "load_inception", lambda device: None)
    with caplog.at_level("INFO"):
        run = run_cli(tmp_path, "--rounds.num_rounds", "1", "--rounds.steps", "2", "--rounds.fid_images", "24",
                      "--rounds.mi_steps", "0")
    assert sum("pip install -e '.[fid]'" in r.getMessage() for r in caplog.records) == 1
    assert [("fid" in r) for r in read_rounds(run)] == [False, False]


@pytest.mark.slow
@pytest.mark.skipif(inception_path() is None, reason="the `fid` extra is not installed (pip install -e '.[fid]')")
def test_the_shipped_inception_scores_real_images_against_a_blurred_copy():
    features = load_inception()
    assert features.num_features == 2048
    if (SHARED_DATA / "cifar10_uint8.npz").exists():
        import numpy as np

        with np.load(SHARED_DATA / "cifar10_uint8.npz") as f:
            images = torch.from_numpy(f["images"][:24]).permute(0, 3, 1, 2).float() / 255
    else:
        images = smooth_images(24, seed=6)
    blurred = nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    real = features(images)
    assert real.shape == (24, 2048) and torch.isfinite(real).all()
    same, blur = fid_kid(real, features(images)), fid_kid(real, features(blurred))
    assert abs(same["fid"]) < 1e-2 and blur["fid"] > 10 and blur["kid"] > 0.01
