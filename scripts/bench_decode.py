"""What the decode-once cache of a folder of JPEGs saves: time and memory of loading it three ways.

Writes `--images` JPEGs of CelebA's aligned size (178x218, built-in Shapes pictures scaled up) into a
temporary folder, then loads them as `CelebA(folder=..., image_size=--size)` in a fresh process each:
`uncached` (decoded into memory, `cache: false`), `first` (decoded into a new cache file) and `cached`
(the cache file mapped). Each process also reads every image once, a chunk at a time, as setup() does.
Prints one JSON line per way: seconds, and the process's peak resident memory and its anonymous
(private) and file-backed parts at the end, in GB.

    python scripts/bench_decode.py --images 10000 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from miri_lightning.data.sources import CelebA, Shapes
from miri_lightning.data.storage import chunk_rows

WIDTH, HEIGHT = 178, 218  # CelebA's aligned faces


def write_jpegs(folder: Path, count: int) -> None:
    shapes = Shapes(num_images=count, image_size=64, seed=0).load()
    for i in range(count):
        pixels = (shapes.floats(i, i + 1)[0] * 255).round().byte().permute(1, 2, 0).numpy()
        image = Image.fromarray(pixels).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:06d}.jpg", quality=90)


def memory_gb() -> dict:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = {key: int(fields[key].split()[0]) for key in ("VmHWM", "RssAnon", "RssFile")}
    return {"peak_resident_gb": kb["VmHWM"] / 1e6, "anonymous_gb": kb["RssAnon"] / 1e6,
            "file_backed_gb": kb["RssFile"] / 1e6}


def load(folder: Path, size: int, cache: bool) -> dict:
    start = time.perf_counter()
    loaded = CelebA(folder=folder, image_size=size, cache=cache).load()
    total = 0.0
    for rows in chunk_rows(loaded.shape):
        total += float(loaded.floats(rows.start, rows.stop).sum())
    return {"images": len(loaded), "seconds": round(time.perf_counter() - start, 2), "checksum": total,
            **{k: round(v, 3) for k, v in memory_gb().items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # folder, size, cache
    args = parser.parse_args()
    if args.child:
        folder, size, cache = args.child
        print(json.dumps(load(Path(folder), int(size), cache == "1")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "img_align_celeba"
        folder.mkdir()
        write_jpegs(folder, args.images)
        env = {**os.environ, "MIRI_CACHE_DIR": str(Path(tmp) / "cache")}
        for way, cache in (("uncached", "0"), ("first", "1"), ("cached", "1")):
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(args.size), cache],
                                 env=env, capture_output=True, text=True, check=True).stdout
            print(json.dumps({"way": way, **json.loads(out.splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
