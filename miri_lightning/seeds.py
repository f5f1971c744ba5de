"""Random streams: every random draw in the project reads its own stream of a seed, and the streams are named here.

Seeded with the seed itself, a draw would replay the draws made elsewhere with
the same seed (a mask's, for one), so that the two would not be independent.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .errors import ConfigError

NOISE_STREAM = 0x5EED  # the noise fill's uniform draws
THIN_STREAM, GAUSS_STREAM = 0xCEE9, 0xF111  # the thinned fill's kept entries; its added Gaussian noise
HIDE_STREAM = 0xE11  # observed entries hidden to measure a fill's error (data.fill_noise: auto)
CALIBRATION_STREAM = 0xCA11  # observed entries hidden to calibrate the draws' interval
PAIR_STREAM, BATCH_STREAM = 0xD157, 0xBA7C  # miri-distill's fresh fills per pass; its batches


def seed_stream(seed: int, salt: int) -> torch.Generator:
    """A CPU generator for `seed`'s own stream `salt`."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, salt]).generate_state(1)[0]))


def given_seed(key: str, seed: Optional[int]) -> int:
    """The seed a component was given as `key`, 0 when unset (train.py sets unset seeds to `seed_everything`'s:
    `cli.fill_seeds`), so that a component built in Python without one is still reproducible."""
    if seed is None:
        return 0
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{key} must be an integer, got {seed!r}")
    return seed
