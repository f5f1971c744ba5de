"""The velocity field v(a, b, m, tau): a time-conditioned U-Net.

Inputs are the image carrying its own observed values (`a`), the same image
carrying the partner's values at the observed positions (`b`), the mask `m`
(1 = observed) and the time `tau` in [0, 1]. The output is a velocity for the
missing entries only: it is multiplied by `(1 - m)`, so observed entries never
move during a solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the U-Net.

    Args:
        width: channels of the first level.
        channel_mults: one multiplier of `width` per resolution level; each
            level after the first halves the image side.
        num_res_blocks: residual blocks per level (the decoder has one more).
        attention_resolutions: image sides (e.g. 8 for the 8x8 level) at which a
            self-attention layer follows each residual block.
        dropout: dropout inside residual blocks.
        groups: GroupNorm groups; must divide every level's channel count.
        norm: `group` normalises each group of channels over the whole feature
            map; `pixel` normalises the channels of each pixel on their own.
            With `pixel`, no `mid_attention` and no `attention_resolutions`,
            no layer spans the image, so a network trained on windows
            (`model.train_crop`) computes on a whole image what it learnt;
            with `group`, a window's statistics are not the image's.
        mid_attention: self-attention between the two middle blocks; it spans
            the whole lowest-resolution feature map.
    """

    # The shape every shipped config uses (1.1M parameters at 3 channels).
    width: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    groups: int = 8
    norm: Literal["group", "pixel"] = "group"
    mid_attention: bool = True


class PixelNorm(nn.Module):
    """LayerNorm over the channels of each pixel (with a per-channel scale and shift)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.LayerNorm(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def norm_layer(cfg: UNetConfig, ch: int) -> nn.Module:
    return PixelNorm(ch) if cfg.norm == "pixel" else nn.GroupNorm(cfg.groups, ch)


def timestep_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of tau in [0, 1] (scaled by 1000, as diffusion U-Nets expect)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=tau.device) / half)
    angles = 1000.0 * tau.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """Norm-SiLU-conv twice, with the time embedding as a FiLM scale and shift."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, cfg: UNetConfig):
        super().__init__()
        self.norm1 = norm_layer(cfg, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = norm_layer(cfg, out_ch)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a (low-resolution) feature map."""

    def __init__(self, ch: int, cfg: UNetConfig):
        super().__init__()
        self.heads = max(1, ch // 64)
        self.norm = norm_layer(cfg, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Level(nn.Module):
    """Residual blocks of one resolution, each optionally followed by attention."""

    def __init__(self, chans: list[tuple[int, int]], emb_dim: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(i, o, emb_dim, cfg) for i, o in chans)
        self.attn = nn.ModuleList(
            SelfAttention(o, cfg) if attention else nn.Identity() for _, o in chans
        )


class VelocityUNet(nn.Module):
    """Time-conditioned U-Net for images of `channels` x `image_size` x `image_size`."""

    def __init__(self, channels: int, image_size: int, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        check_unet_config(cfg, image_size)
        self.channels, self.image_size, self.cfg = channels, image_size, cfg
        w, emb_dim = cfg.width, 4 * cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(w, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(3 * channels, w, 3, padding=1)

        widths = [w * m for m in cfg.channel_mults]
        res, ch, skips = image_size, w, [w]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, out in enumerate(widths):
            chans = [(ch if b == 0 else out, out) for b in range(cfg.num_res_blocks)]
            self.down.append(Level(chans, emb_dim, cfg, res in cfg.attention_resolutions))
            ch = out
            skips += [out] * cfg.num_res_blocks
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skips.append(ch)
                res //= 2

        self.mid = Level([(ch, ch), (ch, ch)], emb_dim, cfg, attention=False)
        self.mid_attn = SelfAttention(ch, cfg) if cfg.mid_attention else nn.Identity()

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, out in reversed(list(enumerate(widths))):
            chans = []
            for _ in range(cfg.num_res_blocks + 1):
                chans.append((ch + skips.pop(), out))
                ch = out
            self.up.append(Level(chans, emb_dim, cfg, res in cfg.attention_resolutions))
            self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1) if i > 0 else nn.Identity())
            if i > 0:
                res *= 2

        self.head = nn.Sequential(norm_layer(cfg, ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        """Re-initialise every weight (from `seed` when given, leaving the global RNG as it was).

        The last convolution of each residual branch and of the head start at
        zero, so a fresh network predicts zero velocity and starts as the identity map.
        """
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        for module in self.modules():
            if isinstance(module, ResBlock):
                nn.init.zeros_(module.conv2.weight)
                nn.init.zeros_(module.conv2.bias)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor, m: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Velocity at time `tau` (shape (N,)) for inputs `a`, `b`, mask `m` (N, C, H, W)."""
        emb = self.time_mlp(timestep_embedding(tau, self.cfg.width).to(a.dtype))
        h = self.stem(torch.cat([a, b, m], dim=1))
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid.blocks[0](h, emb)
        h = self.mid.blocks[1](self.mid_attn(h), emb)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h) * (1 - m)


def check_unet_config(cfg: UNetConfig, image_size: int) -> None:
    """Fail early, naming the key, for a U-Net that cannot be built for this image size."""
    levels = len(cfg.channel_mults)
    if cfg.width < 1 or levels < 1 or cfg.num_res_blocks < 1 or min(cfg.channel_mults) < 1:
        raise ConfigError(f"model.net: width, channel_mults and num_res_blocks must be positive, got {cfg}")
    if image_size % 2 ** (levels - 1):
        raise ConfigError(
            f"model.net.channel_mults: {levels} levels halve the image {levels - 1} times, "
            f"so the image size must be divisible by {2 ** (levels - 1)}; got {image_size}"
        )
    sides = {image_size // 2**i for i in range(levels)}
    if not set(cfg.attention_resolutions) <= sides:
        raise ConfigError(
            f"model.net.attention_resolutions: {list(cfg.attention_resolutions)} must be among the "
            f"levels' image sides {sorted(sides)}"
        )
    bad = [cfg.width * m for m in cfg.channel_mults if (cfg.width * m) % cfg.groups]
    if bad and cfg.norm == "group":
        raise ConfigError(f"model.net.groups: {cfg.groups} must divide every level's channels, not {bad}")


def check_train_crop(cfg: UNetConfig, crop: Optional[int], image_size: int) -> None:
    """Fail early for training windows (`model.train_crop`) this U-Net cannot take; warn where some of its
    layers span the whole feature map, and so would see a window in training but the whole image in the solve."""
    if crop is None:
        return
    halvings = 2 ** (len(cfg.channel_mults) - 1)
    if not (0 < crop <= image_size and crop % halvings == 0):
        raise ConfigError(f"model.train_crop must be a multiple of {halvings} (the U-Net halves it "
                          f"{halvings.bit_length() - 1} times) and at most the image side {image_size}, got {crop}")
    spans = [key for key, on in (("norm: group", cfg.norm == "group"), ("mid_attention: true", cfg.mid_attention),
                                 ("attention_resolutions", cfg.attention_resolutions)) if on]
    if crop < image_size and spans:
        rank_zero_warn(f"MIRI: model.train_crop {crop} with model.net {' and '.join(spans)}: these layers see "
                       f"a {crop}x{crop} window in training but the whole {image_size}x{image_size} image in the "
                       "solve, which biases every imputation alike; set model.net.norm: pixel, "
                       "model.net.mid_attention: false and no model.net.attention_resolutions "
                       "(docs/2026-12-02-shared-error.md)")
