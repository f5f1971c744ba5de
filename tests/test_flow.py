"""The rectified-flow core: training pairs, loss, and the ODE solve."""

import pytest
import torch

from miri_lightning.errors import ConfigError
from miri_lightning.flow import (SolverConfig, derangement, heldout_loss, missing_mse, solve, solve_batches,
                                 training_pair)

SOLVERS = [SolverConfig(method=m, steps=5) for m in ("euler", "midpoint", "rk4", "dopri5")]


def _batch(n=6, c=3, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.rand(n, c, s, s, generator=g), torch.rand(n, c, s, s, generator=g)
    m = (torch.rand(n, c, s, s, generator=g) > 0.5).float()
    return x0, x1, m


def test_derangement_has_no_fixed_point_and_is_a_permutation():
    for n in (2, 3, 17):
        p = derangement(n)
        assert sorted(p.tolist()) == list(range(n))
        assert (p != torch.arange(n)).all()


def test_training_pair_matches_the_equations():
    x0, x1, m = _batch()
    tau = torch.rand(len(x0))
    a, b, target = training_pair(x0, x1, m, tau)
    t = tau.view(-1, 1, 1, 1)
    x_tau = t * x1 + (1 - t) * x0
    assert torch.allclose(a, torch.where(m.bool(), x0, x_tau))
    assert torch.allclose(b, torch.where(m.bool(), x1, x_tau))
    assert torch.equal(target, x1 - x0)
    # at tau = 0 the missing entries of both inputs are the image itself, at tau = 1 the partner
    a0, b0, _ = training_pair(x0, x1, m, torch.zeros(len(x0)))
    assert torch.equal(a0, x0) and torch.equal(b0[~m.bool()], x0[~m.bool()])


def test_loss_ignores_observed_entries():
    x0, x1, m = _batch()
    target = x1 - x0
    pred = torch.randn_like(x0)
    wild = torch.where(m.bool(), pred + 100.0, pred)
    assert missing_mse(pred, target, m) == missing_mse(wild, target, m)
    assert missing_mse(torch.where(m.bool(), pred, target), target, m) == 0


def test_partner_observed_loss_sees_only_entries_where_the_target_is_data():
    x0, x1, m = _batch()
    m1 = torch.roll(m, 1, dims=0)  # the partners' masks
    target = x1 - x0
    pred = torch.randn_like(x0)
    # Entries the partner did not observe (its imputations) or the image did observe carry no loss...
    counted = (1 - m) * m1
    wild = torch.where(counted.bool(), pred, pred + 100.0)
    assert missing_mse(pred, target, m, m1) == missing_mse(wild, target, m, m1)
    # ...and the loss is the mean over the entries that do.
    expected = (counted * (pred - target).square()).sum() / counted.sum()
    torch.testing.assert_close(missing_mse(pred, target, m, m1), expected)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.method)
def test_constant_field_lands_on_its_target(solver):
    x0, x1, _ = _batch()
    none_observed = torch.zeros_like(x0)
    z1 = solve(lambda a, b, m, tau: (x1 - x0) * (1 - m), x0, none_observed, solver)
    assert torch.allclose(z1, x1, atol=1e-5)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.method)
def test_solve_keeps_observed_entries_bit_exact_and_clamps(solver):
    x0, _, m = _batch()

    def rough_field(a, b, mask, tau):  # ignores the (1 - m) factor and pushes far out of range
        return 3.0 * torch.sin(17 * a) + tau.view(-1, 1, 1, 1)

    z1 = solve(rough_field, x0, m, solver)
    assert torch.equal(z1[m.bool()], x0[m.bool()])
    assert z1.min() >= 0 and z1.max() <= 1
    assert not torch.equal(z1, x0)


def test_solve_passes_the_current_state_as_both_inputs():
    x0, _, m = _batch()
    seen = []

    def field(a, b, mask, tau):
        seen.append(torch.equal(a, b))
        return torch.zeros_like(a)

    solve(field, x0, m, SolverConfig(method="euler", steps=3))
    assert seen and all(seen)


def test_solver_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="steps"):
        SolverConfig(steps=0)
    with pytest.raises(ConfigError, match="rtol"):
        SolverConfig(rtol=0)


def test_a_solve_batch_that_runs_out_of_memory_is_retried_in_halves():
    x0, _, m = _batch(n=7)

    def velocity(a, b, m, tau):  # fits at most 3 images, like a device that is too small
        if len(a) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return (0.5 - a) * tau.view(-1, 1, 1, 1)

    expected = solve(velocity, x0[:3], m[:3])
    with pytest.warns(UserWarning, match="retrying with 2 images"):
        out, fits = solve_batches(velocity, x0, m, SolverConfig(), batch_size=8, device=torch.device("cpu"))
    assert fits == 2
    assert torch.allclose(out[:3], expected) and out.shape == x0.shape
    assert torch.equal(out[m.bool()], x0[m.bool()])
    with pytest.raises(ConfigError, match="batch size must be >= 1, got 0"):
        solve_batches(velocity, x0, m, SolverConfig(), batch_size=0, device=torch.device("cpu"))


def test_heldout_loss_takes_the_entries_training_takes():
    # Observed entries hold 0.5, missing ones 3.0: with a zero velocity, an entry the partner observed has target
    # 0.5 - 3.0, one the partner did not observe has target 0. Only the partner-observed loss sees just the former.
    _, _, m = _batch(n=8)
    images = torch.where(m.bool(), 0.5, 3.0)
    zero = lambda a, b, m, tau: torch.zeros_like(a)  # noqa: E731
    only_data = heldout_loss(zero, images, m, batch_size=4, device=torch.device("cpu"), partner_observed=True)
    every_missing = heldout_loss(zero, images, m, batch_size=4, device=torch.device("cpu"))
    assert only_data == pytest.approx(2.5**2)
    assert 0.3 * 2.5**2 < every_missing < 0.7 * 2.5**2  # about half the partners observed an entry
