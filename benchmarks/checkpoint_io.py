"""Checkpoint write time per GB: the real writer (SHA-256 taken while writing) against the old
write-then-read, and what fits in torchrun's 30 s between SIGTERM and SIGKILL.

A stop checkpoint (SIGTERM) must be written, fsynced and committed before the SIGKILL that follows; a
DiT-XL/2 training state is 10.8 GB (weights, EMA weights, AdamW's two moments: 4 × 675M fp32 values).
This writes a synthetic state of the same proportions, scaled to ``--size-gb``, three ways, interleaved:

* ``new``: ``fasterdit.run.checkpoint.save_checkpoint``, the real writer (each file's SHA-256 taken in a
  second thread while the file is written and fsynced);
* ``old``: what it did before (issue #30): ``safetensors.save_file`` and ``torch.save``, fsync, then read
  every file back for its SHA-256;
* ``floor``: the same writes and fsyncs with no checksum at all (what hashing can at best cost nothing over).

    python benchmarks/checkpoint_io.py                      # ~1 GB, 5 rounds, into a temp dir (~1 min)
    python benchmarks/checkpoint_io.py --dir /shared/tmp    # measure your cluster's filesystem instead
    python benchmarks/checkpoint_io.py --quick              # smoke run (20 MB, 1 round)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

GB = 1e9  # decimal: a DiT-XL/2 state is 10.8e9 bytes
XL2_PARAMS = 675_129_632  # DiT-XL/2 with learned sigma (the model of the paper configs)
XL2_BYTES = 4 * XL2_PARAMS * 4  # weights, EMA, exp_avg, exp_avg_sq; fp32
GRACE = (30, 60, 120)  # seconds between SIGTERM and SIGKILL: torchrun's default, and two raised ones
NETWORK_RATES = (0.25, 0.5, 1.0, 2.0)  # GB/s, assumed for the "what fits" arithmetic, not measured
VARIANTS = ("new", "old", "floor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=1.0, help="size of the synthetic training state")
    p.add_argument("--rounds", type=int, default=5, help="each variant once per round, order rotated")
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir under /tmp)")
    p.add_argument("--out", default=None, help="report folder (default docs/benchmarks)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.size_gb, args.rounds = 0.02, 1
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="fasterdit-ckio-report-") if args.quick else str(common.DOCS)
    return args


def synthetic_state(size_gb: float) -> dict[str, Any]:
    """Weights, EMA weights and an AdamW state of ``size_gb`` in all, in DiT-XL/2's proportions and in
    tensors of its block sizes (1152 × 4608 fp32, 21 MB each), with random values."""
    import torch

    per_part = int(size_gb * GB / 4 / 4)  # values in each of the four parts
    shape = (1152, 4608)
    count = max(1, per_part // (shape[0] * shape[1]))
    g = torch.Generator().manual_seed(0)
    rows = max(1, per_part // count // shape[1])

    def part() -> dict[str, torch.Tensor]:
        return {f"blocks.{i}.mlp.fc1.weight": torch.randn(rows, shape[1], generator=g) for i in range(count)}

    model, ema = part(), part()
    moments = {i: {"step": torch.tensor(1000.0), "exp_avg": v, "exp_avg_sq": v.abs()} for i, v in
               enumerate(part().values())}  # fmt: skip
    optimizer = {"state": moments, "param_groups": [{"lr": 1e-4, "params": list(moments)}]}
    train_state = {"optimizer": optimizer, "step": 1000, "images_seen": 256_000}
    return {"model": model, "ema": ema, "train": train_state}


def state_bytes(state: dict[str, Any]) -> int:
    """Bytes of the tensors of the four parts (what the files hold, less headers)."""
    parts = [*state["model"].values(), *state["ema"].values()]
    moments = state["train"]["optimizer"]["state"].values()
    parts += [t for m in moments for t in (m["exp_avg"], m["exp_avg_sq"])]
    return sum(t.numel() * t.element_size() for t in parts)


def write_new(root: Path, state: dict[str, Any]) -> None:
    from fasterdit.run.checkpoint import save_checkpoint

    meta = {"config": {}, "recipe": {}, "model": {"name": "synthetic"}}
    save_checkpoint(root, 1, model_state=state["model"], ema_state=state["ema"],
                    train_state=state["train"], meta=meta, keep_last=None)  # fmt: skip


def _fsynced(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_old(root: Path, state: dict[str, Any], reread: bool) -> None:
    """The writer before issue #30 (``reread``), or its writes and fsyncs alone (the floor)."""
    import torch
    from safetensors.torch import save_file

    tmp = root / "old"
    tmp.mkdir(parents=True)
    for name, part in (("model.safetensors", state["model"]), ("ema.safetensors", state["ema"])):
        save_file(part, str(tmp / name))
        _fsynced(tmp / name)
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state["train"], f)
        f.flush()
        os.fsync(f.fileno())
    if reread:
        for p in sorted(tmp.iterdir()):
            with open(p, "rb") as f:
                hashlib.file_digest(f, "sha256")
    _fsynced(tmp)


def timed(variant: str, root: Path, state: dict[str, Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every thread) for one write of ``state`` into the fresh folder
    ``root`` (removed afterwards). The CPU time says what the checksum costs where no core is idle."""
    root.mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    if variant == "new":
        write_new(root, state)
    else:
        write_old(root, state, reread=variant == "old")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    shutil.rmtree(root)
    return seconds, cpu


def hash_rate() -> float:
    """SHA-256 of 256 MB in memory, GB/s (what a second read-through adds at best, per core)."""
    blob = os.urandom(256 * 2**20)
    t0 = time.perf_counter()
    hashlib.sha256(blob).hexdigest()
    return len(blob) / GB / (time.perf_counter() - t0)


def measure(args: argparse.Namespace, where: Path) -> dict[str, Any]:
    state = synthetic_state(args.size_gb)
    nbytes = state_bytes(state)
    for v in VARIANTS:  # an untimed round: imports, first calls, the kernel reclaiming memory for the cache
        timed(v, where / f"warm-{v}", state)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
            wall, used = timed(v, where / f"{v}-{r}", state)
            times[v].append(wall)
            cpu[v].append(used)
            common.log(f"round {r + 1}: {v} {wall:.2f} s, CPU {used:.2f} s ({nbytes / GB:.2f} GB)")
    median = {v: statistics.median(ts) for v, ts in times.items()}
    return {
        "bytes": nbytes,
        "seconds": times,
        "cpu_seconds": cpu,
        "median_s": median,
        "median_cpu_s": {v: statistics.median(ts) for v, ts in cpu.items()},
        "s_per_gb": {v: median[v] / (nbytes / GB) for v in VARIANTS},
        "sha256_gb_s": hash_rate(),
    }


def report(args: argparse.Namespace, res: dict[str, Any], facts: dict[str, Any], where: str) -> str:
    spg, gb, cpu, wall = res["s_per_gb"], res["bytes"] / GB, res["median_cpu_s"], res["median_s"]
    rows = [[v, gb, wall[v], spg[v], 1 / spg[v], XL2_BYTES / GB * spg[v], cpu[v]] for v in VARIANTS]
    rounds = {v: zip(res["seconds"][v], res["cpu_seconds"][v]) for v in VARIANTS}
    fits = [[f"measured here ({where})", 1 / spg["new"], *[g / spg["new"] for g in GRACE]]]
    fits += [[f"{r:g} GB/s (assumed)", r, *[g * r for g in GRACE]] for r in NETWORK_RATES]
    lines = common.report_header("Checkpoint write time per GB", __file__, facts)
    lines += [
        "## Result", "",
        f"A synthetic training state of {gb:.2f} GB (weights, EMA weights, AdamW's two moments, in "
        f"DiT-XL/2's proportions and block sizes), written into `{where}`; median of {args.rounds} "
        "round(s), the variants interleaved. GB = 10⁹ bytes. `XL/2 state, s` scales the rate to DiT-XL/2's "
        "10.8 GB; `CPU s` is the CPU time of all the process's threads.", "",
        common.md_table(["writer", "GB", "median s", "s/GB", "GB/s", "XL/2 state, s", "CPU s"], rows), "",
        f"* `new` / `old`: {spg['new'] / spg['old']:.2f}× the wall time, {cpu['new'] / cpu['old']:.2f}× the "
        f"CPU time. `old` − `floor` = {wall['old'] - wall['floor']:.2f} s is what the read-back checksum "
        f"cost; `new` − `floor` = {wall['new'] - wall['floor']:.2f} s what the checksum taken while writing "
        "costs. It runs in a second thread, so it is hidden behind "
        "the write and the fsync only where a core is idle; where every core is busy (CPU s ≈ wall s) it "
        f"adds its CPU time. SHA-256 alone runs at {res['sha256_gb_s']:.2f} GB/s on one core here.",
        f"* At the `new` rate a 30 s grace period holds {30 / spg['new']:.1f} GB; DiT-XL/2's 10.8 GB takes "
        f"{XL2_BYTES / GB * spg['new']:.0f} s.", "",
        "## What fits between SIGTERM and SIGKILL", "",
        "GB of training state written, fsynced and committed within the grace period, at the measured rate "
        "and, for a network filesystem, at assumed rates (arithmetic, not measured: run this script with "
        "`--dir` on your filesystem for its rate). Leave a margin for the current step to finish first.", "",
        common.md_table(["filesystem", "GB/s", *[f"GB in {g} s" for g in GRACE]], fits), "",
        "All rounds, wall s (CPU s): "
        + "; ".join(f"{v}: " + ", ".join(f"{t:.2f} ({c:.2f})" for t, c in rounds[v]) for v in VARIANTS) + ".",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_argv(argv)
    facts = common.machine_facts()
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    where = Path(tempfile.mkdtemp(prefix="fasterdit-ckio-", dir=base))
    try:
        res = measure(args, where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    res["dir"] = str(base)
    out = Path(args.out)
    common.write_json(out / "checkpoint_io.json", {"facts": facts, "args": vars(args), **res})
    (out / "checkpoint_io.md").write_text(report(args, res, facts, str(base)))
    common.log(f"wrote {out / 'checkpoint_io.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
