"""`miri-distill`: one network that imputes in one pass what a run's chain of rounds does in T solves.

    miri-distill checkpoints/cifar10_cpu --out one_pass.pt          # a run folder (or RUN/checkpoints/X.ckpt)
    miri-impute one_pass.pt --npz new.npz --num-samples 8 --out draws.npz

The chain maps a round-0 fill z of an image to chain(z) = solve(v_T, ... solve(v_1, z)). A student u, the
same U-Net, is trained on the chain's own pairs (rectified flow's reflow, regressed to a single step):

    z  = round 0's fill of a collection image (random where the fill is: draws still differ)
    S(z, m) = z + (1 - m) * u(z, z, m, tau=0)        one Euler step of the field u: the one-pass imputation
    loss = mean over missing entries of (S(z, m) - chain(z))^2

The chain is deterministic given z, so the regression has one right answer per input and nothing to
average into a blur. The run itself made one such pair of every image, for free: it solved its last round's
imputations from its round-0 fill (`imputations_round0.npz`), so chain(z) needs no solve there
(`run_pairs`); further pairs from fresh fills cost the chain's T solves an image each (`pairs_per_image`).
S is written as a one-round chain solved by one Euler step, so `MIRIImputer` loads, draws and calibrates
it as it does a checkpoint. Pairs are written once, a chunk of images at a time, into `.npy` files under
`--cache` that training maps (memory stays bounded); the student's state is saved there every
`save_every` steps: a killed distillation resumes where it stopped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .seeds import BATCH_STREAM, PAIR_STREAM, seed_stream
from .checkpoints import CHECKPOINT_DIR, read_checkpoint
from .cli import bf16_pays
from .callbacks.reporting import IMPUTATIONS_FILE, START_IMPUTATIONS_FILE
from .data.sources import NpzImages
from .data.sources.base import ImageSet
from .data.storage import chunk_rows
from .ema import EMA
from .errors import ConfigError, DataError, MIRIError
from .flow import SolverConfig, missing_mse, random_window
from .inference import MIRIImputer
from .io import atomic_path
from .models.unet import VelocityUNet
from .optim import OptimizerConfig, warmup_cosine
from .runs import read_rounds

ONE_STEP = SolverConfig(method="euler", steps=1)
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class DistillConfig:
    """How the one-pass student is trained (`miri-distill --config distill.yaml`, or `--distill.KEY VALUE`).

    Args:
        steps: optimiser steps.
        batch_size: pairs a step.
        lr, warmup_steps, final_lr_ratio: AdamW's rate, its linear warm-up and its cosine's end (as `model.optimizer`).
        ema_decay: the student's weight average, which is what the file keeps.
        run_pairs: learn from the run's own pair of every image (its round-0 fill and its last round's
            imputations), which costs no solve; needs the run folder's files and its last checkpoint.
        pairs_per_image: fresh fills of every collection image, each run through the chain once (T solves).
        train_crop: train on random windows of this side; None takes the run's `model.train_crop`, 0 whole images.
        init: `last_round` starts the student from v_T's weights (the chain's last field); `fresh` from scratch.
        pair_batch_size: images a chain solve takes (and a pairs file is written) at a time.
        save_every: steps between saves of the student's state (resuming after a kill).
        seed: the fills', batches' and windows' randomness.
        precision: the fresh pairs' solves and the student's forward pass in `bf16` autocast or in `32`-bit
            floats; None: as train.py chooses for this machine's CPU (bf16 where it has AVX512-BF16 or AMX,
            measured faster there).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    final_lr_ratio: float = 0.1
    ema_decay: float = 0.99
    run_pairs: bool = True
    pairs_per_image: int = 0
    train_crop: Optional[int] = None
    init: str = "last_round"
    pair_batch_size: int = 256
    save_every: int = 200
    seed: int = 0
    precision: Optional[str] = None

    def __post_init__(self):
        for key, least in (("steps", 1), ("batch_size", 1), ("pairs_per_image", 0), ("pair_batch_size", 1),
                           ("save_every", 1)):
            if getattr(self, key) < least:
                raise ConfigError(f"distill.{key} must be >= {least}, got {getattr(self, key)}")
        if not self.run_pairs and not self.pairs_per_image:
            raise ConfigError("distillation needs pairs: set distill.run_pairs true or distill.pairs_per_image >= 1")
        if self.init not in ("last_round", "fresh"):
            raise ConfigError(f"distill.init must be last_round or fresh, got {self.init!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"distill.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.precision not in (None, "bf16", "32"):
            raise ConfigError(f"distill.precision must be bf16, 32 or unset, got {self.precision!r}")


def find_inputs(run: Path, npz: Optional[Path]) -> tuple[Path, Path]:
    """(the chain's checkpoint, the collection's .npz) of a run folder or a checkpoint inside one."""
    ckpt = run / CHECKPOINT_DIR / "last.ckpt" if run.is_dir() else run
    if not ckpt.is_file():
        raise DataError(f"{ckpt} does not exist: give a train.py run folder or one of its checkpoints")
    if npz is None:
        folder = run if run.is_dir() else ckpt.parent.parent
        npz = folder / "imputations.npz"
        if not npz.is_file():
            raise DataError(f"{npz} does not exist: give the images to distil on with --npz (images and masks)")
    return ckpt, npz


def load_collection(npz: Path, chain: MIRIImputer) -> ImageSet:
    """The images and masks to distil on, checked against the chain's network."""
    collection = NpzImages(npz).load()
    if collection.own_masks is None:
        raise DataError(f"{npz} has no masks: distillation needs the collection's images and masks "
                        "(a run's imputations.npz has both)")
    if tuple(collection.shape[1:]) != chain.image_shape:
        raise DataError(f"{npz} holds images of shape {tuple(collection.shape[1:])}, the run's network was trained "
                        f"on {chain.image_shape}")
    return collection


def make_pairs(chain: MIRIImputer, collection: ImageSet, run_dir: Path, cache: Path,
               cfg: DistillConfig) -> list[np.ndarray]:
    """Mapped (N, 2, C, H, W) float32 arrays of fills and chain outputs: the run's own, then a fresh pass each."""
    cache.mkdir(parents=True, exist_ok=True)
    passes = []
    if cfg.run_pairs:
        rounds = len(chain.round_weights)
        passes.append(run_pairs(run_dir, rounds, collection, cache / "pairs_run.npy", cfg.pair_batch_size))
    return passes + [fresh_pairs(chain, collection, cache / f"pairs{p}.npy", cfg, p)
                     for p in range(cfg.pairs_per_image)]


def write_pairs(path: Path, shape: tuple[int, ...], rows: int, desc: str,
                pair: Callable[[int, int], tuple]) -> np.ndarray:
    """Fill a new (N, 2, C, H, W) file `rows` images at a time (`pair(start, stop)` gives fills and outputs) and
    map it; renamed into place when whole, so a killed run redoes at most the file it was writing."""
    if not path.is_file():
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(shape[0], 2, *shape[1:]))
            with tqdm(total=shape[0], desc=desc, unit="img", disable=None) as bar:
                for start in range(0, shape[0], rows):
                    stop = min(start + rows, shape[0])
                    out[start:stop, 0], out[start:stop, 1] = (x.numpy() for x in pair(start, stop))
                    bar.update(stop - start)
            out.flush()
            del out
    return np.load(path, mmap_mode="r")


def run_pairs(run_dir: Path, rounds: int, collection: ImageSet, path: Path, rows: int) -> np.ndarray:
    """The run's round-0 fill and last imputations of every image: a pair of its chain's, solved by the run."""
    start, last = (run_dir / name for name in (START_IMPUTATIONS_FILE, IMPUTATIONS_FILE))
    for file in (start, last):
        if not file.is_file():
            raise DataError(f"{file} does not exist: the run's own pairs need its round-0 fill and last imputations "
                            "(runs from before 2026-12-08 kept no round-0 fill); set distill.run_pairs false and "
                            "distill.pairs_per_image >= 1 to solve fresh pairs instead")
    with np.load(last) as saved:
        saved_round = int(saved["round"]) if "round" in saved.files else None
    if saved_round != rounds:
        raise DataError(f"{last} holds round {saved_round}'s imputations, the checkpoint a chain of {rounds} rounds: "
                        "distil from the run's last checkpoint, or set distill.run_pairs false")
    begin, end = NpzImages(start).load(), NpzImages(last).load()
    for name, other in ((start, begin), (last, end)):
        if not same_masks(other, collection):
            raise DataError(f"{name} and the images to distil on differ in their masks or shape: the run's own pairs "
                            "are of its collection; set distill.run_pairs false to distil on other images")
    return write_pairs(path, tuple(collection.shape), rows, "the run's own pairs",
                       lambda i, j: (begin.floats(i, j), end.floats(i, j)))


def same_masks(a: ImageSet, b: ImageSet) -> bool:
    shape = tuple(a.shape)
    return shape == tuple(b.shape) and all(torch.equal(a.observed(c.start, c.stop), b.observed(c.start, c.stop))
                                           for c in chunk_rows(shape))


def fresh_pairs(chain: MIRIImputer, collection: ImageSet, path: Path, cfg: DistillConfig, p: int) -> np.ndarray:
    """Pass `p`: a fresh round-0 fill of every image and the chain's solve of it."""
    seed = int(torch.randint(2**31, (1,), generator=seed_stream(cfg.seed, PAIR_STREAM + p)))

    def pair(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = collection.floats(start, stop), collection.observed(start, stop)
        chunk_seed = seed + start  # each chunk its own fills; reproducible chunk by chunk
        return (chain.initial_fill(images, masks, chunk_seed),
                chain.impute(images, masks, seed=chunk_seed, batch_size=cfg.pair_batch_size))

    desc = f"chain pairs, pass {p + 1} of {cfg.pairs_per_image}"
    return write_pairs(path, tuple(collection.shape), cfg.pair_batch_size, desc, pair)


def bf16_chosen(cfg: DistillConfig) -> bool:
    return cfg.precision == "bf16" or (cfg.precision is None and bf16_pays("cpu"))


class Student:
    """The one-pass network, its EMA, optimiser and schedule, and the batch draws: everything a resume needs."""

    def __init__(self, chain: MIRIImputer, cfg: DistillConfig):
        self.cfg = cfg
        self.net = VelocityUNet(chain.image_shape[0], chain.image_shape[1], chain.net_config)
        if cfg.init == "last_round":
            self.net.load_state_dict({k: v.float() for k, v in chain.round_weights[-1].items()})
        else:
            self.net.reset_parameters(seed=cfg.seed)
        self.net.to(memory_format=torch.channels_last)  # as a round trains (docs/performance.md)
        self.ema = EMA(self.net, cfg.ema_decay)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, fused=True)
        schedule = OptimizerConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, final_lr_ratio=cfg.final_lr_ratio)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(schedule, cfg.steps, lambda: 0))
        self.draws = seed_stream(cfg.seed, BATCH_STREAM)
        self.bf16 = bf16_chosen(cfg)
        self.step = 0

    def state(self) -> dict:
        return {"step": self.step, "net": self.net.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "draws": self.draws.get_state(), "config": asdict(self.cfg)}

    def load(self, state: dict, path: Path) -> None:
        if state.get("config") != asdict(self.cfg):
            raise DataError(f"{path} was saved with other distillation settings ({state.get('config')}); delete it "
                            "or the cache folder to start again")
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.draws.set_state(state["draws"])
        self.step = int(state["step"])

    def train_step(self, pairs: list[np.ndarray], masks: np.ndarray, crop: Optional[int]) -> float:
        """One step on `batch_size` random (fill, chain output) pairs: u regresses chain(z) - z at missing entries."""
        n = len(masks)
        index = torch.randint(n, (self.cfg.batch_size,), generator=self.draws).sort().values.numpy()
        which = torch.randint(len(pairs), (1,), generator=self.draws).item()  # one pass a batch: one file read
        both = torch.from_numpy(np.ascontiguousarray(pairs[which][index]))
        z, target, m = both[:, 0], both[:, 1], torch.from_numpy(masks[index]).float()
        if crop:
            zt, m = random_window(torch.cat([z, target], 1), m, crop, self.draws)
            z, target = zt.chunk(2, dim=1)
        z, m = (x.contiguous(memory_format=torch.channels_last) for x in (z, m))
        tau = torch.zeros(len(z))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            velocity = self.net(z, z, m, tau)
        loss = missing_mse(velocity.float(), target - z, m)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.ema.update_parameters(self.net)
        self.step += 1
        return float(loss.detach())


def distill(run: Path, out: Path, cfg: DistillConfig = DistillConfig(), npz: Optional[Path] = None,
            cache: Optional[Path] = None, progress: bool = True) -> dict:
    """Train the one-pass student of `run`'s chain and write it to `out`; returns timings and the last loss."""
    ckpt, npz = find_inputs(run, npz)
    # Fresh pairs are solved, and the student trained, in one precision: bf16 where train.py would use it.
    chain = MIRIImputer.load(ckpt, precision="bf16" if bf16_chosen(cfg) else "32")
    cache = cache or out.with_name(out.name + ".cache")
    crop = read_checkpoint(ckpt).get("hyper_parameters", {}).get("train_crop") if cfg.train_crop is None \
        else cfg.train_crop or None
    started = time.perf_counter()
    collection = load_collection(npz, chain)
    pairs = make_pairs(chain, collection, ckpt.parent.parent, cache, cfg)
    masks = collection.masks.numpy()
    pairs_seconds = time.perf_counter() - started
    student = Student(chain, cfg)
    state_path = cache / STATE_FILE
    if state_path.is_file():
        student.load(torch.load(state_path, map_location="cpu", weights_only=True), state_path)
    started, loss = time.perf_counter(), math.nan
    with tqdm(total=cfg.steps, initial=student.step, desc="distilling", unit="step", disable=not progress) as bar:
        while student.step < cfg.steps:
            loss = student.train_step(pairs, masks, crop)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if student.step % cfg.save_every == 0 or student.step == cfg.steps:
                with atomic_path(state_path) as tmp:
                    torch.save(student.state(), tmp)
    one_pass = MIRIImputer(chain.image_shape, chain.net_config, [student.ema.module.state_dict()], ONE_STEP,
                           chain.fill, kind="one_pass", source=f"distilled from {ckpt} ({len(chain.round_weights)} "
                                                                f"rounds) on {npz}, {asdict(cfg)}")
    one_pass.export(out)
    # What the distillation's cost compares with: the run's rounds' training times.
    round_seconds = [r["train_seconds"] for r in read_rounds(ckpt.parent.parent) if r["round"] > 0]
    return {"pairs_seconds": pairs_seconds, "train_seconds": time.perf_counter() - started, "loss": loss,
            "rounds": len(chain.round_weights), "round_seconds": round_seconds}


def parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog="miri-distill", description=__doc__.split("\n\n")[0], exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file of the settings below")
    p.add_argument("run", type=Path, help="a train.py run folder, or one of its checkpoints")
    p.add_argument("--out", type=Path, required=True, help="the one-pass imputer to write (e.g. one_pass.pt)")
    p.add_argument("--npz", type=Optional[Path], default=None,
                   help="images and masks to distil on (default: the run's imputations.npz)")
    p.add_argument("--cache", type=Optional[Path], default=None,
                   help="pairs and the resumable state (default: OUT.cache beside the output)")
    p.add_class_arguments(DistillConfig, "distill")
    return p


def main(argv: Optional[list[str]] = None) -> None:
    from jsonargparse import ArgumentError

    try:
        p = parser()
        args = p.parse_args(argv)
        cfg = DistillConfig(**vars(args.distill))
        result = distill(args.run, args.out, cfg, args.npz, args.cache)
    except ArgumentError as err:
        sys.exit(f"error: {' '.join(str(err).split())}")
    except MIRIError as err:
        sys.exit(f"error: {err}")
    rounds = result["round_seconds"]
    against = f" (the run's rounds trained {min(rounds):.0f} to {max(rounds):.0f} s)" if rounds else ""
    print(f"wrote {args.out}: one pass in place of {result['rounds']} rounds; pairs {result['pairs_seconds']:.0f} s, "
          f"training {result['train_seconds']:.0f} s{against}, last loss {result['loss']:.4g}")


if __name__ == "__main__":
    main()
