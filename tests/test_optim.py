"""The optimiser's settings, learning-rate schedule and restart, without a trainer."""

import io

import pytest
import torch

from miri_lightning.errors import ConfigError
from miri_lightning.optim import OptimizerConfig, restart, warmup_cosine


def adamw_and_schedule(cfg: OptimizerConfig, total: int, start: list[int]):
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param], lr=cfg.lr)
    return param, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg, total, lambda: start[0]))


def test_the_rate_warms_up_linearly_then_follows_a_cosine_down_to_the_final_ratio():
    constant = warmup_cosine(OptimizerConfig(warmup_steps=4), total_steps=100, start_step=lambda: 0)
    assert [constant(step) for step in (0, 1, 2, 3, 4, 99)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    factor = warmup_cosine(OptimizerConfig(warmup_steps=4, final_lr_ratio=0.1), total_steps=100, start_step=lambda: 0)
    assert factor(0) == pytest.approx(0.25) and factor(50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(100) == factor(150) == pytest.approx(0.1)


def test_a_restart_clears_the_moments_and_warms_up_again_from_its_step():
    start = [0]
    param, optimizer, schedule = adamw_and_schedule(OptimizerConfig(lr=1.0, warmup_steps=4), 100, start)
    for _ in range(10):
        param.grad = torch.ones(2)
        optimizer.step()
        schedule.step()
    assert optimizer.state and optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    start[0] = 10
    restart([optimizer], [schedule])
    assert not optimizer.state
    assert optimizer.param_groups[0]["lr"] == schedule.get_last_lr()[0] == pytest.approx(0.25)


def test_the_schedule_state_loads_without_pickled_code():
    _, _, schedule = adamw_and_schedule(OptimizerConfig(), 10, [0])
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["last_epoch"] == 0


@pytest.mark.parametrize("field, value, message", [
    ("lr", 0.0, "model.optimizer.lr must be > 0, got 0.0"),
    ("warmup_steps", -1, "model.optimizer.warmup_steps must be >= 0, got -1"),
    ("final_lr_ratio", 1.5, "model.optimizer.final_lr_ratio must be in (0, 1], got 1.5"),
])
def test_bad_settings_name_their_key(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        OptimizerConfig(**{field: value})
