"""Image grids of a round: masked input | imputation | (mean and spread of draws) | ground truth, for files
and for loggers."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid

from .draws import draw_mean, draw_std
from .io import to_8bit

# Missing entries are drawn in this colour (magenta: rare in natural images).
MISSING_COLOUR = torch.tensor([1.0, 0.0, 1.0])
# A spread over draws drawn white: a standard deviation this large (a quarter of the range) or larger.
SPREAD_WHITE = 0.25


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, 1 or 3, H, W) -> (N, 3, H, W)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def show_missing(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """RGB copies of `images` as the model sees them: a pixel with no observed channel in MISSING_COLOUR, a
    missing channel of a partly observed pixel at 0 (with channels missing independently, most pixels miss one)."""
    observed = to_rgb(masks.bool())
    shown = torch.where(observed, to_rgb(images), 0.0)
    return torch.where(observed.any(1, keepdim=True), shown, MISSING_COLOUR.view(1, 3, 1, 1))


def spread_image(std: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) standard deviations over draws -> (N, 3, H, W) grey images: black where the draws agree
    (observed pixels), white at a spread of `SPREAD_WHITE` or more, averaged over channels."""
    return to_rgb((std.mean(1, keepdim=True) / SPREAD_WHITE).clamp(0, 1))


def imputation_grid(imputed: torch.Tensor, masks: torch.Tensor, truth: Optional[torch.Tensor] = None,
                    draws: Optional[torch.Tensor] = None):
    """Rows: masked input, imputation, then with `draws` (S, N, C, H, W) their mean and spread, then the
    ground truth (when known); one column per image."""
    rows = [show_missing(imputed, masks), to_rgb(imputed)]
    if draws is not None:
        rows += [to_rgb(draw_mean(draws, masks)), spread_image(draw_std(draws))]
    rows += [to_rgb(truth)] if truth is not None else []
    return make_grid(torch.cat(rows).float(), nrow=len(imputed), padding=2, pad_value=1.0)


def log_grid(loggers: list[Logger], key: str, grid: torch.Tensor, step: int) -> None:
    """Send a grid to every logger that takes images (W&B, TensorBoard); others get the PNG file only."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            # 8-bit, as the PNG: wandb versions differ in whether they scale a float image in [0, 1] to 0..255.
            logger.log_image(key=key, images=[to_8bit(grid)])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step)
