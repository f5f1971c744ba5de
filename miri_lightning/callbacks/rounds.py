"""MIRI's outer loop, in one place: when a round starts, ends, retries and is saved.

- **Training**: Lightning's epoch is a round's training. `MIRIRounds.setup` asks Lightning for it:
  `rounds.steps` optimiser steps (`trainer.limit_train_batches` over the endless training loader),
  at most one epoch a round and a retry (its epoch limit); the run's length is the rounds', set nowhere else.
- **Converged**: every `val_every_n_steps` steps the held-out loss is checked (`Convergence`); once it
  has stopped falling, the rest of the epoch is skipped (`MIRI.end_round_training`: Lightning ends an
  epoch early only from the module).
- **Round end** (`on_train_epoch_end`): re-impute the whole collection with v_t (`reimpute`: each rank its
  shard), score it (`RoundScorer`), then by `verdict`: **keep** it (x_hat replaced, v_t's weights kept,
  the round reported by `RoundReport`, the next round started: fresh or warm, the optimiser restarted),
  **retry** (discard it and train the same round another epoch, solving again from the same start), or
  **stop** (keep it and end the run). After the last round, the loop stops Lightning.
- **Saved**: `RoundCheckpoint` runs after this callback and saves at an epoch's end only when a round was
  kept, so a round's checkpoint holds its new imputations, and this loop's state (the best round, the
  last kept round's mask information, the retries) with them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from ..data.datamodule import MaskedImageDataModule
from ..errors import ConfigError, DataError
from ..metrics import MI_STEPS, information_rose
from .reimputation import reimpute
from .reporting import RoundReport
from .scoring import RoundScorer
from .timing import RoundClock, clock

OnWorse = Literal["warn", "retry", "stop"]
# A held-out loss this many times the round's best is a spike, not a plateau: such a round has not
# converged and trains on (a CelebA round whose loss jumped tenfold was ended as converged).
SPIKE = 1.5


class Convergence:
    """When a round's held-out loss has stopped falling: after `min_steps`, `patience` checks in a row
    without a relative fall of `min_improvement` below the round's best, and not in a spike (a loss above
    SPIKE times the best has not converged; it trains on)."""

    def __init__(self, min_steps: int, patience: int, min_improvement: float):
        self.min_steps, self.patience, self.min_improvement = min_steps, patience, min_improvement
        self.best, self.stale = math.inf, 0

    def update(self, steps: int, loss: float) -> bool:
        """The loss after `steps` of the round; whether the round has converged."""
        improved = loss < self.best * (1 - self.min_improvement)
        self.best, self.stale = min(self.best, loss), 0 if improved else self.stale + 1
        return steps >= self.min_steps and self.stale >= self.patience and loss <= SPIKE * self.best


Verdict = Literal["keep", "retry", "stop"]


def verdict(worse: bool, on_worse: OnWorse, retries: int, max_retries: int) -> Verdict:
    """What a round's new imputations become: kept (and the next round starts), discarded and the round
    trained longer (`retry`, while retries are left), or kept and the run ended (`stop`). Only a round whose
    imputations carry more mask information than the last (`worse`) is retried or stops the run."""
    if worse and on_worse == "retry" and retries < max_retries:
        return "retry"
    return "stop" if worse and on_worse == "stop" else "keep"


class MIRIRounds(Callback):
    """Runs MIRI's rounds: each Lightning epoch trains one round's velocity field, then re-imputes.

    Args:
        num_rounds: rounds of the run (with their retries, they set how long Lightning trains).
        steps: optimiser steps of a round's training, at most; the same at
            every collection size (a pass over the data is not a unit here).
        min_steps: a round may end after this many steps, once the held-out
            loss (`data.val_fraction` of the images) has not fallen by
            `min_improvement` (relative) over `patience` checks in a row.
            None: every round trains `steps` steps.
        val_every_n_steps: optimiser steps between held-out loss checks
            (logged as `val/loss`, and per round in rounds.jsonl).
        patience: checks without improvement that end a round (after `min_steps`).
        min_improvement: the relative fall of the held-out loss that counts as improving.
        on_worse: when a round's imputations carry more mask information than
            the previous round's, by more than twice the estimate's standard
            error over `mi_seeds` classifier seeds: `warn` (a log line and
            `round/worse` = 1), `retry` (discard them, train the same velocity
            another round's length and solve again from the same start, at
            most `max_retries` times, then keep the last try) or `stop` (keep
            the round, end the run). The run's result is in any case also kept
            as the round with the least mask information (`imputations_best.npz`).
        max_retries: retries of one round under `on_worse: retry`.
        mi_seeds: classifier seeds of each mask-information estimate; the mean
            is reported, their spread judges `on_worse`.
        reinit_each_round: start every round from a freshly initialised
            network (the paper's choice) instead of warm-starting from the last one.
        solve_batch_size: images per ODE solve (and held-out loss batch) on each device.
        grid_images: images (columns) in the logged grid.
        grid_draws: fresh draws of the grid's images through the rounds so
            far, whose mean and spread (an uncertainty map) join the grid when
            round 0's fill is random (`data.fill.kind: noise`,
            `data.fill.noise` > 0 or `data.fill.keep` < 1); 0 or 1 leaves them out.
        metrics_max_images: metrics use the first this-many images (MMD is quadratic in it).
        fid_images: FID and KID (`realism`, with the `fid` extra) of every round on the first this-many
            images, a fixed subset so that rounds compare, and at the run's end on the first
            `metrics_max_images` (`fid_all`, `kid_all`); 0 skips them. Each image costs an InceptionV3 pass
            (about 0.15 s on a CPU core), the truth's once a run.
        fid_all: whether the last round is also scored on all the metrics' images (at 5,000 images that is
            some 15 minutes on a 2-core CPU; the per-round subset alone when false).
        mi_steps: training steps of the mask-information classifier (0 skips it, and `on_worse` with it).
            Fewer read subtle traces as none (`metrics.mask_information`).
    """

    def __init__(self, num_rounds: int = 5, steps: int = 500, min_steps: Optional[int] = None,
                 val_every_n_steps: int = 50, patience: int = 2, min_improvement: float = 0.01,
                 on_worse: OnWorse = "warn", max_retries: int = 1, mi_seeds: int = 3,
                 reinit_each_round: bool = False, solve_batch_size: int = 256, grid_images: int = 8,
                 grid_draws: int = 4, metrics_max_images: int = 2000, mi_steps: int = MI_STEPS,
                 fid_images: int = 250, fid_all: bool = True):
        for key, value, least in (("num_rounds", num_rounds, 1), ("steps", steps, 1), ("patience", patience, 1),
                                  ("val_every_n_steps", val_every_n_steps, 1), ("max_retries", max_retries, 0),
                                  ("mi_seeds", mi_seeds, 1), ("solve_batch_size", solve_batch_size, 1),
                                  ("grid_images", grid_images, 1), ("grid_draws", grid_draws, 0),
                                  ("metrics_max_images", metrics_max_images, 2),
                                  ("mi_steps", mi_steps, 0), ("fid_images", fid_images, 0)):
            if value < least:
                raise ConfigError(f"rounds.{key} must be >= {least}, got {value}")
        if min_steps is not None and not 1 <= min_steps <= steps:
            raise ConfigError(f"rounds.min_steps must be between 1 and rounds.steps ({steps}), got {min_steps}")
        self.num_rounds, self.steps, self.min_steps = num_rounds, steps, steps if min_steps is None else min_steps
        self.val_every_n_steps, self.patience, self.min_improvement = val_every_n_steps, patience, min_improvement
        self.on_worse, self.max_retries = on_worse, max_retries
        self.reinit_each_round, self.solve_batch_size = reinit_each_round, solve_batch_size
        self.score = RoundScorer(metrics_max_images, mi_steps, mi_seeds, fid_images, fid_all)
        self.report = RoundReport(grid_images, grid_draws)
        self.clock, self.round_steps, self.val_curve, self.discarded = RoundClock(), 0, [], []
        # Kept in checkpoints: the last accepted round's mask information, the best round, this round's retries.
        self.previous: Optional[dict] = None
        self.best: Optional[dict] = None
        self.retries = 0

    def trainings(self) -> int:
        """The most round trainings (epochs) the run can take: one a round, and one more for every retry it may
        make. Lightning's epoch limit, and so the span of the learning rate's cosine (`optim.warmup_cosine`)."""
        return self.num_rounds * (1 + (self.max_retries if self.on_worse == "retry" else 0))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(trainer.datamodule, MaskedImageDataModule):
            raise ConfigError("MIRIRounds needs the data to come from a MaskedImageDataModule")
        if trainer.max_epochs != -1 or trainer.max_steps != -1:
            raise ConfigError(f"the rounds set how long a run trains (rounds.num_rounds, rounds.steps): leave "
                              f"trainer.max_epochs at -1 and trainer.max_steps unset, not {trainer.max_epochs} and "
                              f"{trainer.max_steps}")
        if self.min_steps < self.steps and not trainer.datamodule.val_fraction:
            raise ConfigError(f"rounds.min_steps ({self.min_steps}) below rounds.steps ({self.steps}) ends rounds "
                              "by a held-out loss: set data.val_fraction (e.g. 0.05) to hold images out")
        # A round's training is one epoch of the endless training loader; a retry is one more. (Not a step
        # limit: with one, Lightning resumes every checkpoint as if it had been written mid-epoch.)
        trainer.limit_train_batches = self.steps * trainer.accumulate_grad_batches
        trainer.fit_loop.max_epochs = self.trainings()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The round is the datamodule's (restored by now); the weights replayed for new images are one set a round.
        kept, done = len(pl_module.round_weights), trainer.datamodule.round
        if kept != done:
            raise DataError(f"{trainer.ckpt_path} holds the weights of {kept} rounds, but its imputations are those "
                            f"of round {done}: it was not written by miri-lightning at a round's end, or was edited")
        if trainer.datamodule.round == 0 and trainer.current_epoch == 0:
            self._keep(trainer, pl_module, self._score(trainer, trainer.datamodule.imputations, last=False),
                       {"train_seconds": 0.0, "impute_seconds": 0.0})

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.datamodule.round >= self.num_rounds:  # a finished run resumed: nothing left to do
            trainer.should_stop = True

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start_step, self._checked = trainer.global_step, 0
        self._convergence = Convergence(self.min_steps, self.patience, self.min_improvement)
        self.clock.start_training(pl_module.device)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self.clock.count(len(batch[1]) * trainer.world_size)
        steps = trainer.global_step - self._epoch_start_step
        if steps % self.val_every_n_steps or steps == self._checked or not len(trainer.datamodule.val_indices):
            return
        self._checked = steps
        loss = pl_module.heldout_loss(*trainer.datamodule.validation_images(), batch_size=self.solve_batch_size)
        self.val_curve.append([self.round_steps + steps, loss])
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"val/loss": loss}, step=trainer.global_step)
        converged = self._convergence.update(steps, loss)
        # Every rank must end the epoch at the same step (they compute the same loss; this makes sure).
        if trainer.strategy.reduce_boolean_decision(converged, all=False):
            pl_module.end_round_training()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.stop_training(pl_module.device)
        self.round_steps += trainer.global_step - self._epoch_start_step
        # Stops here, before the round ends, after too many NaN losses in a row.
        pl_module.guard.report(trainer.current_epoch, trainer.global_step)
        dm = trainer.datamodule
        if dm.round >= self.num_rounds:
            return
        start = clock(pl_module.device)
        candidate = reimpute(trainer, pl_module, dm, self.solve_batch_size)
        impute_seconds = clock(pl_module.device) - start
        last = dm.round + 1 >= self.num_rounds
        metrics = self._score(trainer, candidate, last=last)
        worse = trainer.strategy.broadcast(metrics is not None and information_rose(self.previous, metrics))
        decision = verdict(worse, self.on_worse, self.retries, self.max_retries)
        if decision == "retry":
            self.retries += 1
            self.discarded.append(metrics)
            rank_zero_warn(f"MIRI round {dm.round + 1}: the new imputations carry more mask information than round "
                           f"{dm.round}'s ({_bits(metrics)} against {_bits(self.previous)}); discarded them, "
                           f"training the same round longer (retry {self.retries} of {self.max_retries})")
            return
        if worse:
            rank_zero_warn(f"MIRI round {dm.round + 1} carries more mask information than round {dm.round} "
                           f"({_bits(metrics)} against {_bits(self.previous)}): this round made the imputations "
                           "more detectable" + ("; stopping (rounds.on_worse: stop)" if decision == "stop" else ""))
        dm.next_round(candidate)
        pl_module.finish_round()
        timing = self.clock.timing(impute_seconds, len(dm.masks), pl_module.device)
        rounds = {"steps": self.round_steps, "retries": self.retries, "worse": bool(worse), "val_curve": self.val_curve,
                  "discarded": self.discarded}
        self.clock, self.round_steps, self.val_curve, self.retries, self.discarded = RoundClock(), 0, [], 0, []
        pl_module.log("round", float(dm.round), on_step=False, on_epoch=True, sync_dist=True)
        self._keep(trainer, pl_module, metrics, {**timing, **rounds})
        if dm.round >= self.num_rounds or decision == "stop":
            trainer.should_stop = True
        else:
            pl_module.start_round(dm.round + 1, fresh=self.reinit_each_round)

    def _score(self, trainer: Trainer, imputations: Optional[torch.Tensor], last: bool) -> Optional[dict]:
        """The scores of a round's imputations on rank 0; None elsewhere."""
        if not trainer.is_global_zero:
            return None
        dm = trainer.datamodule
        return self.score(imputations, dm.masks, dm.true_images(self.score.metrics_max_images),
                          trainer.strategy.root_device, last)

    def _keep(self, trainer: Trainer, pl_module: LightningModule, metrics: Optional[dict], extra: dict) -> None:
        """Rank 0 records the round just kept: whether it is the best so far, and its files and logs."""
        if not trainer.is_global_zero:
            return
        t = trainer.datamodule.round
        # Without an estimate (mi_steps 0) there is nothing to rank rounds by: the latest counts as the best.
        new_best = (self.best is None or not self.score.mi_steps
                    or metrics["mutual_information"] < self.best["mutual_information"])
        if new_best:
            self.best = {"round": t, "mutual_information": metrics["mutual_information"]}
        self.previous = _information(metrics)
        record = {"round": t, **metrics, "best_round": self.best["round"], **extra}
        self.report(Path(trainer.default_root_dir), trainer, pl_module, record, best=new_best)

    def state_dict(self) -> dict:
        return {"previous": self.previous, "best": self.best, "retries": self.retries}

    def load_state_dict(self, state: dict) -> None:
        self.previous, self.best, self.retries = state.get("previous"), state.get("best"), state.get("retries", 0)


def _information(metrics: dict) -> dict:
    return {key: metrics[key] for key in ("mutual_information", "mutual_information_se") if key in metrics}


def _bits(metrics: Optional[dict]) -> str:
    if not metrics:
        return "unknown"
    return f"{metrics['mutual_information']:.4f} ± {metrics.get('mutual_information_se', 0.0):.4f} bits"


class RoundCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, saving at the end of an epoch that ended a round only.

    An epoch whose imputations `rounds.on_worse: retry` discarded is not the
    end of a round; a resume from the round before redoes it exactly.
    """

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._round_at_start = trainer.datamodule.round

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.datamodule.round != self._round_at_start:
            super().on_train_epoch_end(trainer, pl_module)
