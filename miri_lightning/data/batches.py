"""What a training step reads: batches straight from the shared imputation state, in the order a round's
sampler draws them."""

from __future__ import annotations

import itertools

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
    """This rank's share of an endless stream of training indices, drawn from `pool`.

    The stream is a concatenation of shuffles of `pool`, each seeded by
    (seed, epoch, pass), split between ranks by position. A round's training
    is an epoch of it, as many batches as the round's optimiser steps ask
    (`MIRIRounds` sets `trainer.limit_train_batches`), whatever the
    collection's size; every image comes round once before any comes round
    twice, and a resumed run draws what an uninterrupted one would.
    (A DistributedSampler, so that Lightning calls `set_epoch` and leaves it as it is.)
    """

    ENDLESS = 2**40  # the length it reports: more indices than any epoch takes

    def __init__(self, pool: torch.Tensor, world: int, rank: int, seed: int):
        super().__init__(pool, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.pool = pool

    def __len__(self) -> int:
        return self.ENDLESS

    def __iter__(self):
        position = 0  # of the pass's first index in the whole stream, which the ranks share out by position
        for k in itertools.count():
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch + 7919 * k)
            shuffled = self.pool[torch.randperm(len(self.pool), generator=generator)]
            yield from shuffled[(self.rank - position) % self.num_replicas::self.num_replicas].tolist()
            position += len(self.pool)


def whole_batch(batch):
    """`__getitems__` already returns a collated batch."""
    return batch
