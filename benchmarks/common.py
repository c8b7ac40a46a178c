"""Helpers shared by the benchmark scripts: machine facts, training runs through the real trainer,
FID evaluation through ``fasterdit.eval``, curve interpolation, and Markdown/plot output.

Why a shared module: every report must state the same machine facts and the exact command, and every
benchmark must measure the library's real code paths (the trainer's step, ``fasterdit.eval``'s FID),
not a private re-implementation, so that the numbers describe what a user of fasterdit gets.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def shown_path(path: str | Path) -> str:
    """A path as a report shows it: relative to the repository when inside it (reports are committed)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


DOCS = REPO / "docs" / "benchmarks"


# ----------------------------------------------------------------------------------------------------
# machine facts and the exact command
# ----------------------------------------------------------------------------------------------------


def loadavg() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages (NaN where /proc is missing)."""
    try:
        a, b, c = Path("/proc/loadavg").read_text().split()[:3]
        return float(a), float(b), float(c)
    except (OSError, ValueError):
        return (math.nan, math.nan, math.nan)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, threads, torch build, load at the start."""
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        "loadavg_start": loadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def facts_markdown(facts: dict[str, Any], load_end: tuple[float, float, float] | None = None) -> str:
    la = facts["loadavg_start"]
    lines = [
        f"* CPU: {facts['cpu']}, {facts['logical_cores']} logical cores, "
        f"torch threads {facts['torch_threads']}",
        f"* torch {facts['torch']} (CUDA: {facts['cuda']}), Python {facts['python']}, {facts['platform']}",
        f"* run at {facts['date']}; load average at start "
        f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min)",
    ]
    if load_end is not None:
        lines.append(f"* load average at the end {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}")
    return "\n".join(lines)


_ARGV: list[str] | None = None


def report_header(
    title: str, script: str | Path, facts: dict[str, Any], seconds: float | None = None
) -> list[str]:
    """The opening lines every report shares: title, the exact command, wall time, the machine."""
    command = ["Command (from the repository root):", "", "```bash", command_line(script), "```", ""]
    lines = [f"# {title}", "", *command]
    if seconds is not None:
        lines += [f"Total wall time {seconds:.0f} s.", ""]
    return [*lines, "## Machine", "", facts_markdown(facts, loadavg()), ""]


def set_argv(argv: list[str] | None) -> None:
    """Record the arguments a benchmark's ``main(argv)`` was called with (None: the process's own)."""
    global _ARGV
    _ARGV = None if argv is None else list(argv)


def command_line(script: str | Path | None = None) -> str:
    """The command that produced this run, as a user would type it from the repository root."""
    path = Path(script or sys.argv[0])
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(REPO)
    args = sys.argv[1:] if _ARGV is None else _ARGV
    return " ".join(["python", str(path), *(shlex.quote(a) for a in args)])


def setup_torch(threads: int | None = None) -> None:
    """All cores for torch (the benchmarks are meant to run alone on the machine)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------------
# training through the real trainer
# ----------------------------------------------------------------------------------------------------


def same_config(saved: Any, cfg: Any) -> bool:
    """Whether a run directory's saved config dict is ``cfg``, after filling defaults on both sides.

    A field added to ``RunConfig`` later (with a default) must not make every finished benchmark run look
    different and be retrained: the saved dict is parsed back through ``config_from_dict`` first.
    """
    from fasterdit.run.config import config_from_dict

    if not isinstance(saved, dict):
        return False
    try:
        return config_from_dict(saved).to_dict() == cfg.to_dict()
    except Exception:  # an old config that no longer parses is simply a different run
        return False


def run_config(
    *,
    recipe: str,
    recipe_overrides: dict[str, Any] | None = None,
    model: str,
    dataset: str,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    ema_decay: float,
    warmup_steps: int = 0,
    grad_clip: float = 0.0,
    eval_every: int = 0,
    eval_num_samples: int = 1000,
    eval_sampler: str | None = None,
    eval_steps: int | None = None,
    log_every: int = 50,
    sample_every: int = 0,
    ckpt_every: int = 0,
    extra: dict[str, Any] | None = None,
):
    """A validated ``RunConfig`` for the benchmarks: no TensorBoard, no progress bar, one checkpoint kept.

    ``ckpt_every > 0`` lets an interrupted benchmark resume a run (the trainer resumes exactly).
    """
    from fasterdit.run.config import config_from_dict

    d: dict[str, Any] = {
        "seed": seed,
        "recipe": recipe,
        "recipe_overrides": dict(recipe_overrides or {}),
        "model": {"name": model},
        "data": {"source": dataset},
        "optim": {"lr": lr, "warmup_steps": warmup_steps, "grad_clip": grad_clip},
        "train": {"steps": steps, "batch_size": batch_size, "ema_decay": ema_decay, "ema_warmup": True},
        "log": {
            "log_every": log_every,
            "ckpt_every": ckpt_every,
            "keep_last": 1,
            "sample_every": sample_every,
            "tensorboard": False,
            "progress": False,
        },
        "sample": {"steps": eval_steps or 25, "per_class": 8},
        "eval": {
            "every": eval_every,
            "num_samples": eval_num_samples,
            "sampler": eval_sampler,
            "steps": eval_steps,
            "cfg_scale": 1.0,
        },
    }
    for key, value in (extra or {}).items():  # dotted keys, e.g. {"train.compile": True}
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return config_from_dict(d)


def read_metrics(run_dir: str | Path, kind: str) -> list[dict[str, Any]]:
    """Records of one kind ("train", "eval") from a run's metrics.jsonl, in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            rec = json.loads(line)
            if rec.get("kind") == kind:
                out.append(rec)
    return sorted(out, key=lambda r: r["step"])


# ----------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------


def sample_and_evaluate(
    model: torch.nn.Module,
    recipe: Any,
    *,
    dataset: str,
    num_samples: int,
    sampler: str,
    steps: int | None,
    seed: int = 0,
    batch_size: int = 250,
    **sampler_kwargs: Any,
) -> dict[str, Any]:
    """FID / class accuracy of a model, with sampler options (e.g. dopri5's ``rtol``/``atol``).

    The protocol of ``fasterdit eval`` and of the trainer's ``eval.every``: sample i's noise from (seed, i),
    class-balanced labels ``i mod K``, 8-bit images scored by ``evaluate_samples`` against the held-out
    reference (``fasterdit.eval.evaluate``).
    """
    from fasterdit.eval import evaluate
    from fasterdit.generate.job import SampleSettings

    settings = SampleSettings(
        num_samples, seed, sampler, steps or recipe.sampler.steps, 1.0, sampler_kwargs=dict(sampler_kwargs),
        label_mode="balanced",
    )  # fmt: skip
    res = evaluate(model, recipe, settings, dataset=dataset, batch_size=batch_size)
    assert res is not None  # one process: rank 0
    return res


# ----------------------------------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------------------------------


def steps_to_reach(steps: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The first training step at which a FID curve reaches ``target`` (linear interpolation between
    evaluations). None if it never does. If the first evaluation is already at or below the target the
    first evaluated step is returned: the true crossing is earlier, so it is an upper bound (see
    :func:`reach_is_bounded`).
    """
    pts = [(float(s), float(v)) for s, v in zip(steps, values) if math.isfinite(v)]
    if not pts:
        return None
    if pts[0][1] <= target:
        return pts[0][0]
    for (s0, v0), (s1, v1) in itertools.pairwise(pts):
        if v1 <= target:
            if v0 == v1:
                return s1
            return s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
    return None


def reach_is_bounded(steps: Sequence[float], values: Sequence[float], target: float) -> bool:
    """True when the curve is already below ``target`` at its first evaluation (crossing not resolved)."""
    pts = [v for v in values if math.isfinite(v)]
    return bool(pts) and pts[0] <= target


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [float(x) for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


# ----------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if not math.isfinite(v):
                return "–"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "–" if v is None else str(v)

    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8})
    return plt


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
    return path


class Timer:
    """Wall-clock of a block, and a guard that logs the load average (benchmarks need a quiet machine)."""

    def __init__(self, label: str, log=print):
        self.label, self.log = label, log

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.log(f"[{self.label}] {self.seconds:.1f} s (load {loadavg()[0]:.2f})")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)
