"""The batch loader alone at ImageNet size: samples/s per core from memory-mapped latent shards, cold and
warm, against what a DiT-XL/2 job on 8 GPUs consumes; and the stall a step sees with ``data.prefetch``
off and on.

The set is 1,281,167 rows (ImageNet-1k's training images) of 4×32×32 latents, stored as ``prepare
--storage-dtype fp16`` writes them: shards of 16,384 rows (``prepare``'s ~256 MB default), each with
``mean`` and ``logvar`` (8 KB each per row), ``label``, ``index`` and ``flipped``. The values are a pool
of 4,096 random rows repeated (what the rows hold does not change how they are read). A row costs two
random 8 KB reads and a label read; the reader is the trainer's own, ``fasterdit.data.source.open_source``
with its ``get_batch`` (gather from the memory maps, then the latent draw ``mean + exp(logvar/2)·ε``).

* cold: random rows of all 1.28M after the shards' pages are dropped from the page cache
  (``posix_fadvise(DONTNEED)``, checked with ``fincore``), in windows of 5 s, with the part of the set
  cached at the end of each (the kernel reads ahead around every row it faults in); on a VM the host may
  still cache the disk image, so "cold" is the guest's cold;
* warm: after that, over the whole set where the cold run left it cached (else over the first 8 shards,
  read once first);
* stall: this rank's batch of 32 (batch 256 on 8 GPUs) read for every step of a simulated 60 ms step
  (a sleep: the host waits for the GPU), cold, through ``fasterdit.train.prefetch.RankBatches`` with
  ``data.prefetch`` 0 and 1: the time a step waits for its batch.

    python benchmarks/loader_io.py               # writes ~21 GB to /tmp/fasterdit-loader-set, then measures
    python benchmarks/loader_io.py --keep        # keep the set for a rerun (default: removed at the end)
    python benchmarks/loader_io.py --quick       # smoke run: 20,000 rows, short measurements
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

IMAGENET_ROWS = 1_281_167
C, R = 4, 32
SCALING = 0.18215
POOL = 4096  # distinct rows, repeated through the set
WARM_SHARDS = 8
XL2_PER_GPU = 530.0  # samples/s one H100 consumes: DiT-XL/2, batch 32 per GPU, ~60 ms per step
GPUS = 8
STEP_S = 0.060  # the simulated training step of the stall measurement
RANK_BATCH = 32  # batch 256 over 8 GPUs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=IMAGENET_ROWS)
    p.add_argument("--dir", default=None, help="where the set is (default /tmp/fasterdit-loader-set)")
    p.add_argument("--batch", type=int, default=256, help="batch of the samples/s measurements")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the warm measurement")
    p.add_argument("--window", type=float, default=5.0, help="length of each cold window")
    p.add_argument("--cold-seconds", type=float, default=60.0, help="longest cold run (ends when cached)")
    p.add_argument("--steps", type=int, default=60, help="simulated steps of each stall measurement")
    p.add_argument("--keep", action="store_true", help="keep the set (default: removed at the end)")
    p.add_argument("--out", default=None, help="report folder (default docs/benchmarks)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.seconds, args.window, args.cold_seconds, args.steps = 20_000, 1.0, 1.0, 2.0, 8
    if args.dir is None:
        quick = tempfile.mkdtemp(prefix="fasterdit-loader-quick-") if args.quick else None
        args.dir = quick or str(Path(tempfile.gettempdir()) / "fasterdit-loader-set")
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="fasterdit-loader-report-") if args.quick else str(common.DOCS)
    return args


# ----------------------------------------------------------------------------------------------------
# the set
# ----------------------------------------------------------------------------------------------------


def shard_rows() -> int:
    """Rows per shard as ``prepare`` picks them for fp16 latents (about 256 MB a shard)."""
    from fasterdit.data.prepare.plan import SHARD_TARGET_BYTES

    item_bytes = 2 * C * R * R * 2  # mean and logvar, fp16
    return max(16, min(16384, SHARD_TARGET_BYTES // item_bytes))


def drop_cache(files: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages only: the files are fsynced)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(files: list[Path]) -> float | None:
    """Fraction of the files' bytes in the page cache, by ``fincore`` (None where it is missing)."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *map(str, files)],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    res, size = sum(int(v) for v in out[0::2]), sum(int(v) for v in out[1::2])
    return res / size if size else None


def read_ahead_kb(folder: Path) -> str:
    """The read-ahead of the block device under ``folder`` (``/sys/block/*/queue/read_ahead_kb``)."""
    dev = os.stat(folder).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for queue in (sys_dev / "queue", sys_dev / ".." / "queue"):
        if (queue / "read_ahead_kb").is_file():
            return (queue / "read_ahead_kb").read_text().strip()
    return "unknown"


def write_set(folder: Path, rows: int) -> list[Path]:
    """The prepared set (reused when ``folder`` already holds one of ``rows`` rows); its shard files.

    Each shard is fsynced and dropped from the page cache as it is written, so writing 21 GB does not
    push the rest of the machine out of the cache."""
    from safetensors.numpy import save_file

    manifest_path = folder / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("num_items") == rows:
        return sorted(folder.glob("shard-*.safetensors"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    mean_pool = rng.normal(0, 5, (POOL, C, R, R)).astype(np.float16)
    logvar_pool = rng.uniform(-6, -2, (POOL, C, R, R)).astype(np.float16)
    per, shards, files = shard_rows(), [], []
    for k, start in enumerate(range(0, rows, per)):
        n = min(per, rows - start)
        pick = np.arange(start, start + n) % POOL
        name = f"shard-{k:06d}-r000.safetensors"
        index = np.arange(start, start + n, dtype=np.int64)
        tensors = {"mean": mean_pool[pick], "logvar": logvar_pool[pick], "label": index % 1000,
                   "index": index, "flipped": np.zeros(n, np.uint8)}  # fmt: skip
        save_file(tensors, str(folder / name))
        fd = os.open(folder / name, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        drop_cache([folder / name])
        shards.append({"file": name, "num_items": n, "rank": 0})
        files.append(folder / name)
        if k % 10 == 0:
            common.log(f"wrote shard {k} ({start + n:,} of {rows:,} rows)")
    mean64 = mean_pool.astype(np.float64)
    var = np.exp(logvar_pool.astype(np.float64)).mean(axis=(0, 2, 3))
    std = SCALING * np.sqrt(mean64.var(axis=(0, 2, 3)) + var)
    manifest = {
        "format_version": 1, "kind": "latent", "vae": None, "scaling_factor": SCALING, "shift_factor": 0.0,
        "image_resolution": 8 * R, "resolution": R, "channels": C, "num_classes": 1000,
        "class_to_idx": {f"class{i:04d}": i for i in range(1000)}, "num_items": rows, "shards": shards,
        "channel_mean": [float(v) for v in SCALING * mean64.mean(axis=(0, 2, 3))],
        "channel_std": [float(v) for v in std], "flip": "none", "storage_dtype": "fp16",
        "synthetic": "benchmarks/loader_io.py",
    }  # fmt: skip
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return files


# ----------------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------------


def read_rate(source: Any, high: int, batch: int, seconds: float, seed: int) -> dict[str, Any]:
    """``get_batch`` of random rows below ``high`` for ``seconds``, in this thread (torch: one thread):
    samples/s of the time spent reading, and the median time of one batch."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    took: list[float] = []
    c0, t_end = time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        idx = torch.from_numpy(rng.integers(0, high, batch))
        t0 = time.perf_counter()
        source.get_batch(idx, g)
        took.append(time.perf_counter() - t0)
    total = sum(took)
    return {"samples_per_s": batch * len(took) / total, "ms_per_batch": 1000 * float(np.median(took)),
            "batches": len(took), "cpu_fraction": (time.process_time() - c0) / total}  # fmt: skip


def cold_curve(source: Any, files: list[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Random batches over the whole set from a dropped cache, in windows of ``args.window`` s until
    ``args.cold_seconds``: samples/s per window and the part of the set cached at its end. The kernel's
    read-ahead reads around every row it faults in, so the cache fills far faster than rows are used."""
    drop_cache(files)
    windows, t_start = [], time.perf_counter()
    while time.perf_counter() - t_start < args.cold_seconds:
        r = read_rate(source, len(source), args.batch, args.window, seed=10 + len(windows))
        windows.append({"t_end_s": time.perf_counter() - t_start, **r, "cached": cached_fraction(files)})
        common.log(f"cold window {len(windows)}: {windows[-1]}")
        if (windows[-1]["cached"] or 0.0) > 0.99:
            break
    return windows


def stalls(source: Any, files: list[Path], depth: int, steps: int, seed: int, cold: bool) -> dict[str, Any]:
    """Rank 0 of 8 reads its 32 rows of each global batch of 256 through the trainer's reader (from a
    dropped cache when ``cold``) while a 60 ms step runs (a sleep); the time each step waits for its batch,
    the first step left out (nothing can be ahead of it)."""
    import torch

    from fasterdit.train.data_order import IndexStream, rank_slice
    from fasterdit.train.prefetch import RankBatches

    B = RANK_BATCH * GPUS
    stream = IndexStream(len(source), seed)
    batches = RankBatches(source, stream, seed=seed, rank=0, batch_size=B, share=rank_slice(B, GPUS, 0),
                          device=torch.device("cpu"), depth=depth)  # fmt: skip
    if cold:
        drop_cache(files)
    waits = []
    try:
        for step in range(steps):
            t0 = time.perf_counter()
            batches.get(step, step * B)
            waits.append(time.perf_counter() - t0)
            time.sleep(STEP_S)
    finally:
        batches.close()
    w = np.array(waits[1:]) * 1000
    return {"prefetch": depth, "cache": "cold" if cold else "warm", "steps": steps - 1,
            "median_wait_ms": float(np.median(w)), "mean_wait_ms": float(w.mean()),
            "p90_wait_ms": float(np.percentile(w, 90)),
            "stalled_fraction": float(w.sum() / (w.sum() + 1000 * STEP_S * len(w)))}  # fmt: skip


def measure(args: argparse.Namespace, files: list[Path]) -> dict[str, Any]:
    """The stalls first (each from a dropped cache, its own rows), then the cold curve, then warm: over
    the whole set where the curve left it cached, else over the first shards after reading them."""
    import torch

    from fasterdit.data.source import open_source

    torch.set_num_threads(1)
    source = open_source(args.dir)
    res: dict[str, Any] = {"rows": len(source), "shards": len(files), "shard_rows": shard_rows(),
                           "bytes": sum(f.stat().st_size for f in files)}  # fmt: skip
    res["stalls"] = [stalls(source, files, depth, args.steps, 3 + depth, cold=True) for depth in (0, 1)]
    common.log(f"stalls: {res['stalls']}")
    res["cold"] = cold_curve(source, files, args)
    res["warm_rows"] = len(source)
    if (res["cold"][-1]["cached"] or 0.0) < 0.95:
        res["warm_rows"] = min(len(source), WARM_SHARDS * shard_rows())
        for f in files[:WARM_SHARDS]:  # read once: a warm subset in the page cache
            with open(f, "rb") as fh:
                while fh.read(64 * 2**20):
                    pass
    res["warm"] = read_rate(source, res["warm_rows"], args.batch, args.seconds, seed=5)
    common.log(f"warm: {res['warm']}")
    if res["warm_rows"] == len(source):  # the whole set cached: the stalls of a warm cache
        res["stalls"] += [stalls(source, files, depth, args.steps, 6 + depth, cold=False) for depth in (0, 1)]
    drop_cache(files)
    return res


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------


def report(args: argparse.Namespace, res: dict[str, Any], facts: dict[str, Any], write_s: float | None
           ) -> str:  # fmt: skip
    node = XL2_PER_GPU * GPUS
    cold, warm = res["cold"], res["warm"]
    full = next((w["t_end_s"] for w in cold if (w["cached"] or 0.0) > 0.95), None)
    rows = [[f"cold, {w['t_end_s'] - args.window:.0f}–{w['t_end_s']:.0f} s", w["samples_per_s"],
             w["ms_per_batch"], w["samples_per_s"] / XL2_PER_GPU, w["cached"]] for w in cold]  # fmt: skip
    rows.append([f"warm, {res['warm_rows']:,} rows cached", warm["samples_per_s"], warm["ms_per_batch"],
                 warm["samples_per_s"] / XL2_PER_GPU, None])  # fmt: skip
    stall_rows = [[s["cache"], s["prefetch"], s["steps"], s["median_wait_ms"], s["p90_wait_ms"],
                   s["mean_wait_ms"], s["stalled_fraction"]] for s in res["stalls"]]  # fmt: skip
    lines = common.report_header("Batch loading at ImageNet size", __file__, facts)
    lines += [
        "## The set", "",
        f"{res['rows']:,} rows of {C}×{R}×{R} fp16 latents in {res['shards']} shards of "
        f"{res['shard_rows']:,} rows, {res['bytes'] / 1e9:.1f} GB, under `{args.dir}`"
        + (f" (written in {write_s:.0f} s)" if write_s is not None else " (reused)")
        + f"; the disk's read-ahead is `read_ahead_kb` {res['read_ahead_kb']}. The page cache is dropped "
        "(`posix_fadvise(DONTNEED)` on every shard, checked with `fincore`) before each cold run; on this VM "
        "the host may still cache the disk image, so cold here is the guest's cold, faster than a first "
        "read from a disk or a network filesystem.", "",
        "## Samples/s per core", "",
        f"`get_batch` of {args.batch} random rows of the whole set (the trainer's reader: a gather from the "
        "memory maps, then the latent draw), in one thread with one torch thread, in windows of "
        f"{args.window:g} s from a dropped cache, then warm. An 8-GPU DiT-XL/2 job consumes "
        f"{XL2_PER_GPU:g} samples/s per GPU ({node:g} per node); each rank reads its own share, with its "
        "own reading thread, into one shared page cache.", "",
        common.md_table(["run", "samples/s", "ms per batch", "× one GPU's need", "set cached at its end"],
                        rows), "",
        f"* Cold, the first window reads {cold[0]['samples_per_s']:.0f} samples/s on one core: each row "
        "faults in pages the kernel reads ahead around, so the cache fills faster than rows are used"
        + (f", and the whole set was cached after {full:.0f} s" if full is not None else "")
        + f". Warm: {warm['samples_per_s']:.0f} samples/s per core, "
        f"{warm['samples_per_s'] / XL2_PER_GPU:.0f}× what one GPU consumes.", "",
        "## What a step waits for its batch", "",
        f"Rank 0 of 8 reads its {RANK_BATCH} rows of each global batch of {RANK_BATCH * GPUS} through the "
        f"trainer's reader (`RankBatches`) while a {1000 * STEP_S:g} ms step runs (a sleep: the host waiting "
        "for the GPU): cold (the page cache dropped first; the second run may find more of the disk image "
        "in the host's cache than the first) and, where the whole set ended up cached, warm. Milliseconds "
        f"per step, over {res['stalls'][0]['steps']} steps after the first; each run draws its own rows.", "",
        common.md_table(["cache", "data.prefetch", "steps", "median wait", "p90 wait", "mean wait",
                         "time stalled"], stall_rows), "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_argv(argv)
    facts = common.machine_facts()
    folder = Path(args.dir)
    t0 = time.perf_counter()
    had = (folder / "manifest.json").is_file()
    try:
        files = write_set(folder, args.rows)
        write_s = None if had else time.perf_counter() - t0
        res = measure(args, files)
        res["read_ahead_kb"] = read_ahead_kb(folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    res["write_s"] = write_s
    out = Path(args.out)
    common.write_json(out / "loader_io.json", {"facts": facts, "args": vars(args), **res})
    (out / "loader_io.md").write_text(report(args, res, facts, write_s))
    common.log(f"wrote {out / 'loader_io.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
