"""Metrics: MMD (paper's definition), PSNR/RMSE over missing entries, SSIM, mask information."""

import math

import pytest
import torch

from miri_lightning.baselines import interpolation_fill
from miri_lightning.metrics import (collection_metrics, mask_information, missing_rmse, mmd_rbf, psnr, speckle, ssim,
                                    systematic_error)


def _images(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)


def test_mmd_matches_the_definition_and_separates_distributions():
    x, y = _images(20, 0), _images(20, 1)
    fx, fy = x.flatten(1).double(), y.flatten(1).double()
    sigma = torch.cdist(fx, fy).median()
    k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * sigma**2)).mean()  # noqa: E731
    assert math.isclose(mmd_rbf(x, y), float(k(fx, fx) + k(fy, fy) - 2 * k(fx, fy)), rel_tol=1e-9)
    assert abs(mmd_rbf(x, x)) < 1e-12
    x, y = _images(100, 0), _images(100, 1)  # same distribution: small; noise: clearly larger
    assert mmd_rbf(x, torch.rand_like(x)) > 2 * mmd_rbf(x, y)


def test_rmse_and_psnr_look_at_missing_entries_only():
    truth = _images()
    masks = torch.rand_like(truth) > 0.5
    guess = torch.where(masks, truth + 0.3, truth + 0.1)  # wrong everywhere, by 0.1 where missing
    assert math.isclose(missing_rmse(guess, truth, masks), 0.1, rel_tol=1e-5)
    assert math.isclose(psnr(0.1), 20.0)
    assert psnr(0.0) == math.inf


def test_systematic_error_sees_an_error_every_image_shares_and_mmd_weighs_it():
    truth = _images(200)
    masks = torch.rand_like(truth) > 0.5
    g = torch.Generator().manual_seed(3)
    sign = torch.randint(0, 2, (1, *truth.shape[1:]), generator=g) * 2 - 1.0
    shared = torch.where(masks, truth, truth + 0.05 * sign)  # the same error in every image
    own = torch.where(masks, truth, truth + 0.05 * (torch.randint(0, 2, truth.shape, generator=g) * 2 - 1.0))
    assert math.isclose(missing_rmse(shared, truth, masks), missing_rmse(own, truth, masks), rel_tol=1e-6)
    assert math.isclose(systematic_error(shared, truth, masks), 0.05, rel_tol=1e-5)
    assert systematic_error(own, truth, masks) < 0.015  # independent signs average out over the images
    assert mmd_rbf(shared, truth) > 3 * mmd_rbf(own, truth)
    assert systematic_error(truth, truth, masks) == 0.0


def test_ssim_is_one_for_identical_images():
    x = _images()
    assert math.isclose(ssim(x, x), 1.0, rel_tol=1e-5)
    assert ssim(x.clamp(0.2, 0.3), x) < 0.9


@pytest.mark.slow
def test_mask_information_sees_noise_fill_but_not_a_perfect_imputation():
    truth = _images(200)
    masks = torch.rand(truth.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    noisy = torch.where(masks, truth, torch.rand_like(truth))
    assert mask_information(noisy, masks, steps=150) > 0.2
    assert mask_information(truth, masks, steps=150) < 0.05


@pytest.mark.slow
def test_mask_information_by_default_sees_the_trace_of_a_smooth_fill():
    # A smooth fill's trace is subtle: a classifier trained 100 steps reads about 0 bits here.
    truth = _images(200)
    masks = torch.rand(truth.shape, generator=torch.Generator().manual_seed(1)) > 0.4
    assert mask_information(interpolation_fill(truth, masks), masks) > 0.1


def test_collection_metrics_without_ground_truth_reports_mask_information_only():
    x = _images()
    masks = torch.rand_like(x) > 0.5
    assert set(collection_metrics(x, masks, None, mi_steps=5)) == {"mutual_information"}
    assert set(collection_metrics(x, masks, x, mi_steps=5)) == {"mutual_information", "mmd", "psnr", "rmse", "ssim",
                                                           "systematic_error", "speckle"}


def test_speckle_reads_one_for_the_truth_above_one_for_noise_and_below_for_blur():
    x = _images()
    masks = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) > 0.6
    noisy = torch.where(masks, x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))
    blurred = torch.where(masks, x, torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    assert speckle(x, x, masks) == pytest.approx(1.0)
    assert speckle(noisy, x, masks) > 1.2 and speckle(blurred, x, masks) < 0.95
    assert speckle(noisy, x, torch.ones_like(masks)) == 0.0  # nothing missing: nothing to measure
