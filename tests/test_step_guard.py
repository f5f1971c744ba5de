"""The bad-step guard on its own: skipping, counting, reporting and stopping, with a one-weight model."""

import math
import warnings

import pytest
import torch
from torch import nn

from conftest import HostReads
from miri_lightning.errors import TrainingError
from miri_lightning.step_guard import StepGuard, on_any_process


def model_and_adamw(fused: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)


def batch_loss(model: nn.Module, bad: bool = False) -> torch.Tensor:
    """A backward pass done: the loss (NaN, with NaN gradients, when `bad`)."""
    loss = model(torch.ones(4, 3)).square().mean() * (math.nan if bad else 1.0)
    loss.backward()
    return loss


def train_step(guard: StepGuard, model, optimizer, *bad: bool, scaler=None) -> torch.Tensor:
    """One update of `len(bad)` accumulated batches through the guard; returns its skip flag."""
    optimizer.zero_grad()
    for flag in bad:
        loss = batch_loss(model, flag)
        guard.watch(loss)
    return guard.step(optimizer, loss, scaler=scaler)


def snapshot(model, optimizer) -> list[torch.Tensor]:
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return [t.detach().clone() for t in [*model.parameters(), *state]]


def unchanged(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return len(before) == len(after) and all(map(torch.equal, before, after))


@pytest.mark.parametrize("fused", [True, False], ids=["fused_on_the_device", "unfused_on_the_host"])
def test_a_bad_loss_leaves_weights_and_moments_as_they_were_and_a_good_one_steps(fused):
    guard, (model, adamw) = StepGuard(), model_and_adamw(fused)
    assert not train_step(guard, model, adamw, False)  # AdamW's moments exist from here
    before = snapshot(model, adamw)
    assert train_step(guard, model, adamw, True)
    assert unchanged(before, snapshot(model, adamw))
    assert not hasattr(adamw, "found_inf")  # the fused kernel's flag does not outlive the step
    assert not train_step(guard, model, adamw, False)
    assert not unchanged(before, snapshot(model, adamw))


def test_with_accumulated_batches_one_bad_loss_spoils_the_whole_update():
    guard, (model, adamw) = StepGuard(), model_and_adamw(fused=True)
    train_step(guard, model, adamw, False)
    before = snapshot(model, adamw)
    assert train_step(guard, model, adamw, True, False)  # the bad batch first, the last loss finite
    assert unchanged(before, snapshot(model, adamw))
    assert not train_step(guard, model, adamw, False, False)  # the next update starts clean


@pytest.mark.parametrize("fused, scaler, reads", [(True, None, 0), (False, None, 1), (True, object(), 1)],
                         ids=["fused", "unfused", "fused_under_a_gradient_scaler"])
def test_the_fused_adamw_skips_without_a_host_read_the_others_read_the_flag(fused, scaler, reads):
    guard, (model, adamw) = StepGuard(), model_and_adamw(fused)
    train_step(guard, model, adamw, False)
    before = snapshot(model, adamw)
    adamw.zero_grad()
    loss = batch_loss(model, bad=True)
    with HostReads() as counter:
        guard.watch(loss)
        guard.step(adamw, loss, scaler=scaler)
    assert counter.reads == reads
    assert unchanged(before, snapshot(model, adamw))


def test_the_report_counts_skipped_steps_warns_once_for_each_and_returns_the_last_loss():
    guard, (model, adamw) = StepGuard(max_bad_steps=3), model_and_adamw(fused=True)
    assert math.isnan(guard.report(epoch=0, step=0)) and guard.last_loss is None  # nothing to read yet
    for bad in (False, True, True, False, True):
        train_step(guard, model, adamw, bad)
    with pytest.warns(UserWarning, match=r"NaN or infinite training loss in 3 step\(s\) up to epoch 1, step 5; "
                                         r"those steps were skipped \(at most 2 in a row;"):
        assert math.isnan(guard.report(epoch=1, step=5))  # the last step's loss was NaN
    train_step(guard, model, adamw, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no new bad step: no warning
        loss = guard.report(epoch=1, step=6)
    assert 0 < loss < math.inf and guard.last_loss == loss


def test_the_epoch_loss_is_the_mean_of_its_finite_losses_and_restarts():
    guard, (model, adamw) = StepGuard(), model_and_adamw(fused=False)
    losses = []
    for bad in (False, True, False):
        adamw.zero_grad()
        loss = batch_loss(model, bad)
        guard.watch(loss)
        guard.step(adamw, loss)
        losses.append(loss.item())
    assert guard.epoch_loss().item() == pytest.approx((losses[0] + losses[2]) / 2)
    train_step(guard, model, adamw, False)
    assert guard.epoch_loss().item() == pytest.approx(guard.loss.item())  # the new epoch's one step
    assert StepGuard().epoch_loss() is None


def test_max_bad_steps_in_a_row_stop_at_the_next_report_not_before():
    guard, (model, adamw) = StepGuard(max_bad_steps=2), model_and_adamw(fused=True)
    for bad in (True, False, True):  # never two in a row
        train_step(guard, model, adamw, bad)
    with pytest.warns(UserWarning):
        guard.report(epoch=0, step=3)
    train_step(guard, model, adamw, True)  # the second in a row: the step itself reads nothing, so runs on
    with pytest.raises(TrainingError, match=r"NaN or infinite for 2 steps in a row \(by epoch 0, step 4; "
                                            r"model.max_bad_steps is 2\); stopped"):
        guard.report(epoch=0, step=4)


@pytest.mark.parametrize("flag", [True, False])
def test_the_any_process_flag_of_one_process_is_its_own(flag, tmp_path):
    assert on_any_process(torch.tensor(flag)).item() is flag
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:  # through the all-reduce
        assert on_any_process(torch.tensor(flag)).item() is flag
    finally:
        torch.distributed.destroy_process_group()
