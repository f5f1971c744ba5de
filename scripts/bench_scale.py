"""Peak resident memory and time of setup(), a few training steps and a re-imputation, per process,
at a chosen collection size: in 1 process and in 2 DDP processes on the CPU (gloo).

    python scripts/bench_scale.py --images 10000 --size 64
    python scripts/bench_scale.py --images 200000 --size 64 --state memmap --workdir /data/bench --out scale.json
    python scripts/bench_scale.py --images 2000 --size 32 --processes 1 2 -- --model.net.width 16

1. Writes N random uint8 images of SxSxC (seeded) as the `images` array of
   an uncompressed `.npz` in `--workdir`, chunk by chunk (the writer never
   holds the collection); a later run with the same N, S, C reuses it.
2. For each count in `--processes`, trains in a fresh child process of this
   script (`--worker`; its DDP ranks are further processes Lightning starts),
   so each peak is that process's own: train.py's command line with an
   `NpzImages` source, MCAR 60 % per channel, the interpolation fill
   (sigma 0.4), `data.state` from `--state`, a tiny U-Net and one round of
   `--steps` optimiser steps. Overrides after `--` go to every run.
3. Prints one JSON object (and writes it to `--out`): the arguments, the
   machine, and per process count (`runs`) and rank the peak resident set
   (`ru_maxrss`: it counts the pages of mapped files and shared memory the
   process touched, page cache included) at the end of each stage
   (`peak_rss_gb`) and the stages' seconds (`seconds`):
   - before_setup: imports, the command line, the DDP launch (a baseline);
   - prepared: `prepare_data()` (rank 0 of a node; null where not called),
     setup: from the first of `prepare_data()` and `setup()` to setup's end;
   - round_zero: from there to the round's first training step: the model,
     round 0's metrics and files, the data loader;
   - train: the `--steps` optimiser steps;
   - impute: the round's re-imputation (inside round_end, which adds the
     round's metrics and files); end: the checkpoint and teardown.
   `rss_after_setup_gb` splits the resident set just after setup() into
   anonymous, file-backed and shared-memory pages, and `peak_private_gb`
   is the peak of anonymous plus shared-memory pages to each stage's end
   (sampled every 20 ms): the process's own memory, page cache aside.

A round re-imputes the whole collection, so the re-imputation covers all N
images (`imputed_images` in the JSON); `--skip-impute` stops each run after
its training steps (every rank reports, then leaves), for collections whose
re-imputation would take longer than the measurement is worth. Each run's folder (its state files can be several times the
collection's size) is deleted after it, unless `--keep-runs`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SKIP_IMPUTE = "MIRI_BENCH_SCALE_SKIP_IMPUTE"  # set for a run's processes by --skip-impute
CHUNK_BYTES = 64 << 20  # the synthetic writer's buffer
METRICS_IMAGES = 256  # the round's metrics (MMD is quadratic in them) read the first this-many images
# A U-Net small enough that the data, not the network, dominates memory; one Euler step per solve.
TINY_NET = ["--model.net.width", "8", "--model.net.channel_mults", "[1, 2]", "--model.net.num_res_blocks", "1",
            "--model.net.attention_resolutions", "[]", "--model.ema_decay", "0.0",
            "--model.optimizer.warmup_steps", "1", "--model.solver.method", "euler", "--model.solver.steps", "1"]


# -- the synthetic collection ---------------------------------------------------------------------


def write_collection(path: Path, n: int, size: int, channels: int, seed: int = 0) -> None:
    """N random uint8 (size, size, channels) images as `images` in an uncompressed .npz, a chunk at a time.

    Written under a temporary name and renamed: an interrupted write leaves no file a later run would reuse.
    """
    shape = (n, size, size, channels)
    rows = max(1, CHUNK_BYTES // (size * size * channels))
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    # force_zip64: the member may pass 4 GiB, and its size is not known to zipfile in advance.
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive, \
            archive.open("images.npy", "w", force_zip64=True) as member:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(member, header)
        for start in range(0, n, rows):
            member.write(rng.integers(0, 256, size=(min(rows, n - start), *shape[1:]), dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def collection(workdir: Path, n: int, size: int, channels: int) -> Path:
    path = workdir / f"images_{n}x{size}x{size}x{channels}.npz"
    if not path.is_file():
        write_collection(path, n, size, channels)
    return path


# -- one process's measurements (worker mode) -----------------------------------------------------


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def rss_now_gb() -> dict:
    """This process's resident set now, by kind (Linux /proc; empty elsewhere)."""
    fields = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    words = (line.split() for line in lines)
    return {fields[w[0]]: int(w[1]) * 1024 / 1e9 for w in words if w and w[0] in fields}  # values in kB


class PrivatePeak(threading.Thread):
    """The largest anonymous plus shared-memory resident set so far, sampled every 20 ms: the process's own
    memory, without the page cache of the files it maps (which the kernel can drop or write back)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0.0

    def run(self) -> None:
        while True:
            now = rss_now_gb()
            self.peak = max(self.peak, now.get("anon", 0.0) + now.get("shmem", 0.0))
            time.sleep(0.02)


class Marks(dict):
    """Stage name -> (seconds, peak resident GB, resident GB now by kind, peak private GB) at the stage's end;
    the first one counts."""

    def __init__(self):
        super().__init__()
        self.private = PrivatePeak()
        self.private.start()

    def mark(self, name: str) -> None:
        if name not in self:
            now = rss_now_gb()
            private = max(self.private.peak, now.get("anon", 0.0) + now.get("shmem", 0.0))
            self[name] = (time.perf_counter(), peak_rss_gb(), now, private)


def time_calls(owner, name: str, marks: Marks, before: str, after: str) -> bool:
    """Mark `before` and `after` around the calls of `owner.name` (False: there is no such function to wrap)."""
    original = getattr(owner, name, None)
    if original is None:
        return False

    @functools.wraps(original)
    def timed(*args, **kwargs):
        marks.mark(before)
        result = original(*args, **kwargs)
        marks.mark(after)
        return result

    setattr(owner, name, timed)
    return True


def stage_callbacks(marks: Marks, on_trained=None):
    """(first, last) callbacks: the round's training ends at the first's epoch end (then `on_trained(trainer)`,
    if given), the round's end at the last's."""
    from lightning.pytorch import Callback

    class First(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            marks.mark("round_zero")  # from setup's end: round 0's metrics and files, the model, the loader

        def on_train_epoch_end(self, trainer, pl_module):
            marks.mark("train")
            if on_trained is not None:
                on_trained(trainer)

    class Last(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            marks.mark("round_end")  # the re-imputation, the round's metrics and files

    return First(), Last()


def instrument(marks: Marks) -> bool:
    """Mark the collection's setup and the round's re-imputation; whether the latter was found to time."""
    from miri_lightning.callbacks import rounds
    from miri_lightning.data.datamodule import MaskedImageDataModule

    # Wrapped before anything is built, so that every path to them is timed. The collection's setup counts
    # from the first of the two calls (prepare_data runs on one process of a node, first, and may take over
    # work); setup() returns at once when called again: its first call is the one that counts.
    time_calls(MaskedImageDataModule, "prepare_data", marks, "built", "prepared")
    time_calls(MaskedImageDataModule, "setup", marks, "built", "setup")
    # The round's end looks `reimpute` up in its module at every call, so wrapping the module's name times it.
    return time_calls(rounds, "reimpute", marks, "impute_start", "impute")


def worker(report_dir: Path, overrides: list[str]) -> None:
    """Train as train.py does with `overrides`; write this rank's stages to report_dir/rank<r>.json."""
    marks = Marks()
    marks.mark("start")
    # Imported here, not at the top: the parent process needs none of them.
    import torch
    from miri_lightning.cli import build_cli
    from miri_lightning.errors import MIRIError
    from miri_lightning.runs import QUIET

    timed_impute = instrument(marks)

    def report(trainer) -> None:
        marks.mark("end")
        store = getattr(trainer.datamodule, "store", None)  # set when the state is memory-mapped
        figures = {"rank": trainer.global_rank, "images": len(trainer.datamodule.masks),
                   "state": "memory" if store is None else "memmap", "threads": torch.get_num_threads(),
                   "impute_timed": timed_impute, **stages(marks)}
        (report_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(figures))

    def stop(trainer) -> None:  # --skip-impute: every rank reports, waits for the others and leaves
        report(trainer)
        trainer.strategy.barrier()
        os._exit(0)

    # sys.argv (this worker's command line) must stay: Lightning's DDP launcher starts the other ranks with it.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:  # as train.py: a bad setting or bad data is one line, not a traceback
        cli = build_cli([*QUIET, "--trainer.default_root_dir", str(report_dir / "run"), *overrides])
        first, last = stage_callbacks(marks, stop if os.environ.get(SKIP_IMPUTE) else None)
        trainer = cli.trainer
        # Lightning keeps this order, moving only the checkpoint callbacks to the end: MIRIRounds is in between.
        trainer.callbacks = [first, *trainer.callbacks, last]
        trainer.fit(cli.model, datamodule=cli.datamodule)
    except MIRIError as err:
        sys.exit(f"error: {err}")
    report(trainer)


# (stage, the mark it starts from): consecutive, except the re-imputation, which lies inside the round's end.
STAGES = (("prepared", "built"), ("setup", "built"), ("round_zero", "setup"), ("train", "round_zero"),
          ("impute", "impute_start"), ("round_end", "train"), ("end", "round_end"))


def stages(marks: Marks) -> dict:
    """Per stage, the peak resident GB at its end and its seconds (None for a stage that was not reached)."""
    peak, seconds = {"before_setup": round(marks["built"][1], 3) if "built" in marks else None}, {}
    private = {"before_setup": round(marks["built"][3], 3) if "built" in marks else None}
    for name, start in STAGES:
        done = name in marks and start in marks
        peak[name] = round(marks[name][1], 3) if name in marks else None
        private[name] = round(marks[name][3], 3) if name in marks else None
        # Microseconds: a tiny collection's setup takes a millisecond or less.
        seconds[name] = round(marks[name][0] - marks[start][0], 6) if done else None
    seconds["total"] = round(marks["end"][0] - marks["start"][0], 6)
    rss = {kind: round(gb, 3) for kind, gb in marks["setup"][2].items()} if "setup" in marks else {}
    return {"peak_rss_gb": peak, "peak_private_gb": private, "seconds": seconds, "rss_after_setup_gb": rss}


# -- the runs (parent mode) -----------------------------------------------------------------------


def recipe(args, data: Path, processes: int) -> list[str]:
    """train.py overrides of one run: issue 17's setting, one short round, this many CPU processes."""
    # num_images given: jsonargparse would otherwise keep the default source's (Shapes, 2,000 images).
    source = {"class_path": "miri_lightning.data.sources.NpzImages", "init_args": {"path": str(data), "num_images": None}}
    mask = {"class_path": "miri_lightning.data.masks.MCAR",
            "init_args": {"missing_rate": 0.6, "per_channel": True, "seed": 0}}
    ddp = ["--trainer.strategy", "ddp"] if processes > 1 else []  # on the CPU: gloo, as tests/test_distributed.py
    return ["--seed_everything", "0", "--data.source", json.dumps(source), "--data.mask", json.dumps(mask),
            "--data.fill.kind", "interpolation", "--data.fill.sigma", "0.4", "--data.state", args.state,
            "--data.batch_size", str(args.batch_size), *TINY_NET,
            # The mask-information classifier would train for longer than the round: off.
            "--rounds.num_rounds", "1", "--rounds.steps", str(args.steps), "--rounds.mi_steps", "0",
            "--rounds.fid_images", "0", "--rounds.mi_seeds", "1", "--rounds.metrics_max_images", str(METRICS_IMAGES),
            "--rounds.grid_images", "4", "--trainer.accelerator", "cpu", "--trainer.devices", str(processes),
            *ddp, *args.extra]


def run(args, data: Path, processes: int) -> dict:
    """One run in a child process of this script: its seconds and its ranks' reports, rank 0 first."""
    report_dir = args.workdir / f"run_{processes}p"
    shutil.rmtree(report_dir, ignore_errors=True)  # a report left by an earlier run must not be read as this one's
    report_dir.mkdir()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(report_dir), *recipe(args, data, processes)]
    start = time.perf_counter()
    env = {**os.environ, **({SKIP_IMPUTE: "1"} if args.skip_impute else {})}  # the DDP ranks inherit it
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"error: the {processes}-process run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    reports = [json.loads(p.read_text()) for p in report_dir.glob("rank*.json")]
    if len(reports) != processes:
        sys.exit(f"error: the {processes}-process run reported {len(reports)} ranks:\n{done.stderr[-4000:]}")
    if not args.keep_runs:
        shutil.rmtree(report_dir)  # memory-mapped state files are several times the collection's size
    # The child's whole life: start-up, the DDP launch, the collection's setup and the round.
    return {"process_seconds": round(seconds, 3), "ranks": sorted(reports, key=lambda r: r["rank"])}


def machine() -> dict:
    return {"memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 2),
            "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, required=True, help="images in the synthetic collection")
    p.add_argument("--size", type=int, required=True, help="image side in pixels")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--steps", type=int, default=5, help="optimiser steps of the round's training")
    p.add_argument("--batch-size", type=int, default=64, help="data.batch_size (per process)")
    p.add_argument("--state", choices=("memory", "memmap", "auto"), default="auto", help="data.state")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts, one run each")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for the collection (kept and reused) and the runs (default: a temporary one)")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's folder (state files, checkpoints)")
    p.add_argument("--skip-impute", action="store_true",
                   help="stop each run after its training steps, before the round's re-imputation of every image")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("extra", nargs="*", help="more train.py overrides, after --")
    args = p.parse_args()
    for name in ("images", "size", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 2 <= args.batch_size <= args.images:
        p.error(f"--batch-size must be between 2 and --images ({args.images}), got {args.batch_size}")
    if min(args.processes) < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    for name in ("workdir", "out"):
        path = getattr(args, name)
        if path is not None and not path.resolve().parent.is_dir():
            p.error(f"--{name} {path}: its folder {path.resolve().parent} does not exist")
    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        p.error(f"--workdir {args.workdir} is a file, not a folder")
    return args


def bench(args) -> dict:
    args.workdir.mkdir(exist_ok=True)
    start = time.perf_counter()
    data = collection(args.workdir, args.images, args.size, args.channels)
    written = time.perf_counter() - start
    runs = {str(p): run(args, data, p) for p in args.processes}
    arguments = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"arguments": arguments, "machine": machine(),
            "collection": {"path": str(data), "bytes": data.stat().st_size, "seconds": round(written, 3)},
            "imputed_images": 0 if args.skip_impute else args.images,  # a round re-imputes the whole collection
            "runs": runs}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # a child run of this script, or a DDP rank Lightning started from it
        worker(Path(sys.argv[2]), sys.argv[3:])
        return
    args = parse_args()
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
            args.workdir = Path(tmp)
            result = bench(args)
    else:
        result = bench(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
