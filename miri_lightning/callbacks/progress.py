"""A progress bar that says which MIRI round is running."""

from lightning.pytorch.callbacks import TQDMProgressBar

from .rounds import MIRIRounds


class RoundProgressBar(TQDMProgressBar):
    """TQDM bar described as `round r/T` (an epoch is a round's training) instead of `Epoch e`, with the last loss read.

    The loss is the number the module's step guard last read from the device (every
    `trainer.log_every_n_steps` steps), not a logged tensor: Lightning would
    read that at every step, and each read stalls a GPU.
    """

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = pl_module.guard.last_loss
        if loss is not None:
            items["train/loss"] = f"{loss:.3g}"
        return items

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        rounds = next((cb for cb in trainer.callbacks if isinstance(cb, MIRIRounds)), None)
        if rounds is not None:
            retry = f" (retry {rounds.retries})" if rounds.retries else ""
            self.train_progress_bar.set_description(
                f"round {trainer.datamodule.round + 1}/{rounds.num_rounds}{retry}")
