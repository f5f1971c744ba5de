import pickle

import pytest
import torch
from torch import nn

from conftest import HostReads
from miri_lightning.ema import EMA


def perturb(net: nn.Module, step: int) -> None:
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.sin(torch.arange(p.numel(), dtype=p.dtype) * (step + 1) + i).view_as(p))


def expected_average(history: list[list[torch.Tensor]], decay: float, restart_at: int = -1) -> list[torch.Tensor]:
    """The EMA of a sequence of weights, computed one value at a time in float64."""
    average, n = None, 0
    for step, weights in enumerate(history):
        if step == restart_at:
            n = 0
        rate = 1.0 if n == 0 else 1 - min(decay, (1 + n) / (10 + n))
        if n == 0:
            average = [w.double().clone() for w in weights]
        else:
            average = [a + rate * (w.double() - a) for a, w in zip(average, weights)]
        n += 1
    return average


@pytest.mark.parametrize("restart_at", [-1, 7])
def test_ema_ramps_its_decay_and_copies_after_a_restart(restart_at):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    ema, history = EMA(net, decay=0.9), []
    for step in range(20):
        perturb(net, step)
        history.append([p.detach().clone() for p in net.parameters()])
        if step == restart_at:
            ema.n_averaged.zero_()  # what a round with a fresh network does
        ema.update_parameters(net)
        if step == restart_at:  # the update right after a restart is a copy, bit for bit
            assert all(torch.equal(a, p) for a, p in zip(ema.module.parameters(), net.parameters()))
    for got, want in zip(ema.module.parameters(), expected_average(history, 0.9, restart_at)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert int(ema.n_averaged) == 20 - max(restart_at, 0)



def test_ema_update_reads_nothing_back_from_the_device():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    ema = EMA(net, decay=0.99)
    with HostReads() as counter:
        for step in range(3):
            perturb(net, step)
            ema.update_parameters(net)
    assert counter.reads == 0
    with HostReads() as counter:  # the probe itself sees a read
        bool(ema.n_averaged == 0)
    assert counter.reads == 1


def test_ema_keeps_averagedmodels_checkpoint_keys_and_follows_a_cast_and_a_load():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))  # a module with float and integer buffers
    ema = EMA(net, decay=0.5)
    keys = set(torch.optim.swa_utils.AveragedModel(net, use_buffers=True).state_dict())
    assert set(ema.state_dict()) == keys
    ema.update_parameters(net)
    net.double(), ema.double()  # same Parameter objects, new dtype
    perturb(net, 1)
    ema.update_parameters(net)
    assert all(p.dtype == torch.float64 for p in ema.module.parameters())
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    perturb(other, 5)
    net.load_state_dict(other.state_dict())
    ema.n_averaged.zero_()
    ema.update_parameters(net)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), other.parameters()))
    clone = pickle.loads(pickle.dumps(ema))  # spawned DDP processes receive the module pickled
    clone.update_parameters(net)
    assert torch.equal(clone.n_averaged, ema.n_averaged + 1)
