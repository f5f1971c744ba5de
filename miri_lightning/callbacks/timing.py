"""How long a round took and how fast it went: the figures of `rounds.jsonl` that measure the machine."""

from __future__ import annotations

import math
import resource
import time

import torch

# The fields of a round's record that measure the machine, not the result (they differ between equal runs).
TIMING_KEYS = ("train_seconds", "impute_seconds", "train_images_per_second", "impute_images_per_second",
               "fastest_epoch_seconds", "peak_memory_gb", "fid_seconds")


def clock(device: torch.device) -> float:
    """Seconds, once the device has finished its queued work (else GPU timings would miss the tail)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this round: allocated on the GPU, or the process's resident set on the CPU (whole run)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


class RoundClock:
    """Times a round: its trainings (a retried round has several), the images they read, and its solve."""

    def __init__(self):
        self.train_seconds, self.train_images, self.fastest = 0.0, 0, math.inf

    def start_training(self, device: torch.device) -> None:
        if device.type == "cuda" and not self.train_images:  # the round's first training: its peak starts here
            torch.cuda.reset_peak_memory_stats(device)
        self._start = clock(device)

    def count(self, images: int) -> None:
        """Images a training step read, on all ranks."""
        self.train_images += images

    def stop_training(self, device: torch.device) -> None:
        seconds = clock(device) - self._start
        self.train_seconds += seconds
        self.fastest = min(self.fastest, seconds)  # the steady rate, without a round's first-training costs

    def timing(self, impute_seconds: float, images: int, device: torch.device) -> dict:
        """The round's timing fields (TIMING_KEYS but `fid_seconds`), for `images` re-imputed."""
        return {"train_seconds": self.train_seconds, "impute_seconds": impute_seconds,
                "train_images_per_second": self.train_images / max(self.train_seconds, 1e-9),
                "impute_images_per_second": images / max(impute_seconds, 1e-9),
                "fastest_epoch_seconds": self.fastest, "peak_memory_gb": peak_memory_gb(device)}
