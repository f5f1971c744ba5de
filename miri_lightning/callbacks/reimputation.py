"""Re-imputing the whole collection at a round's end: each rank solves its own shard, and the shards are
gathered so that every rank holds the same new collection."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule, Trainer

from ..data.datamodule import MaskedImageDataModule


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
