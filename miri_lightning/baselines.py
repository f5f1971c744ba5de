"""Simple imputers: the fills MIRI can start from (`fills.RoundZeroFill` chooses one), and the
baselines a benchmark puts beside it.

All take images (N, C, H, W) in [0, 1] and bool masks of the same shape
(True = observed) and return imputations whose observed entries are the data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .blocks import observed_mean
from .seeds import NOISE_STREAM, seed_stream


def noise_fill(images: torch.Tensor, masks: torch.Tensor, seed: int = 0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Missing entries uniform in [0, 1] (the paper's initial fill), from `seed`'s own stream (or `generator`,
    to fill a collection a chunk of images at a time: one generator over the chunks draws what one call does)."""
    noise = torch.rand(images.shape, generator=generator or seed_stream(seed, NOISE_STREAM))
    return torch.where(masks, images, noise)


def mean_fill(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Missing entries set to the per-entry mean of the observed values."""
    return torch.where(masks, images, observed_mean(images, masks).expand_as(images))


def interpolation_fill(images: torch.Tensor, masks: torch.Tensor, sigma: float = 1.0,
                       fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised Gaussian convolution: each missing entry is the Gaussian-weighted mean of the
    observed entries around it, (G * (m x)) / (G * m); where none is near, `fallback` (C, H, W)
    (default: the per-entry observed mean of these images; a chunk of a collection passes the collection's)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-offsets.square() / (2 * sigma**2))
    c = images.shape[1]

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable, per channel
        x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
        return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)

    m = masks.float()
    weight = blur(m)
    smooth = blur(images * m) / weight.clamp_min(1e-8)
    fallback = (observed_mean(images, masks) if fallback is None else fallback).expand_as(images)
    return torch.where(masks, images, torch.where(weight > 1e-6, smooth, fallback))


def knn_fill(images: torch.Tensor, masks: torch.Tensor, k: int = 5, chunk: int = 512) -> torch.Tensor:
    """k-nearest-neighbour imputation over mutually observed entries.

    The distance between images i and j is the mean squared difference over
    the entries both observe; a missing entry of i is the mean of that entry
    over its k nearest images that observe it (the per-entry mean if none does).
    """
    n = len(images)
    x, m = images.flatten(1).double(), masks.flatten(1).double()
    xm, x2m = x * m, x.square() * m
    out = images.clone()
    fallback = observed_mean(images, masks).flatten()
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        shared = m[rows] @ m.T
        sq = x2m[rows] @ m.T + m[rows] @ x2m.T - 2 * xm[rows] @ xm.T
        dist = sq / shared.clamp_min(1)
        dist[shared == 0] = math.inf
        dist[torch.arange(dist.shape[0]), torch.arange(start, start + dist.shape[0])] = math.inf  # not itself
        nearest = dist.topk(min(k, n - 1), largest=False).indices  # (rows, k)
        votes = m[nearest].sum(1)
        value = xm[nearest].sum(1) / votes.clamp_min(1)
        value = torch.where(votes > 0, value, fallback.double())
        flat = out[rows].flatten(1)
        out[rows] = torch.where(masks[rows].flatten(1), flat, value.to(flat.dtype)).view_as(out[rows])
    return out
