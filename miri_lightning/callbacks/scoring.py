"""How good a round's imputations are: the metrics of `metrics.collection_metrics`, and FID and KID where
the `fid` extra is installed. Rank 0's job: nothing in here joins a collective."""

from __future__ import annotations

import time
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..metrics import collection_metrics
from ..realism import INSTALL_HINT, Realism, load_inception


class RoundScorer:
    """Scores each round's imputations of the collection on its first `metrics_max_images` images.

    Args (the `rounds.*` settings of the same names):
        metrics_max_images: images the metrics use (MMD is quadratic in it).
        mi_steps, mi_seeds: the mask-information classifier's training steps (0 skips it) and seeds.
        fid_images: FID and KID of every round on this fixed first subset, so that rounds compare
            (0 skips them); InceptionV3 is loaded at the first round that needs it.
        fid_all: whether the run's last round is also scored on all the metrics' images.
    """

    def __init__(self, metrics_max_images: int, mi_steps: int, mi_seeds: int, fid_images: int, fid_all: bool):
        self.metrics_max_images, self.mi_steps, self.mi_seeds = metrics_max_images, mi_steps, mi_seeds
        self.fid_images, self.fid_all = min(fid_images, metrics_max_images), fid_all
        self.realism: Optional[Realism] = None

    def __call__(self, imputations: torch.Tensor, masks: torch.Tensor, truth: Optional[torch.Tensor],
                 device: torch.device, last: bool) -> dict:
        """The metrics of `imputations` against `truth` (None where the source has none: mask information
        alone); FID/KID on the subset, and on all the metrics' images too when the round is the run's `last`."""
        metrics = collection_metrics(imputations, masks, truth, self.metrics_max_images, self.mi_steps,
                                     self.mi_seeds)
        if truth is None or self.fid_images < 2 or not self._realism_ready(device, truth):
            return metrics
        start = time.perf_counter()
        subset = min(self.fid_images, len(truth))
        last = last and self.fid_all
        scores = self.realism(imputations, (subset, len(truth)) if last else (subset,))
        metrics.update(fid=scores[0]["fid"], kid=scores[0]["kid"], fid_images=subset)
        if last:
            metrics.update(fid_all=scores[1]["fid"], kid_all=scores[1]["kid"], fid_all_images=len(truth))
        metrics["fid_seconds"] = time.perf_counter() - start
        return metrics

    def _realism_ready(self, device: torch.device, truth: torch.Tensor) -> bool:
        """Whether FID/KID can be scored: InceptionV3 loaded on the first call, or INSTALL_HINT logged once."""
        if self.realism is None:
            features = load_inception(device)
            if features is None:
                rank_zero_info(f"MIRI: {INSTALL_HINT}")
                self.fid_images = 0
                return False
            self.realism = Realism(features, truth)
        return True
