"""Test-only callbacks of the fault tests, loaded through `--trainer.callbacks+=...` (tests/ on the import path)."""

from __future__ import annotations

import json
import os
import signal
from typing import Optional

import torch
from lightning.pytorch import Callback


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler: as `kill -9` or the OOM killer


class KillInTraining(Callback):
    """SIGKILL before training batch `batch` of epoch `epoch`."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            kill_self()


class KillInReimputation(Callback):
    """SIGKILL inside the re-imputation that ends epoch `epoch`, after `chunks` chunks were solved."""

    def __init__(self, epoch: int, chunks: int):
        self.epoch, self.chunks = epoch, chunks

    def setup(self, trainer, pl_module, stage):
        impute, solved = pl_module.impute, []

        def counting_impute(*args, **kwargs):
            if trainer.current_epoch == self.epoch:
                if len(solved) == self.chunks:
                    kill_self()
                solved.append(1)
            return impute(*args, **kwargs)

        pl_module.impute = counting_impute


class KillAtCheckpoint(Callback):
    """SIGKILL while the run's `nth` checkpoint (counting from 1) is being put together, before it is written."""

    def __init__(self, nth: int):
        self.nth, self.seen = nth, 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.seen += 1
        if self.seen == self.nth:
            kill_self()


class PoisonWeights(Callback):
    """Fill the trained network's weights with NaN at the start of epoch `epoch` (every loss after is NaN),
    on every rank or on rank `rank` only."""

    def __init__(self, epoch: int, rank: Optional[int] = None):
        self.epoch, self.rank = epoch, rank

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch and self.rank in (None, trainer.global_rank):
            with torch.no_grad():
                for p in pl_module.velocity.parameters():
                    p.fill_(float("nan"))


class PoisonWeightsAtRoundEnd(Callback):
    """Fill the trained (not the EMA) network's weights with NaN at the end of epoch `epoch`, before it is saved."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.velocity.parameters()).fill_(float("nan"))


class NaNVelocity(Callback):
    """From epoch `epoch` on, the network that re-imputes (the EMA copy) returns NaN."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            pl_module.ema.module.forward = lambda a, b, m, tau: torch.full_like(a, float("nan"))


class NaNLossAt(Callback):
    """The trained network returns NaN for batch `batch` of epoch `epoch` only, on rank `rank` (default: all).

    Every rank writes `skipped_rank{R}.json` in the run folder: whether the
    `span` batches from that one on (an accumulated update's) left its
    network, EMA and optimiser state exactly as they were.
    """

    def __init__(self, epoch: int, batch: int, rank: Optional[int] = None, span: int = 1):
        self.epoch, self.batch, self.rank, self.span, self.before = epoch, batch, rank, span, None

    @staticmethod
    def snapshot(trainer, pl_module) -> list[torch.Tensor]:
        state = [*pl_module.velocity.state_dict().values(), *pl_module.ema.state_dict().values()]
        for param_state in trainer.optimizers[0].state.values():
            state += [v for v in param_state.values() if isinstance(v, torch.Tensor)]
        return [t.detach().clone() for t in state]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch != self.epoch:
            return
        if batch_idx == self.batch:
            self.before = self.snapshot(trainer, pl_module)
            if self.rank not in (None, trainer.global_rank):
                return
            forward = pl_module.velocity.forward
            pl_module.velocity.forward = lambda *inputs: forward(*inputs) * float("nan")  # NaN gradients too
        elif batch_idx == self.batch + self.span:
            after = self.snapshot(trainer, pl_module)
            unchanged = len(after) == len(self.before) and all(map(torch.equal, after, self.before))
            with open(f"{trainer.default_root_dir}/skipped_rank{trainer.global_rank}.json", "w") as f:
                json.dump({"unchanged": unchanged}, f)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and "forward" in vars(pl_module.velocity):
            del pl_module.velocity.forward


class DumpWeights(Callback):
    """Every rank saves its trained network's weights at the end of training."""

    def on_train_end(self, trainer, pl_module):
        torch.save(pl_module.velocity.state_dict(), f"{trainer.default_root_dir}/weights_rank{trainer.global_rank}.pt")
