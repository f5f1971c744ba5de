"""The exponential moving average of the velocity field's weights, updated without a host read."""

from __future__ import annotations

import weakref
from typing import Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMA(AveragedModel):
    """torch's AveragedModel (same module, same state_dict keys) with a cheaper update.

    Each update moves every weight towards the network's by
    `1 - min(decay, (1 + n) / (10 + n))`, n being the updates so far; the
    first one (n = 0) copies. Without the ramp, a short round's EMA would still
    mostly hold the weights it started from (0.99 ** 30 = 0.74).

    AveragedModel's own update walks both modules' parameters and reads
    `n_averaged` on the host twice, every step: Python time and two GPU syncs
    in a step that is bound by the host (docs/performance.md). Here the tensor
    lists are kept and the rate is computed on the device: one multi-tensor
    lerp per dtype, nothing read back.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.requires_grad_(False)
        self.decay = decay
        self._pairs: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._source = None  # a weak reference to the module of _pairs: an attribute would register it as a child
        self._buffers_too = False

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_pairs": {}, "_source": None}  # pickled (spawned DDP) without the cache

    def _tensor_pairs(self, model: nn.Module) -> dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """(own, model's) float weights and buffers, by dtype.

        The parameter lists are kept: moving or casting a module, or loading a
        state dict into it, keeps its Parameter objects (a cast changes the
        dtype key, which is checked). Buffers are replaced by a move, so
        modules with float buffers (none in our U-Net) have them listed anew.
        """
        if self._source is None or self._source() is not model or self._buffers_too or any(
                own[0].dtype != dtype for dtype, (own, _) in self._pairs.items()):
            mine, theirs = [*self.module.parameters(), *self.module.buffers()], [*model.parameters(), *model.buffers()]
            pairs: dict = {}
            for own, other in zip(mine, theirs, strict=True):
                if own.is_floating_point():
                    lists = pairs.setdefault(own.dtype, ([], []))
                    lists[0].append(own)
                    lists[1].append(other)
            self._pairs, self._source = pairs, weakref.ref(model)
            self._buffers_too = any(b.is_floating_point() for b in self.module.buffers())
        return self._pairs

    @torch.no_grad()
    def update_parameters(self, model: nn.Module, skip: Optional[torch.Tensor] = None) -> None:
        """One update towards `model`'s weights, or none where the device flag `skip` is true.

        `skip` is not read: the rate becomes 0, which leaves the average
        exactly as it is while `model`'s weights are finite. (A skipped step
        never makes them non-finite; an overflowing update would, and then
        every loss after it is bad and `max_bad_steps` stops the run.)
        """
        n = self.n_averaged
        rate = torch.where(n == 0, 1.0, 1 - torch.clamp((1 + n) / (10 + n), max=self.decay))  # 1: copy
        done = torch.ones_like(n) if skip is None else (~skip).to(n.dtype)
        rate = rate * done
        for dtype, (own, other) in self._tensor_pairs(model).items():
            # lerp with weight 1 returns its end exactly, so the first update is a bit-exact copy.
            torch._foreach_lerp_(own, other, [rate.to(dtype)] * len(own))
        n += done
