"""What a training step reads: batches straight from the shared imputation state, in the order a round's
sampler draws them."""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import Dataset, DistributedSampler


class ImputationBatches(Dataset):
    """Reads (index, current imputation, mask) straight from the datamodule's shared tensors.

    The tensors live in shared memory and are updated in place after each
    round, so DataLoader workers (which hold a copy of this object) see the
    new round's imputations without being restarted.
    """

    def __init__(self, imputations: torch.Tensor, masks: torch.Tensor):
        self.imputations, self.masks = imputations, masks

    def __len__(self) -> int:
        return len(self.imputations)

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices)
        return idx, self.imputations[idx], self.masks[idx]

    def __getitem__(self, i: int):
        return self.__getitems__([i])


class IndexBatches(Dataset):
    """Only the indices of a batch: its images and masks are read on the device (`on_device`)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.as_tensor(indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.__getitems__([i])


class RoundSampler(DistributedSampler):
    """This rank's training indices for one epoch: `num_batches` batches drawn from `pool`.

    The stream is a concatenation of shuffles of `pool`, each seeded by
    (seed, epoch, pass), split between ranks by position; so an epoch holds
    as many optimiser steps as asked, whatever the collection's size, every
    image comes round once before any comes round twice, and a resumed run
    draws what an uninterrupted one would. `num_batches=None`: one pass.
    (A DistributedSampler, so that Lightning calls `set_epoch` and leaves it as it is.)
    """

    def __init__(self, pool: torch.Tensor, batch_size: int, num_batches: Optional[int], world: int, rank: int,
                 seed: int):
        super().__init__(pool, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.pool, self.batch_size = pool, batch_size
        self.num_batches = len(pool) // (batch_size * world) if num_batches is None else num_batches

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self):
        needed = len(self) * self.num_replicas
        passes = []
        for k in range(-(-needed // len(self.pool))):
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch + 7919 * k)
            passes.append(self.pool[torch.randperm(len(self.pool), generator=generator)])
        stream = torch.cat(passes)[:needed]
        return iter(stream[self.rank::self.num_replicas].tolist())


def whole_batch(batch):
    """`__getitems__` already returns a collated batch."""
    return batch
