"""The masked-input row of a grid: what the model sees of each image."""

import torch

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
