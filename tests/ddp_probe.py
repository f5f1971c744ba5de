"""Test-only callbacks, loaded by the DDP tests through `--trainer.callbacks+=ddp_probe.X` (PYTHONPATH=tests)."""

import torch
from lightning.pytorch import Callback


class DumpState(Callback):
    """Every rank saves its own copy of the collection at the end of training."""

    def on_train_end(self, trainer, pl_module):
        dm = trainer.datamodule
        resident = None if dm.resident is None else dm.resident[0].cpu()
        torch.save({"imputations": dm.imputations.clone(), "masks": dm.masks.clone(), "round": dm.round,
                    "resident": resident},
                   f"{trainer.default_root_dir}/state_rank{trainer.global_rank}.pt")


class FailOnRankOne(Callback):
    """Rank 1 raises in the middle of the first epoch; rank 0 carries on into the round's collectives."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1:
            raise RuntimeError("injected failure on rank 1")
