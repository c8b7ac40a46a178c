"""Reading prepared shards: batches, the latent draw, determinism, memory mapping, damaged shards.

The prepared sets here are written by hand from the documented format (safetensors shards plus a
manifest), independently of ``fasterdit prepare``, so the reader is checked against the spec.
"""

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from fasterdit.data.prepared import PreparedDataset
from fasterdit.errors import DataError

C, R = 4, 4
SCALE = 0.18215


def _manifest(kind, shards, **over):
    m = {
        "format_version": 1,
        "kind": kind,
        "vae": "some/vae" if kind == "latent" else None,
        "scaling_factor": SCALE if kind == "latent" else 1.0,
        "shift_factor": 0.0,
        "image_resolution": 8 * R if kind == "latent" else R,
        "resolution": R,
        "channels": C if kind == "latent" else 3,
        "num_classes": 3,
        "class_to_idx": {"a": 0, "b": 1, "c": 2},
        "num_items": sum(n for _, n in shards),
        "shards": [{"file": f, "num_items": n, "rank": 0} for f, n in shards],
        "channel_mean": [0.0] * (C if kind == "latent" else 3),
        "channel_std": [1.0] * (C if kind == "latent" else 3),
        "flip": "none",
        "skipped": {"count": 0, "report": "skipped.tsv"},
    }
    m.update(over)
    return m


def _latent_set(path, sizes=(5, 0, 7), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    shards, means, logvars, labels = [], [], [], []
    for k, n in enumerate(sizes):
        mean = rng.normal(0, 5, (n, C, R, R)).astype(dtype)
        logvar = rng.uniform(-6, 0, (n, C, R, R)).astype(dtype)
        label = rng.integers(0, 3, n).astype(np.int64)
        name = f"shard-{k:06d}-r000.safetensors"
        save_file(
            {
                "mean": mean,
                "logvar": logvar,
                "label": label,
                "index": np.arange(n, dtype=np.int64),
                "flipped": np.zeros(n, np.uint8),
            },
            str(path / name),
        )
        shards.append((name, n))
        means.append(mean)
        logvars.append(logvar)
        labels.append(label)
    (path / "manifest.json").write_text(json.dumps(_manifest("latent", shards)))
    return np.concatenate(means), np.concatenate(logvars), np.concatenate(labels)


def _pixel_set(path, sizes=(3, 4), seed=1, flip="none"):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    shards, pix = [], []
    for k, n in enumerate(sizes):
        p = rng.integers(0, 256, (n, 3, R, R), dtype=np.uint8)
        name = f"shard-{k:06d}-r000.safetensors"
        save_file({"pixels": p, "label": np.zeros(n, np.int64)}, str(path / name))
        shards.append((name, n))
        pix.append(p)
    (path / "manifest.json").write_text(json.dumps(_manifest("pixel", shards, flip=flip)))
    return np.concatenate(pix)


def test_latent_batch_is_a_fresh_scaled_draw(tmp_path):
    mean, logvar, labels = _latent_set(tmp_path)
    ds = PreparedDataset(tmp_path)
    assert len(ds) == 12 and ds.channels == C and ds.resolution == R and ds.image_resolution == 8 * R
    assert ds.is_latent and ds.vae == "some/vae" and ds.num_classes == 3
    assert ds.stats.mean == (0.0,) * C and ds.stats.std == (1.0,) * C
    idx = torch.tensor([11, 0, 4, 5, 5, 9])  # across shards, unsorted, with a repeat
    g = torch.Generator().manual_seed(3)
    x, y = ds.get_batch(idx, g)
    assert x.shape == (6, C, R, R) and x.dtype == torch.float32 and y.dtype == torch.long
    eps = torch.randn((6, C, R, R), generator=torch.Generator().manual_seed(3)).double().numpy()
    i = idx.numpy()
    expected = (mean[i].astype(np.float64) + np.exp(0.5 * logvar[i].astype(np.float64)) * eps) * SCALE
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels[i])
    assert not torch.equal(x[3], x[4])  # the same item twice gets two different draws


def test_batches_are_deterministic_in_the_generator(tmp_path):
    _latent_set(tmp_path)
    ds = PreparedDataset(tmp_path)
    idx = torch.arange(12)
    a, _ = ds.get_batch(idx, torch.Generator().manual_seed(1))
    b, _ = ds.get_batch(idx, torch.Generator().manual_seed(1))
    c, _ = ds.get_batch(idx, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(IndexError):
        ds.get_batch(torch.tensor([12]), torch.Generator())


def test_fp16_storage_is_read_as_float32(tmp_path):
    mean, logvar, _ = _latent_set(tmp_path, dtype=np.float16)
    ds = PreparedDataset(tmp_path)
    x, _ = ds.get_batch(torch.tensor([1, 2]), torch.Generator().manual_seed(0))
    eps = torch.randn((2, C, R, R), generator=torch.Generator().manual_seed(0)).numpy()
    expected = (mean[1:3].astype(np.float32) + np.exp(0.5 * logvar[1:3].astype(np.float32)) * eps) * SCALE
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_pixels_in_minus_one_one_and_random_flip(tmp_path):
    pix = _pixel_set(tmp_path / "plain")
    ds = PreparedDataset(tmp_path / "plain")
    assert not ds.is_latent and ds.channels == 3 and ds.vae is None
    x, _ = ds.get_batch(torch.arange(7), torch.Generator())
    np.testing.assert_allclose(x.numpy(), pix / 127.5 - 1, atol=1e-6)
    _pixel_set(tmp_path / "flip", flip="random")
    ds = PreparedDataset(tmp_path / "flip")
    x, _ = ds.get_batch(torch.arange(7).repeat(20), torch.Generator().manual_seed(0))
    ref = torch.from_numpy(pix / 127.5 - 1).float().repeat(20, 1, 1, 1)
    same = (x - ref).abs().amax(dim=(1, 2, 3)) < 1e-6
    mirrored = (x - ref.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert bool((same | mirrored).all()) and 20 < int(mirrored.sum()) < 120
    x_off, _ = PreparedDataset(tmp_path / "flip", flip=False).get_batch(torch.arange(7), torch.Generator())
    np.testing.assert_allclose(x_off.numpy(), pix / 127.5 - 1, atol=1e-6)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="measures RSS through /proc (Linux)")
def test_reads_are_memory_mapped_not_loaded(tmp_path):
    """A ~600 MB (sparse) shard: opening it and reading a batch must not bring it into RAM."""
    n = 12_000
    shape = (n, 3, 64, 64)
    nbytes = int(np.prod(shape))
    header = {
        "label": {"dtype": "I64", "shape": [n], "data_offsets": [0, 8 * n]},
        "pixels": {"dtype": "U8", "shape": list(shape), "data_offsets": [8 * n, 8 * n + nbytes]},
    }
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    shard = tmp_path / "shard-000000-r000.safetensors"
    with open(shard, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.write(np.arange(n, dtype=np.int64).tobytes())
        f.seek(8 * n + nbytes - 1, os.SEEK_CUR)
        f.write(b"\x00")
    m = _manifest("pixel", [(shard.name, n)], resolution=64, image_resolution=64)
    (tmp_path / "manifest.json").write_text(json.dumps(m))

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    before = rss_mb()
    ds = PreparedDataset(tmp_path)
    x, y = ds.get_batch(torch.tensor([5, 11_999, 700]), torch.Generator())
    grown = rss_mb() - before
    assert x.shape == (3, 3, 64, 64) and y.tolist() == [5, 11_999, 700]
    assert bool((x == -1).all())
    assert grown < 60, f"RSS grew by {grown:.0f} MB for a {nbytes / 2**20:.0f} MB shard"
    arrays = ds._shards[0].arrays()
    assert isinstance(arrays["pixels"], np.memmap)
    assert len(pickle.dumps(ds)) < 100_000  # workers get the paths, not the data


def test_wrong_shape_or_dtype_shard_names_the_file(tmp_path):
    _latent_set(tmp_path)
    bad = tmp_path / "shard-000002-r000.safetensors"
    save_file(
        {
            "mean": np.zeros((7, 3, R, R), np.float32),
            "logvar": np.zeros((7, C, R, R), np.float32),
            "label": np.zeros(7, np.int64),
        },
        str(bad),
    )
    with pytest.raises(DataError, match=r"shard-000002-r000\.safetensors.*'mean'.*shape"):
        PreparedDataset(tmp_path)
    save_file(
        {
            "mean": np.zeros((7, C, R, R), np.float64),
            "logvar": np.zeros((7, C, R, R), np.float32),
            "label": np.zeros(7, np.int64),
        },
        str(bad),
    )
    with pytest.raises(DataError, match=r"shard-000002-r000\.safetensors.*dtype F64"):
        PreparedDataset(tmp_path)
    data = (tmp_path / "shard-000000-r000.safetensors").read_bytes()
    bad.write_bytes(data[: len(data) - 50])
    with pytest.raises(DataError, match=r"shard-000002-r000\.safetensors.*truncated"):
        PreparedDataset(tmp_path)
    bad.unlink()
    with pytest.raises(DataError, match=r"missing.*shard-000002-r000\.safetensors"):
        PreparedDataset(tmp_path)


def test_missing_or_unfinished_manifest(tmp_path):
    with pytest.raises(DataError, match="not found"):
        PreparedDataset(tmp_path / "nope")
    with pytest.raises(DataError, match="fasterdit prepare"):
        PreparedDataset(tmp_path)
    (tmp_path / "prepare.json").write_text("{}")
    with pytest.raises(DataError, match="resume"):
        PreparedDataset(tmp_path)
    _latent_set(tmp_path / "v")
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "v" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="format_version 99"):
        PreparedDataset(tmp_path / "v")
