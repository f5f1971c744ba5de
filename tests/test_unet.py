"""The velocity U-Net: shapes, the (1 - m) output factor, config errors (also through train.py)."""

import pytest
import torch

from conftest import run_cli
from miri_lightning.errors import ConfigError
from miri_lightning.models.unet import UNetConfig, VelocityUNet


@pytest.mark.parametrize(
    "channels,size,cfg",
    [
        (1, 16, UNetConfig(width=8, channel_mults=(1, 2), attention_resolutions=(8,))),
        (3, 32, UNetConfig(width=8, channel_mults=(1, 2, 2), attention_resolutions=(8,))),
        (3, 64, UNetConfig(width=8, channel_mults=(1, 1, 2, 2), num_res_blocks=1, attention_resolutions=(16, 8))),
    ],
)
def test_output_shape_and_observed_entries_get_zero_velocity(channels, size, cfg):
    net = VelocityUNet(channels, size, cfg)
    net.reset_parameters(seed=1)
    with torch.no_grad():  # make the output non-trivial: the head starts at zero
        net.head[-1].weight.normal_()
    x = torch.rand(3, channels, size, size)
    m = (torch.rand_like(x) > 0.5).float()
    v = net(x, torch.rand_like(x), m, torch.rand(3))
    assert v.shape == x.shape
    assert (v[m.bool()] == 0).all()
    assert (v[~m.bool()] != 0).any()


def test_fresh_network_is_the_identity_flow_and_reset_is_seeded():
    net = VelocityUNet(3, 16, UNetConfig(width=8, channel_mults=(1, 2), attention_resolutions=()))
    x = torch.rand(2, 3, 16, 16)
    assert (net(x, x, torch.zeros_like(x), torch.rand(2)) == 0).all()
    net.reset_parameters(seed=5)
    first = [p.clone() for p in net.parameters()]
    net.reset_parameters(seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first, net.parameters()))


def test_time_changes_the_output():
    net = VelocityUNet(1, 16, UNetConfig(width=8, channel_mults=(1, 2), attention_resolutions=()))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    x = torch.rand(1, 1, 16, 16)
    m = torch.zeros_like(x)
    assert not torch.allclose(net(x, x, m, torch.tensor([0.1])), net(x, x, m, torch.tensor([0.9])))


def _random_net(cfg: UNetConfig, channels: int = 3, size: int = 32) -> VelocityUNet:
    net = VelocityUNet(channels, size, cfg)
    with torch.no_grad():  # every weight non-zero, so that every path carries signal
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def test_pixel_norm_without_mid_attention_sees_only_its_receptive_field():
    """What a window-trained network learnt holds on whole images only if no layer spans the image."""
    small = dict(width=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=())
    a = torch.rand(1, 3, 32, 32)
    m = (torch.rand_like(a) > 0.5).float()
    far = a.clone()
    far[..., :4, :4] = 1 - far[..., :4, :4]  # change one corner only
    tau = torch.rand(1)
    for cfg, local in ((UNetConfig(**small), False), (UNetConfig(**small, norm="pixel"), False),
                       (UNetConfig(**small, norm="pixel", mid_attention=False), True)):
        net = _random_net(cfg)
        with torch.no_grad():
            change = (net(a, a, m, tau) - net(far, far, m, tau)).abs()
        assert change[..., :4, :4].max() > 1e-2  # the corner itself moves
        opposite = change[..., -4:, -4:].max()
        assert (opposite < 1e-6) if local else (opposite > 1e-5), (cfg, float(opposite))


def test_bad_configs_name_the_key():
    with pytest.raises(ConfigError, match="channel_mults"):
        VelocityUNet(3, 20, UNetConfig(channel_mults=(1, 2, 2, 2)))
    with pytest.raises(ConfigError, match="attention_resolutions"):
        VelocityUNet(3, 32, UNetConfig(attention_resolutions=(5,)))
    with pytest.raises(ConfigError, match="groups"):
        VelocityUNet(3, 32, UNetConfig(width=12, groups=8))
    VelocityUNet(3, 32, UNetConfig(width=12, groups=8, norm="pixel"))  # groups are GroupNorm's only


def test_train_py_stops_before_training_on_an_image_size_the_depth_cannot_halve(tmp_path):
    with pytest.raises(SystemExit) as stop:
        run_cli(tmp_path, "--data.source.init_args.image_size", "12", "--model.net.channel_mults", "[1, 2, 2, 2]")
    message = str(stop.value.code)
    assert message.startswith("error: model.net.channel_mults") and "\n" not in message
    assert "divisible by 8; got 12" in message
    assert not (tmp_path / "checkpoints").exists()  # no training step ran, so nothing was saved
