"""MIRI's rectified flow, with no Lightning in it: the training draws and pair, the loss, the ODE solve.

Notation (docs/reference.md, "How it works"): x0 = x_hat_i (the image), x1 = x_hat_j (an independent
partner), m = m_i (1 = observed), tau ~ U(0, 1).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, ContextManager, Literal, Optional

import torch
from torchdiffeq import odeint

from .errors import ConfigError

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation with no fixed point: partner j[i] != i for every i (needs n >= 2)."""
    device = generator.device if generator is not None else "cpu"
    order = torch.randperm(n, device=device, generator=generator)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def random_window(x: torch.Tensor, m: torch.Tensor, size: int, generator: torch.Generator):
    """The same random `size` x `size` window of every image of a batch and of its mask (`generator` on the CPU:
    drawing the corner reads nothing from the device).

    Training on windows (`model.train_crop`) costs about (size / side)^2 of a
    whole image a step; the U-Net is convolutional, so the velocity learnt on
    windows applies to whole images, which the solve and the held-out loss take.
    The corner is drawn from `-(size - 1)` to `side - 1` and then moved inside
    the image, so that an edge pixel is in a window about as often as any other
    (between 1 and 2 times the middle's rate). A corner drawn inside the image
    puts an edge pixel in a window `size` times less often than a middle one:
    the network barely learns the image's edge, and the solve biases it.
    """
    top, left = (min(max(int(torch.randint(1 - size, side, (1,), generator=generator)), 0), side - size)
                 for side in x.shape[-2:])
    return x[..., top:top + size, left:left + size], m[..., top:top + size, left:left + size]


def training_pair(x0, x1, m, tau):
    """The network inputs (a, b) and the regression target for one batch.

    x_tau = tau * x1 + (1 - tau) * x0
    a = m * x0 + (1 - m) * x_tau     (own observed values)
    b = m * x1 + (1 - m) * x_tau     (the partner's values at the same positions)
    target = x1 - x0
    """
    t = tau.view(-1, *([1] * (x0.dim() - 1)))
    x_tau = t * x1 + (1 - t) * x0
    a = m * x0 + (1 - m) * x_tau
    b = m * x1 + (1 - m) * x_tau
    return a, b, x1 - x0


def missing_mse(pred: torch.Tensor, target: torch.Tensor, m: torch.Tensor,
                m1: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error over missing entries only (observed entries carry no loss).

    With the partner's mask `m1`, only over entries missing in the image and
    observed in the partner: there x1 is data, not the previous round's
    imputation (`model.loss_entries: partner_observed`).
    """
    weight = 1 - m if m1 is None else (1 - m) * m1
    return (weight * (pred - target).square()).sum() / weight.sum().clamp_min(1)


@torch.no_grad()
def heldout_loss(velocity: Velocity, images: torch.Tensor, masks: torch.Tensor, batch_size: int,
                 device: torch.device, draws: int = 4, seed: int = 0,
                 context: Callable[[], ContextManager] = contextlib.nullcontext,
                 partner_observed: bool = False) -> float:
    """The flow-matching loss of `velocity` on held-out images, over all their missing entries (with
    `partner_observed`, over those the partner observed, as training takes it).

    Partners and tau come from `seed` alone, so two calls differ only through
    the network: a falling value is the velocity improving, not new draws.
    Each image is paired `draws` times (partners from the held-out images).
    """
    generator = torch.Generator().manual_seed(seed)
    squared, count = 0.0, 0.0
    for _ in range(draws):
        partner = derangement(len(images), generator=generator)
        tau = torch.rand(len(images), generator=generator)
        for part in torch.arange(len(images)).split(batch_size):
            x0, x1 = images[part].to(device), images[partner[part]].to(device)
            m, t = masks[part].to(device, x0.dtype), tau[part].to(device)
            a, b, target = training_pair(x0, x1, m, t)
            with context():
                pred = velocity(a, b, m, t).float()
            weight = (1 - m) * masks[partner[part]].to(device, x0.dtype) if partner_observed else 1 - m
            squared += float((weight * (pred - target).square()).sum())
            count += float(weight.sum())
    return squared / max(count, 1.0)


@dataclass(frozen=True)
class SolverConfig:
    """How the re-imputation ODE is solved (torchdiffeq).

    Args:
        method: `euler`, `midpoint` or `rk4` take `steps` equal steps;
            `dopri5` is adaptive and uses `rtol` and `atol`.
        steps: number of fixed steps from tau = 0 to 1.
        rtol, atol: tolerances of `dopri5`.
    """

    method: Literal["euler", "midpoint", "rk4", "dopri5"] = "midpoint"
    steps: int = 8
    rtol: float = 1e-3
    atol: float = 1e-4

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"model.solver.steps must be >= 1, got {self.steps}")
        if self.rtol <= 0 or self.atol <= 0:
            raise ConfigError(f"model.solver.rtol and atol must be > 0, got {self.rtol}, {self.atol}")


def solve(velocity: Velocity, z0: torch.Tensor, m: torch.Tensor, solver: SolverConfig = SolverConfig()):
    """Integrate dz/dtau = v(a=z, b=z, m, tau) from tau = 0 to 1, starting at z0.

    Returns z(1) clamped to [0, 1], with the observed entries copied from z0
    so that they are bit-identical whatever the network or solver did.
    """
    m = m.to(z0.dtype)

    def field(tau: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return velocity(z, z, m, tau.to(z.dtype).expand(z.shape[0]))

    span = torch.tensor([0.0, 1.0], device=z0.device, dtype=z0.dtype)
    if solver.method == "dopri5":
        options = {}
        kwargs = {"rtol": solver.rtol, "atol": solver.atol}
    else:
        grid = torch.linspace(0.0, 1.0, solver.steps + 1, device=z0.device, dtype=z0.dtype)
        options, kwargs = {"grid_constructor": lambda *_: grid}, {}
    z1 = odeint(field, z0, span, method=solver.method, options=options, **kwargs)[-1]
    return torch.where(m.bool(), z0, z1.clamp(0.0, 1.0))


@torch.inference_mode()
def solve_batches(velocity: Velocity, images: torch.Tensor, masks: torch.Tensor, solver: SolverConfig,
                  batch_size: int, device: torch.device, context: Callable[[], ContextManager] = contextlib.nullcontext,
                  memory_format: torch.memory_format = torch.contiguous_format,
                  on_batch: Optional[Callable[[int], None]] = None) -> tuple[torch.Tensor, int]:
    """`solve` every image, `batch_size` at a time on `device`, each batch inside `context()` (e.g. autocast).

    A batch that does not fit in the device's memory is retried in halves, so
    a generous `batch_size` costs nothing where it does not fit. Returns the
    float32 results on the CPU and the batch size that fitted, for the next call.
    """
    if batch_size < 1:
        raise ConfigError(f"the solve's batch size must be >= 1, got {batch_size}")
    out, start = [], 0
    while start < len(images):
        part = slice(start, start + batch_size)
        try:
            z0 = images[part].to(device, non_blocking=True, memory_format=memory_format)
            m = masks[part].to(device, non_blocking=True, memory_format=memory_format)
            with context():
                z1 = solve(velocity, z0, m, solver)
        except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError from torch 2.5 on)
            if batch_size == 1:
                raise
            z1 = None
        if z1 is None:  # outside the handler, so that the failed attempt's tensors are free to release
            torch.cuda.empty_cache()
            batch_size //= 2
            warnings.warn(f"the ODE solve ran out of device memory; retrying with {batch_size} images at a time")
            continue
        out.append(z1.float().cpu())
        start += len(z1)
        if on_batch is not None:
            on_batch(len(z1))
    return (torch.cat(out) if out else images.new_empty((0, *images.shape[1:]))), batch_size
