"""RunningStats against numpy (float64) on the concatenated data, incl. merges and a 2-rank all_reduce."""

from __future__ import annotations

import itertools
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fasterdit.data.stats import RunningStats


def _data(seed: int = 0, n: int = 257) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # channels with very different offsets and scales: stresses cancellation in naive formulas
    mean = np.array([1e4, -3.0, 0.0])[None, :, None, None]
    scale = np.array([1e-2, 2.0, 0.5])[None, :, None, None]
    return mean + scale * rng.standard_normal((n, 3, 5, 4))


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    per_channel = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    return per_channel.mean(0), per_channel.std(0), float(x.std())


def test_uneven_chunks_match_numpy():
    x = _data()
    cuts = [0, 1, 2, 30, 31, 100, 257]  # uneven, including a chunk of one image
    stats = RunningStats()
    for a, b in itertools.pairwise(cuts):
        stats.update(torch.from_numpy(x[a:b]).float() if a == 1 else torch.from_numpy(x[a:b]))
    # the float32 chunk loses precision on the 1e4 channel only at the float32 level; recompute the
    # reference on the same values so the comparison is exact in float64
    x_ref = x.copy()
    x_ref[1:2] = x[1:2].astype(np.float32).astype(np.float64)
    mean, std, pooled = _reference(x_ref)
    assert stats.count == 257 * 5 * 4
    np.testing.assert_allclose(stats.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(stats.std.numpy(), std, rtol=1e-9)
    np.testing.assert_allclose(stats.var.numpy(), std**2, rtol=1e-9)
    assert stats.pooled_std == pytest.approx(pooled, rel=1e-10)


def test_merge_of_separate_accumulators_and_channel_dim():
    x = _data(1)
    a, b, c = RunningStats(), RunningStats(), RunningStats()
    a.update(x[:10])
    b.update(x[10:200])
    c.update(np.moveaxis(x[200:], 1, -1), channel_dim=-1)  # channels-last input
    a.merge(b).merge(c).merge(RunningStats())  # merging an empty accumulator changes nothing
    mean, std, pooled = _reference(x)
    np.testing.assert_allclose(a.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(a.std.numpy(), std, rtol=1e-9)
    assert a.pooled_std == pytest.approx(pooled, rel=1e-10)
    # channel_dim=None: everything is one channel
    one = RunningStats().update(torch.from_numpy(x), channel_dim=None)
    assert one.num_channels == 1
    assert float(one.std[0]) == pytest.approx(pooled, rel=1e-10)


def test_state_dict_roundtrip_through_json_and_resume():
    x = _data(2)
    full = RunningStats().update(x)
    part = RunningStats().update(x[:50])
    resumed = RunningStats.from_state_dict(json.loads(json.dumps(part.state_dict())))
    resumed.update(x[50:])
    np.testing.assert_allclose(resumed.mean.numpy(), full.mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(resumed.std.numpy(), full.std.numpy(), rtol=1e-10)
    assert resumed.count == full.count


def test_bad_input_is_refused():
    s = RunningStats()
    with pytest.raises(ValueError, match="no data"):
        _ = s.std
    s.update(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="channels"):
        s.update(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        RunningStats().update(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="state dict"):
        RunningStats.from_state_dict({"mean": [0.0]})


def test_all_reduce_is_noop_without_process_group():
    s = RunningStats().update(_data(3, n=4))
    before = s.state_dict()
    assert s.all_reduce() is s
    assert s.state_dict() == before


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = _data(4, n=37)
        # rank 0 gets 5 images, rank 1 the other 32: uneven shards
        shard = x[:5] if rank == 0 else x[5:]
        s = RunningStats().update(shard).all_reduce()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(s.state_dict(), f)
    finally:
        dist.destroy_process_group()


def test_two_process_all_reduce_gloo(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    mean, std, pooled = _reference(_data(4, n=37))
    for rank in (0, 1):
        s = RunningStats.from_state_dict(json.loads((tmp_path / f"rank{rank}.json").read_text()))
        assert s.count == 37 * 5 * 4
        np.testing.assert_allclose(s.mean.numpy(), mean, rtol=1e-12)
        np.testing.assert_allclose(s.std.numpy(), std, rtol=1e-9)
        assert s.pooled_std == pytest.approx(pooled, rel=1e-10)
