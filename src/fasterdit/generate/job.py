"""Distributed, resumable sampling of N images into an ADM-format ``.npz`` (FID-50K jobs).

How a job runs (``fasterdit sample``/``eval``, one process or under ``torchrun``):

1. Rank 0 looks at the work folder beside the output (``samples.npz.work/``): its ``job.json`` must
   describe the same job (checkpoint hash, sampler, seed, N, ... — not the world size or batch size),
   and its ``part-START-END.npz`` files are the samples already finished. It broadcasts what is left.
2. The index range 0..N−1 is cut into batches on a fixed grid of ``batch_size``, minus what is done;
   rank r takes batches r, r + W, r + 2W, ... Sample i's noise, label and step noise depend only on
   (seed, i) (:mod:`fasterdit.generate.seeds`), so neither W nor the batch size changes a sample.
3. Each finished batch is written to a temporary name and renamed into place (atomic), so a kill
   loses at most the batches in flight, and a rerun never samples a finished index again.
4. Rank 0 streams the parts, in index order, into the ``.npz`` (fixed zip timestamps: equal samples
   give equal bytes), writes the JSON sidecar beside it and removes the work folder.

Rank 0 holds an exclusive lock (``samples.npz.lock``, ``fcntl.flock``) from step 1 to the end, so a
second job on the same ``--out`` is refused at once, naming the holder's pid, instead of crashing when
the first one removes the shared work folder. The kernel drops the lock when its holder dies (``kill
-9`` included), so a killed job never blocks the next; the file itself is removed by the holder at the
end, and a job that opened it just before checks that it is still the file at that path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasterdit.diffusion.recipe import Recipe
from fasterdit.diffusion.sampling import sample
from fasterdit.errors import ConfigError, DataError, UserError
from fasterdit.generate import seeds
from fasterdit.generate.defaults import ResolvedSampling
from fasterdit.generate.npz import write_samples_npz
from fasterdit.models.dit import DiT
from fasterdit.run.config import TrainConfig
from fasterdit.runtime.distributed import DistInfo, barrier, broadcast_object, gather_objects
from fasterdit.runtime.files import atomic_write_bytes, atomic_write_text
from fasterdit.runtime.locks import Locked, lock_file
from fasterdit.viz import to_uint8

_PART = re.compile(r"^part-(\d{9})-(\d{9})\.npz$")
Decode = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SampleSettings:
    """Everything that decides the samples besides the weights (recorded in the sidecar)."""

    num_samples: int
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    guidance_interval: tuple[float, float] | None = None
    guide_channels: int | None = None
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    label_mode: str = "uniform"  # uniform | balanced | given
    labels: tuple[int, ...] | None = None  # the classes of label_mode "given"
    precision: str = "fp32"  # fp32 | tf32 (TF32 matmuls, DiT's sample_ddp.py) | bf16 (autocast) | fp64

    @classmethod
    def from_resolved(
        cls,
        r: ResolvedSampling,
        *,
        label_mode: str,
        labels: tuple[int, ...] | None = None,
        precision: str = "fp32",
    ) -> SampleSettings:
        """Settings from the resolved defaults (:func:`~fasterdit.generate.defaults.resolve_sampling`)."""
        return cls(
            num_samples=r.num_samples,
            seed=r.seed,
            sampler=r.sampler,
            steps=r.steps,
            cfg_scale=r.cfg_scale,
            guidance_interval=r.guidance_interval,
            guide_channels=r.guide_channels,
            sampler_kwargs=dict(r.sampler_kwargs),
            label_mode=label_mode,
            labels=labels,
            precision=precision,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["guidance_interval"] = list(self.guidance_interval) if self.guidance_interval else None
        d["labels"] = list(self.labels) if self.labels else None
        return d


@dataclass
class JobResult:
    path: Path
    sidecar: Path
    num_samples: int
    resumed: int  # samples already finished in the work folder when this run started
    sampled: int  # samples this run produced (all ranks)
    nfe: float | int  # per sample; a guided pair counts once
    seconds: float


def work_dir(out: Path) -> Path:
    """The folder beside ``out`` that holds a job's finished batches until it is assembled."""
    return out.with_name(out.name + ".work")


def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json")


def lock_path(out: Path) -> Path:
    """The lock file of the job that writes ``out`` (present while a job holds it, or after a kill)."""
    return out.with_name(out.name + ".lock")


class JobLocked(UserError):
    """Another job is writing the same output; the message names its pid and host."""


@contextlib.contextmanager
def job_lock(out: Path) -> Iterator[None]:
    """Hold the lock of the job that writes ``out`` while inside, or raise JobLocked at once."""
    path = lock_path(out)
    fd = _acquire(path, out)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still held: a job that opened it sees it gone and retries
        os.close(fd)


def _acquire(path: Path, out: Path) -> int:
    """An exclusive lock on the file at ``path`` (created if missing), as an open descriptor."""
    while True:
        try:
            fd = lock_file(path, "the job lock")
        except Locked as err:
            raise JobLocked(
                f"{out} is being written by another fasterdit job ({err.holder}; lock {path.name}); nothing "
                "was changed. Wait for it to finish (this command then finds the finished file) or "
                "choose another --out"
            ) from None
        if _still_at(fd, path):
            return fd
        os.close(fd)  # the holder removed the file after we opened it: lock the one at the path now


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def check_sampleable(model: DiT, recipe: Recipe) -> None:
    """Fail before minutes of sampling on what would only fail at the end, e.g. a recipe whose data-std
    scaling was never resolved (its inverse needs the measured std)."""
    shape = (int(model.in_channels), *(int(v) for v in model.input_size))
    recipe.scaling.inverse(torch.zeros(1, *shape))


def sample_range(
    model: DiT,
    recipe: Recipe,
    settings: SampleSettings,
    start: int,
    end: int,
    device: torch.device,
    decode: Decode | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Samples ``start..end-1`` as (uint8 N×H×W×C images, int64 labels, NFE per sample)."""
    shape = (int(model.in_channels), *(int(v) for v in model.input_size))
    num_classes = int(model.num_classes or 0)
    dtype = next(model.parameters()).dtype  # float64 for --precision fp64
    noise = seeds.initial_noise(settings.seed, start, end, shape).to(device, dtype)
    y = seeds.labels_for(
        settings.seed, start, end, num_classes=num_classes, mode=settings.label_mode,
        num_samples=settings.num_samples, given=settings.labels,
    )  # fmt: skip
    steps_noise = seeds.step_noise(settings.seed, start, end)
    with _precision(settings.precision, device):
        res = sample(
            model, recipe, noise, y=None if y is None else y.to(device), sampler=settings.sampler,
            steps=settings.steps, cfg_scale=settings.cfg_scale, guidance_interval=settings.guidance_interval,
            guide_channels=settings.guide_channels, generator=steps_noise, **settings.sampler_kwargs,
        )  # fmt: skip
    x = res.x.float()
    if decode is not None:
        x = decode(x).float()
    labels = np.zeros(end - start, np.int64) if y is None else y.numpy().astype(np.int64)
    return to_uint8(x), labels, int(res.nfe)


PRECISIONS = ("fp32", "tf32", "bf16", "fp64")


def resolve_precision(flag: str, device: torch.device, train: TrainConfig | None = None) -> str:
    """``auto``: the precision the run trained in, on CUDA (``train.precision`` bf16 or auto: bfloat16
    autocast; fp32: fp32 with TF32 matmuls when ``train.tf32``), bfloat16 for an official checkpoint
    (``train`` None), float32 off CUDA; any other value is kept (and checked when sampling starts).

    Why the run's: the trainer's grids and ``eval.every`` sample in it, and ``fasterdit eval`` with default
    flags must sample the same bytes; a run trained in fp32 is not evaluated in bf16 behind its back."""
    if flag != "auto":
        return flag
    if device.type != "cuda":
        return "fp32"
    if train is None or train.precision in ("auto", "bf16"):
        return "bf16"
    return "tf32" if train.tf32 else "fp32"


@contextlib.contextmanager
def _precision(precision: str, device: torch.device):
    """bf16 autocast, or float32 with TF32 matmuls on CUDA (restored afterwards), or plain float32."""
    if precision not in PRECISIONS:
        raise ConfigError("--precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def pending_ranges(num: int, batch_size: int, done: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Index ranges still to sample: the batches of a fixed grid of ``batch_size``, minus ``done``."""
    out = []
    for s in range(0, num, batch_size):
        e, cur = min(s + batch_size, num), s
        for ds, de in done:
            if de <= cur or ds >= e:
                continue
            if ds > cur:
                out.append((cur, ds))
            cur = max(cur, de)
        if cur < e:
            out.append((cur, e))
    return out


def finished_parts(work: Path) -> list[tuple[int, int]]:
    """The (start, end) of every finished part file, sorted (temporary files are ignored)."""
    if not work.is_dir():
        return []
    found = [m for m in (_PART.match(p.name) for p in work.iterdir()) if m]
    return sorted((int(m.group(1)), int(m.group(2))) for m in found)


def _part_name(start: int, end: int) -> str:
    return f"part-{start:09d}-{end:09d}.npz"


def _write_part(work: Path, start: int, end: int, images: np.ndarray, labels: np.ndarray, nfe: int) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, nfe=np.int64(nfe))
    atomic_write_bytes(work / _part_name(start, end), buf.getvalue())


def _read_part(work: Path, start: int, end: int, key: str) -> np.ndarray:
    """One array of a part file (``np.load`` reads only that member: labels without the images)."""
    path = work / _part_name(start, end)
    try:
        with np.load(path, allow_pickle=False) as z:
            value = z[key]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: unreadable part of a sampling job ({err}); delete it and rerun") from err
    if key != "nfe" and value.shape[0] != end - start:
        raise DataError(f"{path}: holds {value.shape[0]} samples, its name says {end - start}")
    return value


def _plan(out: Path, identity: dict[str, Any], batch_size: int, num: int) -> dict[str, Any]:
    """Rank 0's decision: the job is complete, refused (another job's work folder), or what is left."""
    work = work_dir(out)
    manifest = work / "job.json"
    side = sidecar_path(out)
    if not work.exists() and out.is_file() and side.is_file():
        try:
            if json.loads(side.read_text()).get("job") == identity:
                return {"state": "complete"}
        except (OSError, json.JSONDecodeError):
            pass  # an unreadable sidecar: sample again
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old != identity:
            diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            return {
                "state": "error",
                "message": f"{work} holds the unfinished samples of another job (differs in "
                f"{', '.join(diff)}); rerun with the same settings to finish it, or delete the folder",
            }
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(manifest, json.dumps(identity, indent=2, sort_keys=True) + "\n")
    done = finished_parts(work)
    return {"state": "run", "done": done, "todo": pending_ranges(num, batch_size, done)}


class _Eta:
    """Rank 0's progress line: its own pace times the world size stands for the job's."""

    def __init__(self, total: int, resumed: int, world: int, enabled: bool):
        self.total, self.resumed, self.world, self.enabled = total, resumed, world, enabled
        self.t0, self.mine = time.time(), 0

    def step(self, n: int) -> None:
        self.mine += n
        if not self.enabled:
            return
        dt = time.time() - self.t0
        done = min(self.total, self.resumed + self.mine * self.world)
        rate = self.mine * self.world / dt if dt > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        print(f"  {done}/{self.total} samples, {rate:.2f} samples/s, ETA {eta_s}", flush=True)


def run_sample_job(
    model: DiT,
    recipe: Recipe,
    settings: SampleSettings,
    out: str | Path,
    *,
    record: dict[str, Any],
    batch_size: int,
    dist: DistInfo,
    decode: Decode | None = None,
    progress: bool = True,
) -> JobResult:
    """Sample ``settings.num_samples`` images into ``out`` (see the module docstring); every rank calls it.

    ``record``: what identifies the weights and decoding (checkpoint path and SHA-256, EMA, recipe,
    VAE, ...); with ``settings`` it forms the job's identity, which a resumed work folder must match.
    Only rank 0's ``record`` is used. Returns on every rank once all samples are on disk; only rank
    0 waits for the assembly. Rank 0 holds the job's lock throughout (see the module docstring); when
    another job holds it, every rank raises :class:`JobLocked`.
    """
    out = Path(out)
    with contextlib.ExitStack() as held:
        refused = _hold_lock(held, out) if dist.is_main else None
        refused = broadcast_object(refused)
        if refused is not None:
            raise JobLocked(refused)
        return _run_locked(
            model, recipe, settings, out, record=record, batch_size=batch_size, dist=dist, decode=decode,
            progress=progress,
        )  # fmt: skip


def _hold_lock(held: contextlib.ExitStack, out: Path) -> str | None:
    """Rank 0: take the job's lock into ``held``; the message of why not, or None."""
    try:
        held.enter_context(job_lock(out))
    except UserError as err:
        return str(err)
    return None


def _run_locked(
    model: DiT,
    recipe: Recipe,
    settings: SampleSettings,
    out: Path,
    *,
    record: dict[str, Any],
    batch_size: int,
    dist: DistInfo,
    decode: Decode | None,
    progress: bool,
) -> JobResult:
    """:func:`run_sample_job` once rank 0 holds the lock."""
    check_sampleable(model, recipe)
    t0 = time.time()
    identity = json.loads(json.dumps({**record, **settings.to_dict()}))  # as job.json will read it back
    plan = _plan(out, identity, batch_size, settings.num_samples) if dist.is_main else None
    decision = broadcast_object(plan)
    if decision["state"] == "error":
        raise UserError(decision["message"])
    side = sidecar_path(out)
    if decision["state"] == "complete":
        nfe = json.loads(side.read_text())["nfe"] if dist.is_main else 0
        if dist.is_main:
            print(f"{out} is already complete (same job); nothing to sample", flush=True)
        return JobResult(out, side, settings.num_samples, settings.num_samples, 0, nfe, 0.0)
    work = work_dir(out)
    resumed = sum(e - s for s, e in decision["done"])
    if dist.is_main and resumed:
        print(f"resuming: {resumed}/{settings.num_samples} samples already in {work}", flush=True)
    eta = _Eta(settings.num_samples, resumed, dist.world_size, progress and dist.is_main)
    mine = decision["todo"][dist.rank :: dist.world_size]
    for start, end in mine:
        images, labels, nfe = sample_range(model, recipe, settings, start, end, dist.device, decode)
        _write_part(work, start, end, images, labels, nfe)
        eta.step(end - start)
    sampled = sum(gather_objects(sum(e - s for s, e in mine)))
    barrier()  # every part is on disk
    if not dist.is_main:
        return JobResult(out, side, settings.num_samples, resumed, sampled, 0, time.time() - t0)
    nfe_mean = _assemble(out, work, settings.num_samples)
    meta = {
        "job": identity,
        "nfe": nfe_mean,
        "num_samples": settings.num_samples,
        "run": {"world_size": dist.world_size, "batch_size": batch_size, "resumed_samples": resumed,
                "sampled_samples": sampled, "seconds": round(time.time() - t0, 3)},
    }  # fmt: skip
    atomic_write_text(side, json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(work)
    return JobResult(out, side, settings.num_samples, resumed, sampled, nfe_mean, time.time() - t0)


def _assemble(out: Path, work: Path, num: int) -> float | int:
    """Stream the parts into ``out`` in index order; returns the NFE per sample (mean if it varies)."""
    parts = finished_parts(work)
    cover, pos = [], 0
    for s, e in parts:
        if s != pos:
            raise DataError(f"{work}: samples {pos}..{s - 1} are missing or overlap; rerun to finish them")
        cover.append((s, e))
        pos = e
    if pos != num:
        raise DataError(f"{work}: holds samples 0..{pos - 1} of {num}; rerun to finish them")
    labels = np.concatenate([_read_part(work, s, e, "labels") for s, e in cover])
    nfes = [int(_read_part(work, s, e, "nfe")) for s, e in cover]
    shape = _read_part(work, *cover[0], "images").shape[1:]
    images = (_read_part(work, s, e, "images") for s, e in cover)
    write_samples_npz(out, (num, *shape), images, labels)
    if len(set(nfes)) == 1:
        return nfes[0]
    return sum(n * (e - s) for n, (s, e) in zip(nfes, cover, strict=True)) / num


def sample_shared(
    model: DiT,
    recipe: Recipe,
    settings: SampleSettings,
    *,
    batch_size: int,
    dist: DistInfo,
    decode: Decode | None = None,
    abort: type[Exception] | None = None,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The in-memory sibling of :func:`run_sample_job` (in-training evaluation): every rank samples its
    share of the same batch grid, rank 0 receives (images, labels, NFE) in index order, others None.

    ``abort``: an exception that may stop a rank's sampling (a stop signal). The rank still takes part
    in the gather, and then every rank raises it, so no rank is left waiting in a collective.
    """
    check_sampleable(model, recipe)
    todo = pending_ranges(settings.num_samples, batch_size, [])
    catch: tuple[type[Exception], ...] = (abort,) if abort is not None else ()
    parts: list[tuple[int, np.ndarray, np.ndarray, int]] | None = []
    try:
        for start, end in todo[dist.rank :: dist.world_size]:
            parts.append((start, *sample_range(model, recipe, settings, start, end, dist.device, decode)))
    except catch:
        parts = None
    gathered = gather_objects(parts)
    if any(p is None for p in gathered):
        assert abort is not None
        raise abort()
    if not dist.is_main:
        return None
    ordered = sorted((p for rank_parts in gathered for p in rank_parts), key=lambda p: p[0])
    nfe = ordered[0][3]
    return np.concatenate([p[1] for p in ordered]), np.concatenate([p[2] for p in ordered]), nfe
