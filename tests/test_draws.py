"""Multiple imputation summaries: the mean keeps observed entries, the interval and calibration say what they claim."""

import pytest
import torch

from miri_lightning.draws import (calibrated_interval, calibration, central_interval, conformal_scale, draw_mean, draw_std,
                                  prediction_interval)
from miri_lightning.errors import DataError


def test_mean_and_spread_keep_observed_entries_exact():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 3, 8, 8, generator=g)
    masks = torch.rand(4, 1, 8, 8, generator=g) > 0.5
    draws = torch.where(masks, truth, torch.rand(5, 4, 3, 8, 8, generator=g))
    mean, std = draw_mean(draws, masks), draw_std(draws)
    full = masks.expand_as(truth)
    assert torch.equal(mean[full], truth[full]) and torch.all(std[full] == 0)
    assert torch.allclose(mean[~full], draws.mean(0)[~full]) and torch.all(std[~full] > 0)


def test_the_interval_is_the_draws_quantiles():
    draws = torch.rand(8, 2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    low, high = central_interval(draws, 0.9)
    expected = torch.quantile(draws, torch.tensor([0.05, 0.95]), dim=0)
    assert torch.allclose(low, expected[0]) and torch.allclose(high, expected[1])


def test_the_prediction_interval_holds_a_new_draw_at_its_level():
    draws = torch.randn(9, 4000, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    low, high = prediction_interval(draws[:8], 0.9)
    inside = ((draws[8] >= low) & (draws[8] <= high)).float().mean()
    assert 0.89 < inside < 0.91
    low, high = central_interval(draws[:8], 0.9)  # the quantiles of 8 draws: far too narrow for 90 %
    assert 0.70 < ((draws[8] >= low) & (draws[8] <= high)).float().mean() < 0.75


@pytest.mark.parametrize("num_draws", [8, 64])
def test_calibrated_draws_cover_their_level_and_their_spread_predicts_the_error(num_draws):
    g = torch.Generator().manual_seed(2)
    scale = torch.rand(200, 1, 8, 8, generator=g).expand(-1, 3, -1, -1) * 0.2  # each pixel its own uncertainty
    centre = torch.full((200, 3, 8, 8), 0.5)
    truth = centre + scale * torch.randn(centre.shape, generator=g)
    draws = centre + scale * torch.randn((num_draws, *centre.shape), generator=g)  # distributed as the truth is
    masks = torch.zeros(200, 1, 8, 8, dtype=torch.bool)
    scores = calibration(draws, masks, truth, level=0.9)
    assert 0.87 < scores["coverage"] < 0.93
    assert scores["spread_error_correlation"] > 0.3
    overconfident = calibration(centre + (draws - centre) * 0.3, masks, truth, level=0.9)
    assert overconfident["coverage"] < 0.5 and overconfident["quantile_coverage"] < 0.5


def test_one_draw_is_not_a_set_of_draws():
    with pytest.raises(DataError, match="S >= 2"):
        draw_mean(torch.rand(1, 2, 3, 4, 4), torch.ones(2, 1, 4, 4, dtype=torch.bool))


def test_conformal_calibration_on_some_entries_makes_overconfident_draws_cover_the_others():
    g = torch.Generator().manual_seed(4)
    scale = torch.rand(400, 1, 8, 8, generator=g) * 0.2
    truth = 0.5 + scale * torch.randn(400, 1, 8, 8, generator=g)
    draws = 0.5 + 0.3 * scale * torch.randn((8, 400, 1, 8, 8), generator=g)  # a third of the true spread
    masks = torch.zeros(400, 1, 8, 8, dtype=torch.bool)
    scored = torch.zeros_like(masks)
    scored[:200] = True  # calibrate on half the images, check on the other half
    q = conformal_scale(draws, masks, truth, scored, level=0.9)
    low, high = calibrated_interval(draws[:, 200:], masks[200:], q)
    inside = ((truth[200:] >= low) & (truth[200:] <= high)).float().mean()
    assert q > 1 and 0.87 < inside < 0.93
    scores = calibration(draws[:, 200:], masks[200:], truth[200:], scale=q)
    assert scores["coverage"] < 0.6 and scores["calibrated_coverage"] == pytest.approx(float(inside))
    assert scores["calibrated_width"] == pytest.approx(float((high - low).mean()))
    assert scores["calibrated_width"] > scores["width"]  # the prediction interval was too narrow
    with pytest.raises(DataError, match="scored entries"):
        conformal_scale(draws, torch.ones_like(masks), truth, scored)
