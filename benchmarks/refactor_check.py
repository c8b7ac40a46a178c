"""Bit-identical check for a refactor: train 200 steps, then compare two runs' final weights.

Why: a refactor must not change a single draw or a single floating-point operation of training. Train
once with the old tree on PYTHONPATH and once with the new one, then compare the final checkpoint's
model and EMA safetensors with ``torch.equal``::

    PYTHONPATH=/old/src python benchmarks/refactor_check.py train /tmp/before
    PYTHONPATH=/new/src python benchmarks/refactor_check.py train /tmp/after
    python benchmarks/refactor_check.py compare /tmp/before /tmp/after [--report FILE.md]

``--report`` also writes what was compared and the verdict (for the record of a refactor's issue).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

OVERRIDES = (
    "data.source=digits",
    "model.name=DiT-Mi/2",
    "train.steps=200",
    "train.batch_size=16",
    "train.threads=1",
    "log.sample_every=0",
    "log.tensorboard=false",
    "log.progress=false",
)


def train(run_dir: Path) -> None:
    """Train the 200-step run into ``run_dir`` with whichever fasterdit PYTHONPATH resolves."""
    import fasterdit

    print(f"fasterdit from {fasterdit.__file__}")
    cmd = [sys.executable, "-m", "fasterdit.cli", "train", "--config", "demo", "--run-dir", str(run_dir)]
    cmd += [a for o in OVERRIDES for a in ("--set", o)] + ["--no-resume"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def final_checkpoint(run_dir: Path) -> Path:
    steps = sorted((run_dir / "checkpoints").glob("step-*"))
    if not steps:
        raise SystemExit(f"{run_dir}: no checkpoint")
    return steps[-1]


def compare(a: Path, b: Path, report: Path | None = None) -> int:
    """0 when the final model and EMA weights of both runs are bit-identical."""
    import torch
    from safetensors.torch import load_file

    lines: list[str] = []

    def say(text: str) -> None:
        print(text)
        lines.append(text)

    ca, cb = final_checkpoint(a), final_checkpoint(b)
    say(f"before: {ca}\nafter:  {cb}")
    if ca.name != cb.name:
        say(f"DIFFERENT final steps: {ca.name} vs {cb.name}")
        return 1
    bad = 0
    for part in ("model", "ema"):
        sa, sb = load_file(ca / f"{part}.safetensors"), load_file(cb / f"{part}.safetensors")
        if sa.keys() != sb.keys():
            say(f"{part}: DIFFERENT tensor names")
            bad += 1
            continue
        diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
        say(
            f"{part}: {len(sa)} tensors, {sum(v.numel() for v in sa.values())} values, "
            + ("all bit-identical" if not diff else f"{len(diff)} DIFFER: {diff[:5]}")
        )
        bad += bool(diff)
    say("IDENTICAL" if not bad else "NOT IDENTICAL")
    if report is not None:
        import time

        head = [
            "# Refactor check: 200 training steps before and after",
            "",
            f"`python benchmarks/refactor_check.py compare {a} {b}`, {time.strftime('%Y-%m-%d %H:%M %Z')}. "
            f"The run: `fasterdit train --config demo` with {', '.join(OVERRIDES)}.",
            "",
            "```",
        ]
        report.write_text("\n".join([*head, *lines, "```", ""]))
    return int(bool(bad))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train").add_argument("run_dir", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--report", type=Path, help="also write the comparison as Markdown")
    args = p.parse_args()
    if args.cmd == "train":
        train(args.run_dir)
        return 0
    return compare(args.before, args.after, args.report)


if __name__ == "__main__":
    sys.exit(main())
