"""What a round leaves behind: its imputations, a grid, its line in rounds.jsonl and its logged scalars.
Rank 0's job: nothing in here joins a collective."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..grids import imputation_grid, log_grid
from ..inference import MIRIImputer
from ..io import publish_copy, save_imputations, save_png, write_round_record

ROUNDS_FILE, IMPUTATIONS_FILE, GRIDS_DIR = "rounds.jsonl", "imputations.npz", "grids"
BEST_IMPUTATIONS_FILE = "imputations_best.npz"  # the round with the least mask information so far
# Round 0's fill, kept: the chain solved the last round's imputations from exactly it, so the two are a pair
# of the chain's that miri-distill learns from without solving anything.
START_IMPUTATIONS_FILE = "imputations_round0.npz"


class RoundReport:
    """Writes a finished round's files into the run folder and sends its scalars and grid to the loggers.

    Args (the `rounds.*` settings of the same names):
        grid_images: images (columns) in the grid.
        grid_draws: fresh draws of the grid's images through the rounds so far, whose mean and spread join
            the grid when round 0's fill is random; 0 or 1 leaves them out.
    """

    def __init__(self, grid_images: int, grid_draws: int):
        self.grid_images, self.grid_draws = grid_images, grid_draws

    def __call__(self, run_dir: Path, trainer, pl_module, record: dict, best: bool) -> None:
        """Round `record["round"]`'s files (the imputations, round 0's and the best round's copies, the grid, then
        its rounds.jsonl line: a round listed there has all its files) and its logs."""
        dm, t = trainer.datamodule, record["round"]
        save_imputations(run_dir / IMPUTATIONS_FILE, dm.imputations, dm.masks, round=t)
        for copy, wanted in ((BEST_IMPUTATIONS_FILE, best), (START_IMPUTATIONS_FILE, t == 0)):
            if wanted:
                publish_copy(run_dir / IMPUTATIONS_FILE, run_dir / copy)
        k = self.grid_images
        grid = imputation_grid(dm.imputations[:k], dm.masks[:k], dm.true_images(k), self._draws(pl_module, dm, k))
        save_png(run_dir / GRIDS_DIR / f"round_{t:03d}.png", grid)
        write_round_record(run_dir / ROUNDS_FILE, record)
        log_grid(trainer.loggers, "imputations", grid, trainer.global_step)
        scalars = {key: float(value) for key, value in record.items() if isinstance(value, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics({f"round/{key}": value for key, value in scalars.items()}, step=trainer.global_step)
        rank_zero_info("MIRI " + ", ".join(f"{key} {value:.4g}" for key, value in scalars.items()))

    def _draws(self, pl_module, dm, k: int) -> Optional[torch.Tensor]:
        """`grid_draws` fresh imputations of the first `k` images through rounds 1..t (on the CPU), or None."""
        if self.grid_draws < 2 or not dm.fill.random:
            return None
        imputer = MIRIImputer(pl_module.hparams.image_shape, pl_module.net_config, pl_module.round_weights,
                              pl_module.solver, dm.fill)
        return imputer.impute(dm.imputations[:k], dm.masks[:k], num_samples=self.grid_draws)
