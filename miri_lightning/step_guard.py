"""The bad-step guard: training steps whose loss is NaN or infinite are skipped, counted, and stop the run.

Every decision is made on the device and read from it only now and then:
reading a GPU tensor waits for all the work queued before it, and a training
step bound by the host needs that queue to run ahead (docs/performance.md).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn

from .errors import ConfigError, TrainingError


def on_any_process(flag: torch.Tensor) -> torch.Tensor:
    """`flag` (a bool tensor) or-ed over all processes, without a host read.

    Lightning's `strategy.reduce` puts a barrier before its all-reduce, and
    under NCCL a barrier blocks the host until the GPU has caught up.
    """
    flag = flag.float()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag > 0


class StepTally:
    """Training figures summed on the device, step by step, and read from it only now and then.

    Kept: the finite losses' sum and count (the epoch's mean loss), the NaN or
    infinite steps in a row, the longest such run, all of them, and the last loss.
    """

    def __init__(self):
        self.sums: Optional[torch.Tensor] = None
        self.bad_reported = 0  # bad steps already returned by `read`

    def add(self, loss: torch.Tensor, bad: torch.Tensor) -> None:
        """Count one optimiser step of loss `loss`, skipped where the device flag `bad` is true."""
        loss, bad = loss.float(), bad.float()  # counts in float32: exact to 2**24 steps, whatever the precision
        if self.sums is None:
            self.sums = loss.new_zeros(6)
        loss_sum, good, run, longest, total, _ = self.sums.unbind()
        run = (run + 1) * bad
        finite = torch.where(bad > 0, 0.0, loss)
        self.sums = torch.stack([loss_sum + finite, good + 1 - bad, run, torch.maximum(longest, run), total + bad,
                                 loss])

    def read(self) -> Optional[dict]:
        """The longest bad run, the bad steps new since the last read and the last loss (one host read), or None."""
        if self.sums is None:
            return None
        _, _, _, longest, total, loss = self.sums.tolist()
        new, self.bad_reported = int(total) - self.bad_reported, int(total)
        return {"longest_bad_run": int(longest), "new_bad_steps": new, "loss": loss}

    def epoch_loss(self) -> Optional[torch.Tensor]:
        """The mean finite loss since the last call (on the device; None before any step); starts the next sum."""
        if self.sums is None:
            return None
        mean = self.sums[0] / self.sums[1].clamp_min(1)
        self.sums = torch.cat([torch.zeros_like(self.sums[:2]), self.sums[2:]])
        return mean


class StepGuard:
    """Skips an optimiser step whose loss was NaN or infinite on any process; `max_bad_steps` in a row stop the run.

    A skipped step updates neither the weights nor the optimiser's moments nor
    (through the flag `step` returns) the EMA; it still counts for the
    learning-rate schedule and `global_step`. `watch` each batch's loss, `step`
    instead of `optimizer.step`, and `report` now and then: the count is read
    from the device only there, so the warning and the stop come at the next
    report, not at the bad step itself.
    """

    def __init__(self, max_bad_steps: int = 3):
        if max_bad_steps < 1:
            raise ConfigError(f"model.max_bad_steps must be >= 1, got {max_bad_steps}")
        self.max_bad_steps = max_bad_steps
        self.tally = StepTally()
        self.spoilt: Optional[torch.Tensor] = None  # a device flag: the update being accumulated met a bad loss
        self.loss: Optional[torch.Tensor] = None  # the last batch's loss, on the device
        self.last_loss: Optional[float] = None  # the last finite loss read (for the progress bar)

    def watch(self, loss: torch.Tensor) -> None:
        """Note a batch's loss. Not read here; or-ed over processes, so that all of them skip together."""
        bad = on_any_process(~torch.isfinite(loss.detach()))
        # With gradient accumulation, one bad batch spoils the whole update.
        self.spoilt = bad if self.spoilt is None else self.spoilt | bad
        self.loss = loss.detach()

    def step(self, optimizer, loss: torch.Tensor, scaler=None) -> torch.Tensor:
        """`optimizer.step` (returning `loss` as its closure) unless the update is spoilt; returns the spoilt flag.

        The fused AdamW skips on the device (its `found_inf` flag), so the step
        never waits for the GPU; any other optimiser, or a gradient `scaler`
        that sets `found_inf` itself, needs the flag on the host.
        `optimizer` may be Lightning's wrapper, whose `step` runs the precision
        plugin's hooks and gradient clipping.
        """
        spoilt, self.spoilt = self.spoilt, None
        inner = getattr(optimizer, "optimizer", optimizer)  # inside Lightning's wrapper
        if inner.defaults.get("fused") and scaler is None:
            inner.found_inf = spoilt.float()  # 1: the kernel leaves weights, moments and step counts as they are
            try:
                optimizer.step(closure=lambda: loss)
            finally:
                del inner.found_inf
        elif not spoilt:  # a host read
            optimizer.step(closure=lambda: loss)
        self.tally.add(self.loss, spoilt)
        return spoilt

    def report(self, epoch: int, step: int) -> float:
        """One host read: warn of skipped steps, stop after `max_bad_steps` in a row; returns the last loss (NaN
        before any step). `epoch` and `step` say where training is, for the messages."""
        figures = self.tally.read()
        if figures is None:
            return math.nan
        where, limit = f"epoch {epoch}, step {step}", self.max_bad_steps
        if figures["longest_bad_run"] >= limit:
            raise TrainingError(
                f"the training loss was NaN or infinite for {figures['longest_bad_run']} steps in a row (by {where}; "
                f"model.max_bad_steps is {limit}); stopped. The checkpoints and imputations on disk are those "
                "of the last finished round. Lower model.optimizer.lr or check the data."
            )
        if figures["new_bad_steps"]:
            rank_zero_warn(f"MIRI: NaN or infinite training loss in {figures['new_bad_steps']} step(s) up to {where}; "
                           f"those steps were skipped (at most {figures['longest_bad_run']} in a row; "
                           f"model.max_bad_steps={limit} in a row stop the run)")
        if math.isfinite(figures["loss"]):
            self.last_loss = figures["loss"]
        return figures["loss"]

    def epoch_loss(self) -> Optional[torch.Tensor]:
        """The mean finite loss since the last call, on the device (None before any step)."""
        return self.tally.epoch_loss()
