"""MIRI's outer loop: every `epochs_per_round` epochs, end a round.

Ending round t: re-impute the whole collection with v_t (each rank its own
shard, gathered so that every rank holds the same copy), replace x_hat,
keep v_t's weights, log metrics and a grid, write the run's files, and ready
the network for round t + 1. Lightning's ModelCheckpoint runs after this
callback, so the round's checkpoint holds the new imputations.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from ..data.datamodule import MaskedImageDataModule
from ..errors import ConfigError
from ..grids import imputation_grid, log_grid
from ..io import save_imputations, save_png, write_round_record
from ..metrics import MI_STEPS, collection_metrics

ROUNDS_FILE, IMPUTATIONS_FILE, GRIDS_DIR = "rounds.jsonl", "imputations.npz", "grids"
# The fields of a round's record that measure the machine, not the result (they differ between equal runs).
TIMING_KEYS = ("train_seconds", "impute_seconds", "train_images_per_second", "impute_images_per_second",
               "fastest_epoch_seconds", "peak_memory_gb")


def shard(n: int, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s indices of 0..n-1 (a disjoint, covering split), padded with -1 to ceil(n / world)."""
    own = torch.arange(rank, n, world) if rank < n else torch.empty(0, dtype=torch.long)
    pad = math.ceil(n / world) - len(own)
    return torch.cat([own, torch.full((pad,), -1, dtype=torch.long)])


def reimpute(trainer: Trainer, pl_module: LightningModule, dm: MaskedImageDataModule, batch_size: int):
    """Write x_hat^(t+1) into `dm.new_round_buffer()`; every image solved exactly once, by one rank.

    Gathering chunk by chunk keeps the collectives small; every rank then holds
    the same collection (or, memory-mapped, maps the same file).
    """
    n, world = len(dm.imputations), trainer.world_size
    mine = shard(n, trainer.global_rank, world)
    result = dm.new_round_buffer()
    for start in range(0, len(mine), batch_size):  # the same number of chunks on every rank
        idx = mine[start:start + batch_size]
        rows = idx.clamp_min(0)  # padding solves a dummy image, dropped below
        out = pl_module.impute(dm.imputations[rows], dm.masks[rows], batch_size=batch_size)
        dm.check_imputed(rows, out)
        all_idx = pl_module.all_gather(idx.to(pl_module.device))
        all_out = pl_module.all_gather(out.to(pl_module.device))
        if world == 1:
            all_idx, all_out = all_idx[None], all_out[None]
        all_idx, all_out = all_idx.flatten(0, 1).cpu(), all_out.flatten(0, 1).cpu()
        keep = all_idx >= 0
        if result is not None:
            result[all_idx[keep]] = all_out[keep]
    return result


def clock(device: torch.device) -> float:
    """Seconds, once the device has finished its queued work (else GPU timings would miss the tail)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this round: allocated on the GPU, or the process's resident set on the CPU (whole run)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


class MIRIRounds(Callback):
    """Ends a MIRI round every `epochs_per_round` epochs.

    Args:
        epochs_per_round: training epochs of each round; `trainer.max_epochs`
            must be a multiple of it (number of rounds = max_epochs / epochs_per_round).
        reinit_each_round: start every round from a freshly initialised
            network (the paper's choice) instead of warm-starting from the last one.
        solve_batch_size: images per ODE solve on each device.
        grid_images: images (columns) in the logged grid.
        metrics_max_images: metrics use the first this-many images (MMD is quadratic in it).
        mi_steps: training steps of the mask-information classifier (0 skips it). Fewer read subtle traces
            as none (`metrics.mask_information`); 1,000 take about 6 s on one CPU core.
    """

    def __init__(self, epochs_per_round: int = 2, reinit_each_round: bool = False, solve_batch_size: int = 256,
                 grid_images: int = 8, metrics_max_images: int = 2000, mi_steps: int = MI_STEPS):
        if epochs_per_round < 1 or solve_batch_size < 1 or grid_images < 1 or metrics_max_images < 2:
            raise ConfigError("rounds: epochs_per_round, solve_batch_size, grid_images must be >= 1 "
                              "and metrics_max_images >= 2")
        self.epochs_per_round, self.reinit_each_round = epochs_per_round, reinit_each_round
        self.solve_batch_size, self.grid_images = solve_batch_size, grid_images
        self.metrics_max_images, self.mi_steps = metrics_max_images, mi_steps
        self.train_seconds, self.train_images, self.fastest_epoch = 0.0, 0, math.inf

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        epochs = trainer.max_epochs
        if epochs is None or epochs < 1 or epochs % self.epochs_per_round:
            raise ConfigError(f"trainer.max_epochs ({epochs}) must be a positive multiple of "
                              f"rounds.epochs_per_round ({self.epochs_per_round})")
        if not isinstance(trainer.datamodule, MaskedImageDataModule):
            raise ConfigError("MIRIRounds needs the data to come from a MaskedImageDataModule")
        self.num_rounds = epochs // self.epochs_per_round

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.datamodule.round == 0 and trainer.current_epoch == 0:
            self._report(trainer, pl_module, {"train_seconds": 0.0, "impute_seconds": 0.0})

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda" and not self.train_images:
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._epoch_start = clock(pl_module.device)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self.train_images += len(batch[1]) * trainer.world_size

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = clock(pl_module.device) - self._epoch_start
        self.train_seconds += seconds
        self.fastest_epoch = min(self.fastest_epoch, seconds)  # the steady rate, without a round's first-epoch costs
        pl_module.report_steps()  # stops here, before the round ends, after too many NaN losses in a row
        if (trainer.current_epoch + 1) % self.epochs_per_round:
            return
        dm = trainer.datamodule
        start = clock(pl_module.device)
        dm.next_round(reimpute(trainer, pl_module, dm, self.solve_batch_size))
        pl_module.finish_round()
        impute_seconds = clock(pl_module.device) - start
        timing = {"train_seconds": self.train_seconds, "impute_seconds": impute_seconds,
                  "train_images_per_second": self.train_images / max(self.train_seconds, 1e-9),
                  "impute_images_per_second": len(dm.masks) / max(impute_seconds, 1e-9),
                  "fastest_epoch_seconds": self.fastest_epoch, "peak_memory_gb": peak_memory_gb(pl_module.device)}
        self.train_seconds, self.train_images, self.fastest_epoch = 0.0, 0, math.inf
        pl_module.log("round", float(dm.round), on_step=False, on_epoch=True, sync_dist=True)
        self._report(trainer, pl_module, timing)
        if dm.round < self.num_rounds:
            pl_module.start_round(dm.round + 1, fresh=self.reinit_each_round)

    def _report(self, trainer: Trainer, pl_module: LightningModule, timing: dict) -> None:
        """Metrics, grid and files of the round just ended (rank 0 only: no collectives in here)."""
        if not trainer.is_global_zero:
            return
        dm, run_dir = trainer.datamodule, Path(trainer.default_root_dir)
        metrics = collection_metrics(dm.imputations, dm.masks, dm.truth, self.metrics_max_images, self.mi_steps)
        record = {"round": dm.round, **metrics, **timing}
        save_imputations(run_dir / IMPUTATIONS_FILE, dm.imputations, dm.masks, round=dm.round)
        k = self.grid_images
        grid = imputation_grid(dm.imputations[:k], dm.masks[:k], None if dm.truth is None else dm.truth[:k])
        save_png(run_dir / GRIDS_DIR / f"round_{dm.round:03d}.png", grid)
        write_round_record(run_dir / ROUNDS_FILE, record)  # last: a round listed here has all its files
        log_grid(trainer.loggers, "imputations", grid, trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics({f"round/{key}": value for key, value in record.items()}, step=trainer.global_step)
        rank_zero_info("MIRI " + ", ".join(f"{key} {value:.4g}" for key, value in record.items()))
