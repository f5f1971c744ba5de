"""The velocity's optimiser: AdamW, its learning-rate schedule (a warm-up at each start, a cosine over the run)
and the restart at a round's start."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from lightning.pytorch.plugins import MixedPrecision, Precision
from lightning.pytorch.utilities import rank_zero_info

from .errors import ConfigError


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its learning rate (`model.optimizer`).

    Args:
        lr: learning rate. The batch size is per device, and so is this rate:
            it is not scaled with the number of devices.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up, at the start of training and
            again at the start of each round whose optimiser restarts.
        final_lr_ratio: the learning rate follows a cosine from `lr` down to
            `lr * final_lr_ratio` over the whole run (1.0: constant). With warm
            start this lets later rounds settle instead of drifting.
        restart_each_round: start every round with fresh AdamW moments (and a
            new warm-up), also when the network is warm-started. A new round's
            collection brings larger gradients than the last one's end, and
            moments shrunk to those turn them into steps many times the
            learning rate, which can wreck a warm-started network
            (docs/2026-12-02-natural-images.md). A re-initialised network
            always restarts its optimiser.
        fused: AdamW's fused kernel, one launch per step instead of several per
            parameter group; it also skips a NaN step without a host read
            (`StepGuard`). The unfused one is used where gradients are clipped
            under mixed precision, which Lightning requires.
    """

    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    final_lr_ratio: float = 1.0
    restart_each_round: bool = True
    fused: bool = True

    def __post_init__(self):
        for key, ok, expected in (("lr", self.lr > 0, "> 0"), ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                                  ("final_lr_ratio", 0 < self.final_lr_ratio <= 1, "in (0, 1]")):
            if not ok:
                raise ConfigError(f"model.optimizer.{key} must be {expected}, got {getattr(self, key)}")


def adamw(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, precision: Precision,
          gradient_clip_val) -> torch.optim.AdamW:
    """AdamW with `cfg`'s settings; unfused where gradients are clipped (`gradient_clip_val`) under mixed precision.

    Lightning's mixed-precision plugin will not clip for an optimiser that
    unscales gradients itself, as the fused kernel does.
    """
    fused = cfg.fused
    if fused and isinstance(precision, MixedPrecision) and gradient_clip_val:
        rank_zero_info("MIRI: gradient clipping under mixed precision needs the unfused AdamW; using it")
        fused = False
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def warmup_cosine(cfg: OptimizerConfig, total_steps: int, start_step: Callable[[], int]) -> Callable[[int], float]:
    """The learning rate's factor at a step: a linear warm-up from `start_step()` (the optimiser's last
    restart), times a cosine from 1 to `cfg.final_lr_ratio` over `total_steps`.

    A function, not an object: LambdaLR would store an object's attributes in
    checkpoints, which then could not be read without pickled code.
    """
    warmup, total, low = max(1, cfg.warmup_steps), max(1, total_steps), cfg.final_lr_ratio

    def factor(step: int) -> float:
        cosine = low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        return min(1.0, (step - start_step() + 1) / warmup) * cosine

    return factor


def restart(optimizers: Iterable[torch.optim.Optimizer], schedules: Iterable[torch.optim.lr_scheduler.LambdaLR]):
    """Fresh moments, and the rate each schedule gives now (its start step moved: from the warm-up)."""
    for optimizer in optimizers:
        optimizer.state.clear()
    # A schedule set the next step's rate before the round ended: set it again.
    for schedule in schedules:
        schedule._last_lr = [base * rate(schedule.last_epoch) for base, rate in zip(schedule.base_lrs,
                                                                                    schedule.lr_lambdas)]
        for group, lr in zip(schedule.optimizer.param_groups, schedule._last_lr):
            group["lr"] = lr
