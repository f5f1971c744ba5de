"""The incomplete collection and its current imputations, as a LightningDataModule."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Literal, Optional, Union

import torch
from jsonargparse import lazy_instance
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from ..blocks import ObservedMean
from ..checkpoints import DATA_STATE_MARK, as_config
from ..fills import FillConfig, RoundZeroFill
from ..errors import ConfigError, DataError
from ..seeds import given_seed
from .batches import ImputationBatches, IndexBatches, RoundSampler, whole_batch
from .checks import check_collection
from .masks import MCAR, MaskMechanism
from .sources import ImageSet, ImageSource, Shapes
from .storage import MemmapStore, StateMode, check_fits, choose_mode, chunk_rows, round_file

# `on_device: auto` keeps the state on a GPU when it takes at most this share of the GPU's free memory.
AUTO_ON_DEVICE_SHARE = 0.25


def state_bytes(imputations: torch.Tensor, masks: torch.Tensor) -> int:
    return imputations.numel() * imputations.element_size() + masks.numel() * masks.element_size()


class MaskedImageDataModule(LightningDataModule):
    """An image collection with missing entries, and MIRI's imputation state.

    Args:
        source: where the images come from (see `miri_lightning.data.sources`).
        mask: how entries go missing (see `miri_lightning.data.masks`). Applied
            on top of the source's own masks when it has some; when both are
            absent, MCAR at 60 %.
        fill: round 0's fill (`FillConfig`: kind, sigma, noise, noise_scale, keep).
        val_fraction: share of the images held out of the velocity's training
            (drawn once from `seed`): they are still re-imputed every round,
            and their flow-matching loss tells when a round's velocity has
            converged (`rounds.min_steps`). 0: none held out.
        batch_size: training images per step on each device. The training
            loader is endless: an epoch (a round's training) takes the batches
            that `MIRIRounds` asks Lightning for (`trainer.limit_train_batches`).
        num_workers: DataLoader worker processes.
        seed: seed of the initial fill and of the batch order; unset, `seed_everything`'s under train.py, else 0.
        state: where the imputations and ground truth live: `memory` (shared
            by a process's DataLoader workers), `memmap` (one `.npy` file per
            round in `state_dir`, mapped by all the node's processes; the
            checkpoint names the file), or `auto`: `memmap` when the
            float32 copies of all the node's processes would take more than a
            quarter of its memory.
        state_dir: node-local folder for `memmap` files (default: the run
            folder's `state/`); each node writes its own `node<k>/` copy.
        on_device: also keep the imputations and masks in the accelerator's
            memory and read each batch there, so that a training step moves
            only the batch's indices from the host (`num_workers` is then
            unused). `auto`: on a GPU whose free memory is at least four
            times what they take.
    """

    def __init__(
        self,
        source: ImageSource = lazy_instance(Shapes),
        mask: Optional[MaskMechanism] = None,
        fill: FillConfig = FillConfig(),
        val_fraction: float = 0.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: Optional[int] = None,
        state: StateMode = "auto",
        state_dir: Optional[str] = None,
        on_device: Union[bool, Literal["auto"]] = "auto",
    ):
        super().__init__()
        if batch_size < 2:
            raise ConfigError(f"data.batch_size must be >= 2 (each image needs a partner), got {batch_size}")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.source, self.mask = source, mask
        self.fill_config = as_config(FillConfig, fill)
        self.val_fraction = val_fraction
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, given_seed("data.seed", seed)
        self.state, self.state_dir, self.on_device = state, state_dir, on_device
        self.resident: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (imputations, masks) on the device
        self.store: Optional[MemmapStore] = None  # set when the state is memory-mapped
        self._batches: Optional[ImputationBatches] = None
        self.truth_values: Optional[torch.Tensor] = None  # uint8 (k/255) or float32, as the source gives it
        self.fill: Optional[RoundZeroFill] = None  # round 0's fill as used, set by setup() or a checkpoint
        self.masks: Optional[torch.Tensor] = None
        self.imputations: Optional[torch.Tensor] = None
        self.round = 0

    # -- the collection -------------------------------------------------

    def prepare_data(self) -> None:
        """Downloads, once per machine (Lightning calls this on one process only)."""
        self.source.prepare()

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the incomplete collection once, a chunk of images at a time: masks, ground truth, x_hat^(0)."""
        if self.imputations is not None:
            return
        loaded = self.source.load()
        if len(loaded) == 0:  # before the mask mechanism, which would name only a tensor shape
            raise DataError(f"data.source {type(self.source).__name__} gave no images (shape {loaded.shape})")
        processes = self.trainer.num_devices if self.trainer else 1
        entries = math.prod(loaded.shape)
        mode = choose_mode(self.state, entries, processes)
        self.store = self._make_store() if mode == "memmap" else None
        check_fits(mode, entries, 0 if loaded.has_masks else 1 if loaded.eight_bit else 4, processes,
                   None if self.store is None else self.store.folder)
        # The masks never change after this: hashed as they are written, not at every checkpoint.
        digest = hashlib.sha1()
        self.masks = self._build("masks.npy", loaded.shape, torch.bool, self._mask_chunks(loaded), digest)
        check_collection(self.masks, loaded.shape, self.batch_size)
        self.val_indices, self.train_indices = self._split(len(loaded))
        # Passes over the whole collection: made by the process that writes the state, read by the others.
        summary = self._on_writer("round0.pt", lambda: {DATA_STATE_MARK: digest.hexdigest(),
                                                         **self._round_zero_fill(loaded)})
        self.masks_sha1, fallback = summary[DATA_STATE_MARK], summary["fallback"]
        self.fill = RoundZeroFill.from_state(summary)
        # Ground truth exists only where every missing entry was hidden by us; 8-bit sources stay 8-bit.
        self.truth_values = None if loaded.has_masks else self._build(
            "truth.npy", loaded.shape, torch.uint8 if loaded.eight_bit else torch.float32,
            lambda rows: loaded.values[rows] if loaded.eight_bit else loaded.floats(rows.start, rows.stop))
        fill = self.fill.stream(self.seed, fallback)
        self.imputations = self._build(round_file(0), loaded.shape, torch.float32,
                                       lambda rows: fill(loaded.floats(rows.start, rows.stop), self.masks[rows]))
        rank_zero_info(
            f"MIRI data: {len(loaded)} images of shape {loaded.shape[1:]}, "
            f"{100 * (1 - int(torch.count_nonzero(self.masks)) / self.masks.numel()):.1f} % entries missing, state in "
            f"{'memory' if self.store is None else self.store.folder}"
        )

    def _mask_chunks(self, loaded: ImageSet) -> Callable[[slice], torch.Tensor]:
        """The masks of a chunk of images: the source's own, and `data.mask`'s drawn over them. Only a process
        that writes the masks calls it, chunk after chunk: the mechanism's stream (which may pass over the
        collection first), or its draw for the whole collection at once where it has none, starts then."""
        mechanism = self.mask if self.mask is not None else None if loaded.has_masks else MCAR(missing_rate=0.6)

        @functools.cache
        def drawn() -> Callable[[slice], torch.Tensor]:
            stream = mechanism.stream(
                len(loaded), lambda: (loaded.floats(rows.start, rows.stop) for rows in chunk_rows(loaded.shape)))
            if stream is not None:
                return lambda rows: stream(loaded.floats(rows.start, rows.stop))
            whole = mechanism(loaded.images)
            return lambda rows: whole[rows]

        def masks(rows: slice) -> torch.Tensor:
            ours = None if mechanism is None else drawn()(rows)
            own = loaded.observed(rows.start, rows.stop)
            return ours if own is None else own if ours is None else own & ours

        return masks

    def _round_zero_fill(self, loaded: ImageSet) -> dict:
        """Round 0's fill (its checkpoint state) and, as `fallback`, the collection's observed mean where the
        fill reads one (passes over the data)."""
        chunks = [lambda rows=rows: (loaded.floats(rows.start, rows.stop), self.masks[rows])
                  for rows in chunk_rows(loaded.shape)]
        cfg, fallback = self.fill_config, None
        if cfg.kind != "noise":
            mean = ObservedMean()
            for read in chunks:
                mean.add(*read())
            fallback = mean.result()
        auto = cfg.noise == "auto"
        fill = RoundZeroFill(cfg.kind, cfg.sigma, 0.0 if auto else cfg.noise, cfg.keep,
                             fallback if cfg.kind == "mean" else None)
        if auto:  # the fill's own error, from observed entries hidden for the purpose
            error = fill.error_stream(self.seed, fallback=fallback)
            for read in chunks:
                error.add(*read())
            fill = replace(fill, noise=cfg.noise_scale * error.result())
            rank_zero_info(f"MIRI data: data.fill.noise auto: {fill.noise:.4f}, {cfg.noise_scale:g} x the "
                           f"{cfg.kind} fill's error on observed entries hidden from it")
        return {**fill.state(), "fallback": fallback}

    def _on_writer(self, name: str, compute: Callable[[], dict]) -> dict:
        """`compute()` where the state is built; under memmap only the node's writer computes it, and the
        others read its result from the state folder."""
        if self.store is None:
            return compute()
        return self.store.shared(name, compute)

    def _build(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
               chunk: Callable[[slice], torch.Tensor], digest: Optional["hashlib._Hash"] = None) -> torch.Tensor:
        """A collection-sized tensor written a chunk of images at a time, in order: into shared memory, or
        (memmap) into a file that one process of the node writes and every process then maps. `digest` is
        updated with the bytes written."""
        if self.store is None:
            out = torch.empty(shape, dtype=dtype).share_memory_()
        else:
            out = self.store.create(shape, dtype)
        if out is not None:
            for rows in chunk_rows(shape):
                out[rows] = chunk(rows)
                if digest is not None:
                    digest.update(out[rows].numpy().tobytes())
        return out if self.store is None else self.store.commit(name)

    @property
    def truth(self) -> Optional[torch.Tensor]:
        """The ground truth of the whole collection as float32 (None when the source masked it); large
        collections read `true_images` instead."""
        return None if self.truth_values is None else self.true_images(len(self.truth_values))

    def true_images(self, count: int) -> Optional[torch.Tensor]:
        """The ground truth of the first `count` images as float32 in [0, 1] (None when unknown)."""
        if self.truth_values is None:
            return None
        values = self.truth_values[:count]
        return values.float().div_(255) if values.dtype == torch.uint8 else values

    def _split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(held-out, training) image indices, both sorted; the draw depends on `seed` only."""
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 104_729))
        held = round(self.val_fraction * n)
        if self.val_fraction and not 2 <= held <= n - self.batch_size:
            raise ConfigError(f"data.val_fraction {self.val_fraction} holds out {held} of {n} images: it must leave "
                              f"at least 2 held out and data.batch_size ({self.batch_size}) for training")
        return order[:held].sort().values, order[held:].sort().values

    def validation_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out images' current imputations and their masks."""
        return self.imputations[self.val_indices], self.masks[self.val_indices]

    def _make_store(self) -> MemmapStore:
        trainer = self.trainer
        root = Path(self.state_dir or Path(trainer.default_root_dir if trainer else ".") / "state")
        if trainer is None:
            return MemmapStore(root / "node0", writer=True, barrier=lambda: None)
        return MemmapStore(root / f"node{trainer.node_rank}", writer=trainer.local_rank == 0,
                           barrier=trainer.strategy.barrier)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image (loads the collection if `setup()` has not run yet)."""
        if self.masks is None:
            self.setup()
        return tuple(self.masks.shape[1:])

    def check_imputed(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Refuse new imputations of images `rows` that are not finite or changed an observed entry."""
        if not torch.isfinite(values).all():
            raise DataError("the ODE solve gave NaN or infinite values; the collection was left unchanged")
        observed = self.masks[rows]
        if not torch.equal(values[observed], self.imputations[rows][observed]):
            raise DataError("the ODE solve changed observed entries; the collection was left unchanged")

    def new_round_buffer(self) -> Optional[torch.Tensor]:
        """Where the next round's imputations are written (None on processes that do not write them)."""
        return torch.empty_like(self.imputations) if self.store is None else self.store.create(tuple(self.imputations.shape))

    def next_round(self, buffer: Optional[torch.Tensor]) -> None:
        """Make the filled buffer x_hat^(t+1) and count the round."""
        if self.store is None:
            self.imputations.copy_(buffer)  # in place: workers share this storage
        else:
            self.imputations = self.store.commit(round_file(self.round + 1))
            if self._batches is not None:  # workers start afresh each epoch and copy this
                self._batches.imputations = self.imputations
        if self.resident is not None:
            self.resident[0].copy_(self.imputations)
        self.round += 1

    # -- batches ----------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        self.resident = None  # a reload frees the old copy before making the new one
        self.resident = self._make_resident()
        if self.resident is None:
            dataset = self._batches = ImputationBatches(self.imputations, self.masks)
        else:
            dataset = IndexBatches(len(self.masks))
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        workers = self.num_workers if self.resident is None else 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=RoundSampler(self.train_indices, world, rank, self.seed),
            collate_fn=whole_batch,
            drop_last=True,
            num_workers=workers,
            # Memory-mapped rounds are new files: workers must restart to map the new one.
            persistent_workers=workers > 0 and self.store is None,
        )

    def _make_resident(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Device copies of the imputations and masks, when `on_device` asks for them (after any resume)."""
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        wanted = self.on_device
        if wanted == "auto":
            wanted = device.type == "cuda" and (
                state_bytes(self.imputations, self.masks) <= AUTO_ON_DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]
            )
        if not wanted:
            return None
        return self.imputations.to(device, copy=True), self.masks.to(device, copy=True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With the state on the device, a batch arrives as indices: read its images and masks there."""
        if self.resident is None:
            return batch
        imputations, masks = self.resident
        return batch, imputations[batch], masks[batch]

    # -- checkpoint state -----------------------------------------------

    def state_dict(self) -> dict:
        """The current imputations (or, memory-mapped, the file that holds them) and the round."""
        # The fill goes along so that new images can later be filled the way round 0 was.
        state = {"round": self.round, DATA_STATE_MARK: self.masks_sha1, **self.fill.state()}
        if self.store is None:
            return {**state, "imputations": self.imputations.clone()}
        return {**state, "state_dir": str(self.store.folder.parent.resolve()), "imputations_file": round_file(self.round)}

    def load_state_dict(self, state: dict) -> None:
        """Swap in a checkpoint's imputations (Lightning calls this after `setup()`)."""
        if state.get(DATA_STATE_MARK) != self.masks_sha1:
            raise DataError(
                "the checkpoint's masks differ from this run's: resume with the same data and mask settings"
            )
        self.round = int(state["round"])
        # Round 0 was filled as the checkpoint says, whatever this run's config says; inference fills new
        # images from these.
        self.fill = RoundZeroFill.from_state(state)
        saved = state.get("imputations")
        if saved is None:  # a memory-mapped run: this node's copy of the round's file
            node = self.trainer.node_rank if self.trainer else 0
            source = MemmapStore(Path(state["state_dir"]) / f"node{node}", writer=False, barrier=lambda: None)
            saved = source.open(state["imputations_file"])
        if self.store is None:
            self.imputations.copy_(saved)
        else:
            self.imputations = self.store.save(round_file(self.round), saved)
        if self.resident is not None:
            self.resident[0].copy_(self.imputations)
