"""Callbacks: MIRI's round loop and its progress bar."""

from .progress import RoundProgressBar
from .rounds import MIRIRounds

__all__ = ["MIRIRounds", "RoundProgressBar"]
