"""Test-only callbacks of the fault tests, loaded through `--trainer.callbacks+=...` (tests/ on the import path)."""

import os
import signal

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


class PoisonWeights(Callback):
    """Fill the trained network's weights with NaN at the start of epoch `epoch` (every loss after is NaN)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
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
