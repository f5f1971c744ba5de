"""A round's grid: what the model sees of each image, and the draws' mean and spread when the fill is random."""

import pytest
import torch
from PIL import Image

from conftest import run_cli
from miri_lightning.grids import MISSING_COLOUR, imputation_grid, show_missing


def test_missing_pixels_are_magenta_and_missing_channels_dark():
    images = torch.full((1, 3, 2, 2), 0.5)
    masks = torch.ones(1, 3, 2, 2, dtype=torch.bool)
    masks[0, :, 0, 0] = False  # a pixel with no channel observed
    masks[0, 1, 1, 1] = False  # only green missing
    shown = show_missing(images, masks)[0]
    assert torch.equal(shown[:, 0, 0], MISSING_COLOUR)
    assert torch.equal(shown[:, 1, 1], torch.tensor([0.5, 0.0, 0.5]))
    assert torch.equal(shown[:, 0, 1], torch.full((3,), 0.5))


def test_grey_images_get_rgb_rows_with_the_truth_last():
    images, masks = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4) > 0.5
    grid = imputation_grid(images, masks, truth=images)
    assert grid.shape == (3, 3 * 4 + 4 * 2, 2 * 4 + 3 * 2)  # 3 rows and 2 columns of 4x4, 2-pixel padding


def test_draws_add_their_mean_and_an_uncertainty_map_black_where_observed():
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g) > 0.5
    draws = torch.where(masks, images, torch.rand(3, 2, 3, 4, 4, generator=g))
    grid = imputation_grid(images, masks, truth=images, draws=draws)
    assert grid.shape == (3, 5 * 4 + 6 * 2, 2 * 4 + 3 * 2)  # input, imputation, mean, spread, truth
    spread = grid[:, 2 + 3 * 6:2 + 3 * 6 + 4, 2:6]  # the fourth row, first image
    assert torch.all(spread[:, masks[0, 0]] == 0) and torch.all(spread[:, ~masks[0, 0]] > 0)


@pytest.mark.slow
def test_a_run_with_a_random_fill_draws_its_grid_images(tmp_path):
    rows = {}
    for fill in ("noise", "interpolation"):
        run = run_cli(tmp_path / fill, "--data.fill.kind", fill, "--rounds.num_rounds", "1", "--rounds.steps", "2",
                      "--rounds.mi_steps", "0", "--rounds.grid_draws", "3")
        rows[fill] = Image.open(run / "grids" / "round_001.png").size[1]
    assert rows == {"noise": 5 * 16 + 6 * 2, "interpolation": 3 * 16 + 4 * 2}  # a deterministic fill: no draws
