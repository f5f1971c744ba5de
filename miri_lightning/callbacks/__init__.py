"""Callbacks: MIRI's round loop, its checkpoints and its progress bar."""

from .progress import RoundProgressBar
from .rounds import MIRIRounds, RoundCheckpoint

__all__ = ["MIRIRounds", "RoundCheckpoint", "RoundProgressBar"]
