"""Initial fills and baselines: observed entries kept, each doing what it says."""

import torch

from miri_lightning.baselines import interpolation_fill, knn_fill, mean_fill, noise_fill
from miri_lightning.blocks import observed_mean
from miri_lightning.data.masks import MCAR
from miri_lightning.fills import RoundZeroFill


def _smooth(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)


def test_every_fill_keeps_observed_entries():
    x = _smooth()
    m = MCAR(missing_rate=0.6, seed=0)(x)
    for y in (noise_fill(x, m, 0), mean_fill(x, m), interpolation_fill(x, m), knn_fill(x, m, k=3),
              RoundZeroFill("interpolation")(x, m), RoundZeroFill("interpolation", noise=0.3)(x, m),
              RoundZeroFill("mean", noise=0.3)(x, m), RoundZeroFill("interpolation", keep=0.3)(x, m)):
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
    draws = [RoundZeroFill("interpolation", sigma=0.4, noise=0.05)(x, m, seed=s) for s in (3, 4)]
    assert not torch.equal(draws[0], draws[1])
    offsets = (draws[0] - smooth)[~m]
    assert abs(offsets.std() - 0.05) < 0.005 and abs(offsets.mean()) < 0.005  # (clipping at 0 and 1 is rare here)
    assert torch.equal(RoundZeroFill("interpolation", sigma=0.4)(x, m, seed=3), smooth)


def test_a_thinned_interpolation_varies_most_where_the_neighbours_disagree():
    # Left half flat grey, right half a checkerboard: observed neighbours agree on the left only.
    n = 100
    x = torch.full((n, 1, 16, 16), 0.5)
    board = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2
    x[..., 8:] = board[:, 8:].float()
    m = MCAR(missing_rate=0.6, seed=5)(x)
    fill = RoundZeroFill("interpolation", sigma=1.0, keep=0.5)
    assert fill.random and not RoundZeroFill("interpolation").random
    draws = torch.stack([fill(x, m, seed=s) for s in range(8)])
    assert torch.equal(draws[:, m], x[m].expand(8, -1))  # observed entries exact in every draw
    spread = draws.std(0)
    left, right = spread[..., :5][~m[..., :5]], spread[..., 11:][~m[..., 11:]]  # beyond the kernel's reach of the middle
    assert left.max() < 1e-6 and right.mean() > 0.05
    assert torch.equal(fill(x, m, seed=3), draws[3])  # a draw is its seed's


def test_a_fill_round_trips_through_its_state_and_old_files_read_as_the_noise_fill():
    fill = RoundZeroFill("interpolation", sigma=0.4, noise=0.02, keep=0.7)
    again = RoundZeroFill.from_state(fill.state())
    assert (again.kind, again.sigma, again.noise, again.keep) == ("interpolation", 0.4, 0.02, 0.7)
    old = RoundZeroFill.from_state({})
    assert (old.kind, old.sigma, old.noise, old.keep, old.values) == ("noise", 1.0, 0.0, 1.0, None)
