"""Reading batches ahead (``data.prefetch``): the same batches as reading them in the step, bit-identical
training, and no thread left behind by a stop or an exception.

The prepared set is written by hand from the documented format (fp16 latents, as ``prepare
--storage-dtype fp16`` writes them), small enough that a run of a few steps takes about a second.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from fasterdit.errors import ConfigError
from fasterdit.run.config import load_config
from fasterdit.train.data_order import IndexStream, rank_slice
from fasterdit.train.prefetch import THREAD_NAME, BatchKey, Prefetcher, RankBatches
from fasterdit.train.trainer import Trainer, TrainingInterrupted
from tiny_run import TINY_RUN

C, R, CLASSES = 4, 8, 3
SIZES = (23, 0, 18)  # shards of unequal size, one empty: batches cross shard boundaries


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    """A prepared latent set of 41 items in three shards, without a VAE (so runs draw no grids)."""
    path = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    shards = []
    for k, n in enumerate(SIZES):
        name = f"shard-{k:06d}-r000.safetensors"
        tensors = {
            "mean": rng.normal(0, 5, (n, C, R, R)).astype(np.float16),
            "logvar": rng.uniform(-6, -2, (n, C, R, R)).astype(np.float16),
            "label": rng.integers(0, CLASSES, n).astype(np.int64),
            "index": np.arange(n, dtype=np.int64),
            "flipped": np.zeros(n, np.uint8),
        }
        save_file(tensors, str(path / name))
        shards.append({"file": name, "num_items": n, "rank": 0})
    manifest = {
        "format_version": 1, "kind": "latent", "vae": None, "scaling_factor": 0.18215, "shift_factor": 0.0,
        "image_resolution": 8 * R, "resolution": R, "channels": C, "num_classes": CLASSES,
        "class_to_idx": {str(i): i for i in range(CLASSES)}, "num_items": sum(SIZES), "shards": shards,
        "channel_mean": [0.0] * C, "channel_std": [0.9] * C, "flip": "none",
    }  # fmt: skip
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def trainer(run_dir: Path, source: Path, steps: int, *extra: str) -> Trainer:
    sets = [*TINY_RUN, f"data.source={source}", "train.batch_size=8", f"train.steps={steps}", *extra]
    return Trainer(load_config("demo", sets), run_dir, install_signal_handlers=False)


def final_state(tr: Trainer) -> dict[str, torch.Tensor]:
    assert tr.parts is not None
    out = {f"model.{k}": v for k, v in tr.parts.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.parts.ema.state_dict().items()})
    return out


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ---------------------------------------------------------------------------------------------------
# the prefetcher alone
# ---------------------------------------------------------------------------------------------------


def test_prefetcher_returns_what_read_returns_and_reads_ahead():
    read_in: dict[int, str] = {}

    def read(k: int) -> int:
        read_in[k] = threading.current_thread().name
        return k * k

    pf = Prefetcher(read, lambda k: k + 1, depth=2)
    assert [pf.get(k) for k in range(5)] == [0, 1, 4, 9, 16]
    pf.close()
    assert read_in[0] == threading.current_thread().name  # the first key: nothing was ahead of it
    assert all(read_in[k].startswith(THREAD_NAME) for k in range(1, 5))
    assert set(read_in) <= set(range(7))  # 5 and 6 were ahead of the last get: read or cancelled by close
    assert prefetch_threads() == []


def test_another_key_is_read_at_once_and_the_queue_follows_it():
    pf = Prefetcher(lambda k: -k, lambda k: k + 1, depth=1)
    assert pf.get(0) == 0 and pf.get(1) == -1
    assert pf.get(10) == -10  # a jump (a resume, a rollback): read here, 2 dropped
    assert pf.get(11) == -11 and pf.get(3) == -3
    pf.close()
    assert prefetch_threads() == []


def test_a_read_error_is_raised_by_its_get_and_one_never_asked_for_is_dropped():
    def read(k: int) -> int:
        if k in (2, 6):
            raise ValueError(f"damaged shard at {k}")
        return k

    pf = Prefetcher(read, lambda k: k + 1, depth=1)
    assert pf.get(0) == 0 and pf.get(1) == 1
    with pytest.raises(ValueError, match="at 2"):
        pf.get(2)
    assert pf.get(5) == 5  # 6 failed ahead of it: never asked for, dropped by close
    pf.close()
    assert prefetch_threads() == []


def test_depth_zero_reads_in_the_calling_thread_and_starts_no_thread():
    pf = Prefetcher(lambda k: threading.current_thread().name, lambda k: k + 1, depth=0)
    assert pf.get(0) == threading.current_thread().name
    assert prefetch_threads() == []


# ---------------------------------------------------------------------------------------------------
# a rank's batches and the trainer
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, 1])
def test_read_ahead_batches_equal_the_batches_read_in_the_step(latents, rank):
    from fasterdit.data.source import open_source

    source = open_source(str(latents))
    B, W = 16, 2  # 41 items: step 2 crosses the epoch boundary

    def batches(depth: int) -> RankBatches:
        return RankBatches(
            source, IndexStream(len(source), 7), seed=7, rank=rank, batch_size=B,
            share=rank_slice(B, W, rank), device=torch.device("cpu"), depth=depth,
        )  # fmt: skip

    plain, ahead = batches(0), batches(2)
    for step in range(6):
        x0, y0, f0 = plain.read(BatchKey(step, step * B))
        x1, y1, f1 = ahead.get(step, step * B)
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and x0.shape == (B // W, C, R, R)
        assert f0 is None and f1 is None  # no REPA features asked for
    ahead.close()
    assert prefetch_threads() == []


def test_training_is_bit_identical_with_and_without_prefetch(latents, tmp_path):
    runs = {}
    for depth in (0, 1, 2):
        tr = trainer(tmp_path / f"p{depth}", latents, 7, f"data.prefetch={depth}", "log.ckpt_every=0")
        res = tr.run()
        runs[depth] = (final_state(tr), res.losses)
        assert prefetch_threads() == []
    for depth in (1, 2):
        assert_identical(runs[depth][0], runs[0][0])
        assert runs[depth][1] == runs[0][1]


def test_a_stop_mid_prefetch_saves_resumes_exactly_and_leaves_no_thread(latents, tmp_path):
    straight = trainer(tmp_path / "straight", latents, 6, "data.prefetch=0", "log.ckpt_every=0")
    straight.run()
    run_dir = tmp_path / "stopped"
    tr = trainer(run_dir, latents, 6, "data.prefetch=2", "log.ckpt_every=0")
    tr.after_step_hook = lambda t, step: t.stop.request("SIGTERM") if step == 3 else None
    res = tr.run()
    assert res.stopped_by == "SIGTERM" and res.step == 3 and prefetch_threads() == []
    resumed = trainer(run_dir, latents, 6, "data.prefetch=2", "log.ckpt_every=0")
    assert resumed.run().step == 6
    assert_identical(final_state(resumed), final_state(straight))
    assert prefetch_threads() == []


def test_a_rollback_reads_the_moved_position_and_stays_bit_identical(latents, tmp_path):
    """A rollback moves the data position: the batches read ahead are dropped, the new one read at once."""
    rollback = ["log.ckpt_every=2", "train.max_nonfinite=2", "train.on_nonfinite=rollback",
                "train.rollback_lr_scale=0.5"]  # fmt: skip
    runs = {}
    for depth in (0, 2):
        tr = trainer(tmp_path / f"p{depth}", latents, 8, f"data.prefetch={depth}", *rollback)

        def nan_once(step: int, terms: dict, tr: Trainer = tr) -> dict:
            if step in (4, 5) and tr.state.rollbacks == 0:
                return {**terms, "loss": terms["loss"] * float("nan")}
            return terms

        tr.loss_hook = nan_once
        res = tr.run()
        assert tr.state.rollbacks == 1 and res.step == 8 and prefetch_threads() == []
        runs[depth] = (final_state(tr), res.losses, tr.state.images_seen)
    assert_identical(runs[2][0], runs[0][0])
    assert runs[2][1:] == runs[0][1:]


@pytest.mark.parametrize(
    "raised, seen",
    [(RuntimeError("a failing step"), RuntimeError), (KeyboardInterrupt(), TrainingInterrupted)],
    ids=["error", "second-ctrl-c"],
)
def test_an_exception_mid_prefetch_leaves_no_thread(latents, tmp_path, raised, seen):
    tr = trainer(tmp_path / "run", latents, 6, "data.prefetch=2", "log.ckpt_every=0")

    def boom(step: int, terms: dict) -> dict:
        if step == 2:
            raise raised
        return terms

    tr.loss_hook = boom
    with pytest.raises(seen):
        tr.run()
    assert prefetch_threads() == []


@pytest.mark.parametrize("value", [-1, 5])
def test_prefetch_out_of_range_is_refused(value):
    with pytest.raises(ConfigError, match=r"data\.prefetch"):
        load_config("demo", [f"data.prefetch={value}"])
