"""Run outputs a person reads: the metrics JSONL, TensorBoard events, the progress bar, the plots.

Everything here runs on rank 0 only and at log intervals only, never in the per-step hot path.
The JSONL file is the source of truth (one JSON object per line, ``"kind": "train" | "eval" | ...``);
the loss-curve and FID-vs-steps plots are drawn from it, so they also cover resumed runs. TensorBoard and
wandb (``log.wandb``, :mod:`~fasterdit.train.wandb_log`) get the same records' finite numbers, named
``kind/key``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fasterdit.train.wandb_log import WandbRun

__all__ = ["Console", "MetricsLogger", "Progress", "plot_eval_curve", "plot_loss_curve", "read_metrics"]


class MetricsLogger:
    """Append-only JSONL metrics plus optional TensorBoard and wandb scalars.

    ``wandb_config``: the run config to give wandb, which turns wandb logging on (None: off)."""

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        enabled: bool = True,
        wandb_config: dict[str, Any] | None = None,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb: WandbRun | None = None
        if not enabled:
            return
        if wandb_config is not None:
            self._wandb = WandbRun(Path(run_dir), wandb_config)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run
        if tensorboard:
            try:  # lazy: tensorboard is an optional extra ("fasterdit[tensorboard]")
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # not installed: the JSONL log is enough
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop records with step > ``step`` (written after the checkpoint a resumed run restarts from)."""
        if not self.enabled or not self.path.exists():
            return
        self._file.close()
        keep = [r for r in _iter_lines(self.path) if int(r.get("step", 0)) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.path)
        self._file = open(self.path, "a")  # noqa: SIM115

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(rec, default=_default) + "\n")
        self._file.flush()
        scalars = {
            f"{kind}/{key}": val
            for key, val in values.items()
            if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val)
        }
        if self._tb is not None:
            for name, val in scalars.items():
                self._tb.add_scalar(name, val, step)
        if self._wandb is not None and scalars:
            self._wandb.log(int(step), scalars)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.close()


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _iter_lines(path: Path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: skip it


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (optionally of one kind), in file order."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in _iter_lines(path) if kind is None or r.get("kind") == kind]


class Progress:
    """A tqdm bar over optimizer steps (step, loss, samples/s; tqdm supplies the ETA)."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self.bar = None
        if enabled:
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                smoothing=0.1,
                desc="train",
            )

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Console:
    """Rank 0's messages to the person: through the progress bar while one is shown (so the bar stays
    intact), else printed. The other ranks say nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress: Progress | None = None  # the bar, while the loop is training

    def say(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.write(msg)
        else:
            print(msg, flush=True)


def plot_loss_curve(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """loss.png: training loss (and its named terms) vs step, from metrics.jsonl."""
    recs = read_metrics(run_dir, "train")
    if not recs:
        return None
    import matplotlib  # lazy: plotting is the only user; a run that never plots never imports it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out) if out else Path(run_dir) / "loss.png"
    steps = [r["step"] for r in recs]
    keys = [k for k in recs[-1] if k.startswith("loss") and isinstance(recs[-1][k], (int, float))]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key in sorted(keys, key=lambda k: (k != "loss", k)):
        ys = [r.get(key, float("nan")) for r in recs]
        ax.plot(steps, ys, label=key, lw=1.6 if key == "loss" else 1.0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean over ranks and log interval)")
    if all(r.get("loss", 1) > 0 for r in recs):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"training loss — {Path(run_dir).name}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_eval_curve(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """fid.png: FID (and class accuracy when logged) of the EMA weights vs step, from metrics.jsonl."""
    recs = [r for r in read_metrics(run_dir, "eval") if "fid" in r]
    if not recs:
        return None
    import matplotlib  # lazy: plotting is the only user; a run that never plots never imports it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out) if out else Path(run_dir) / "fid.png"
    steps = [r["step"] for r in recs]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(steps, [r["fid"] for r in recs], "o-", label="FID")
    ax.set_xlabel("optimizer step")
    n = recs[-1].get("num_samples")
    ax.set_ylabel(f"FID (EMA, {n} samples)" if n else "FID (EMA)")
    ax.grid(alpha=0.3)
    if any("class_accuracy" in r for r in recs):
        ax2 = ax.twinx()
        ax2.plot(
            steps,
            [r.get("class_accuracy", float("nan")) for r in recs],
            "s--",
            color="C1",
            label="class accuracy",
        )
        ax2.set_ylabel("class accuracy")
        ax2.set_ylim(0, 1)
    ax.set_title(f"sample quality vs training — {Path(run_dir).name}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
