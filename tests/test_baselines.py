"""Initial fills and baselines: observed entries kept, each doing what it says."""

import torch

from miri_lightning.baselines import (initial_fill, interpolation_fill, knn_fill, mean_fill, noise_fill,
                                      noisy, observed_mean)
from miri_lightning.data.masks import MCAR


def _smooth(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)


def test_every_fill_keeps_observed_entries():
    x = _smooth()
    m = MCAR(missing_rate=0.6, seed=0)(x)
    for y in (noise_fill(x, m, 0), mean_fill(x, m), interpolation_fill(x, m), knn_fill(x, m, k=3),
              initial_fill(x, m, "interpolation"), initial_fill(x, m, "interpolation", noise=0.3),
              initial_fill(x, m, "mean", noise=0.3)):
        assert torch.equal(y[m], x[m]) and y.min() >= 0 and y.max() <= 1


def test_noise_is_uniform_even_when_the_mask_has_the_same_seed():
    x = _smooth().mean(1, keepdim=True)  # one channel: mask and noise have the same shape
    m = MCAR(missing_rate=0.6, seed=4)(x)
    noise = noise_fill(x, m, seed=4)[~m]
    assert noise.max() > 0.95 and abs(noise.mean() - 0.5) < 0.02


def test_mean_fill_is_the_per_entry_observed_mean():
    x = torch.tensor([[[[0.2]]], [[[0.4]]], [[[0.9]]]])
    m = torch.tensor([[[[True]]], [[[True]]], [[[False]]]])
    assert torch.allclose(observed_mean(x, m), torch.tensor([[[0.3]]]))
    assert torch.isclose(mean_fill(x, m)[2, 0, 0, 0], torch.tensor(0.3))


def test_interpolation_recovers_smooth_images_better_than_the_mean():
    x = _smooth()
    m = MCAR(missing_rate=0.6, seed=1)(x)
    err = lambda y: (y - x)[~m].abs().mean()  # noqa: E731
    assert err(interpolation_fill(x, m)) < 0.5 * err(mean_fill(x, m))


def test_knn_copies_from_the_nearest_images():
    base = _smooth(10, seed=2)
    x = torch.cat([base, base])  # every image has an exact twin
    m = MCAR(missing_rate=0.5, seed=3)(x)
    y = knn_fill(x, m, k=1)
    twin_seen = ~m & torch.cat([m[10:], m[:10]])
    assert torch.equal(y[twin_seen], x[twin_seen])


def test_noisy_fills_differ_by_seed_around_the_fill_and_not_like_the_mask():
    x = _smooth(n=200).mean(1, keepdim=True)  # one channel: mask and noise have the same shape
    m = MCAR(missing_rate=0.6, seed=3)(x)
    smooth = interpolation_fill(x, m, sigma=0.4)
    draws = [initial_fill(x, m, "interpolation", seed=s, sigma=0.4, noise=0.05) for s in (3, 4)]
    assert not torch.equal(draws[0], draws[1])
    offsets = (draws[0] - smooth)[~m]
    assert abs(offsets.std() - 0.05) < 0.005 and abs(offsets.mean()) < 0.005  # (clipping at 0 and 1 is rare here)
    assert torch.equal(noisy(smooth, m, 0.0, seed=3), smooth)
