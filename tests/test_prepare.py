"""``fasterdit prepare``: a tiny random AutoencoderKL (built from a config, saved locally, no download)
encodes a generated image folder with bad files; shards, manifest, labels, reports and statistics are
checked against diffusers and NumPy; two torchrun ranks; interrupt and resume."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from fasterdit.cli import main as cli_main
from fasterdit.data.folder import load_image
from fasterdit.data.prepare import prepare
from fasterdit.data.prepared import PreparedDataset
from fasterdit.data.vae import decode, encode_distribution, load_vae, vae_scaling_factor
from fasterdit.errors import ConfigError, DataError

diffusers = pytest.importorskip("diffusers")

RES = 16
SHARD, BATCH = 4, 3
GOOD = {  # file -> label; every readable file
    "cat/0.png": 0,
    "cat/1.png": 0,
    "cat/2.png": 0,
    "cat/3.png": 0,
    "cat/gray.png": 0,
    "dog/0.png": 1,
    "dog/1.png": 1,
    "dog/rgba.png": 1,
    "dog/small.png": 1,
    "dog/z.jpg": 1,
}
BAD = {"cat/corrupt.png", "dog/truncated.jpg"}


def _tiny_vae():
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        sample_size=RES,
    ).eval()


def _make_images(root: Path) -> None:
    rng = np.random.default_rng(0)

    def rand(h, w, c=3):
        return rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)

    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rand(20 + 4 * i, 36)).save(root / "cat" / f"{i}.png")
    for i in range(2):
        Image.fromarray(rand(40, 34)).save(root / "dog" / f"{i}.png")
    Image.fromarray(rand(24, 24, 1), "L").save(root / "cat" / "gray.png")
    Image.fromarray(rand(18, 22, 4), "RGBA").save(root / "dog" / "rgba.png")
    Image.fromarray(rand(10, 12)).save(root / "dog" / "small.png")
    Image.fromarray(rand(30, 30)).save(root / "dog" / "z.jpg")
    (root / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rand(1, 300, 1)))
    buf = io.BytesIO()
    Image.fromarray(rand(64, 64)).save(buf, "JPEG")
    (root / "dog" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The images, the saved VAE and one uninterrupted single-process preparation. One thread: these
    tensors are tiny, and thread hand-offs cost more than the work on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("prep")
    _make_images(base / "images")
    torch.manual_seed(0)
    _tiny_vae().save_pretrained(base / "vae")
    manifest = prepare(
        base / "images",
        base / "out",
        RES,
        str(base / "vae"),
        batch_size=BATCH,
        shard_size=SHARD,
        workers=0,
        progress=False,
    )
    yield base, manifest
    torch.set_num_threads(threads)


def _shards(out: Path) -> dict[str, np.ndarray]:
    """All shards concatenated in manifest order, read with safetensors' own loader."""
    m = json.loads((out / "manifest.json").read_text())
    parts = [load_file(str(out / s["file"])) for s in m["shards"]]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_shards_manifest_labels_and_reports(work):
    base, m = work
    out = base / "out"
    assert m == json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "latent" and m["vae"] == str((base / "vae").resolve())
    assert m["scaling_factor"] == pytest.approx(0.18215) and m["shift_factor"] == 0.0
    assert (m["image_resolution"], m["resolution"], m["channels"]) == (RES, RES // 2, 4)
    assert m["num_classes"] == 2 and m["class_to_idx"] == {"cat": 0, "dog": 1}
    assert m["num_items"] == len(GOOD) and m["format_version"] == 1
    files = (out / "files.txt").read_text().splitlines()
    assert sorted(files) == files and set(files) == set(GOOD) | BAD
    assert [s["num_items"] for s in m["shards"]] == [4, 3, 3]  # 12 files in ranges of 4, minus bad ones
    assert all(s["rank"] == 0 and (out / s["file"]).is_file() for s in m["shards"])
    data = _shards(out)
    names = [files[i] for i in data["index"]]
    assert names == sorted(GOOD)
    assert data["label"].tolist() == [GOOD[n] for n in names]
    assert data["mean"].shape == (len(GOOD), 4, RES // 2, RES // 2) and data["mean"].dtype == np.float32

    assert m["skipped"] == {"count": 2, "report": "skipped.tsv"}
    rows = [ln.split("\t") for ln in (out / "skipped.tsv").read_text().splitlines() if not ln.startswith("#")]
    assert sorted(Path(p).relative_to(base / "images").as_posix() for p, _ in rows) == sorted(BAD)
    reasons = dict((Path(p).name, r) for p, r in rows)
    assert "not a readable image" in reasons["corrupt.png"] and "truncated" in reasons["truncated.jpg"]
    warns = [
        ln.split("\t") for ln in (out / "warnings.tsv").read_text().splitlines() if not ln.startswith("#")
    ]
    assert len(warns) == 1 and warns[0][0].endswith("dog/small.png") and "12x10" in warns[0][1]


def test_latents_match_a_direct_diffusers_encoding(work):
    base, _ = work
    data = _shards(base / "out")
    files = (base / "out" / "files.txt").read_text().splitlines()
    vae = diffusers.AutoencoderKL.from_pretrained(base / "vae").eval()
    imgs = np.stack([load_image(base / "images" / files[i], RES)[0] for i in data["index"]])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    np.testing.assert_allclose(data["mean"], dist.mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(data["logvar"], dist.logvar.numpy(), atol=1e-4)


def test_manifest_statistics_match_numpy(work):
    base, m = work
    data = _shards(base / "out")
    s = 0.18215
    mu = data["mean"].astype(np.float64) * s
    var = np.exp(data["logvar"].astype(np.float64)) * s**2
    np.testing.assert_allclose(m["channel_mean"], mu.mean(axis=(0, 2, 3)), rtol=1e-10, atol=1e-12)
    channel_var = mu.var(axis=(0, 2, 3)) + var.mean(axis=(0, 2, 3))  # law of total variance
    np.testing.assert_allclose(m["channel_std"], np.sqrt(channel_var), rtol=1e-10)
    pooled = np.sqrt(np.mean(mu**2 + var) - np.mean(mu) ** 2)  # E[z²] - E[z]² over everything
    assert m["std"] == pytest.approx(pooled, rel=1e-10)


def test_prepared_dataset_draws_have_the_manifest_statistics(work):
    base, m = work
    ds = PreparedDataset(base / "out")
    assert len(ds) == m["num_items"] and ds.is_latent and ds.resolution == RES // 2
    g = torch.Generator().manual_seed(0)
    x = torch.cat([ds.get_batch(torch.arange(len(ds)).repeat(10), g)[0] for _ in range(30)]).double()
    np.testing.assert_allclose(
        x.mean(dim=(0, 2, 3)).numpy(), m["channel_mean"], atol=0.01 * max(m["channel_std"])
    )
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)).numpy(), m["channel_std"], rtol=0.02)


def test_interrupt_and_resume_give_identical_shards(work, tmp_path):
    base, m = work
    out = tmp_path / "out"
    calls = []

    def crash(k, path):
        calls.append(k)
        raise KeyboardInterrupt("simulated crash after the first shard")

    args = (base / "images", out, RES, str(base / "vae"))
    kw = {"batch_size": BATCH, "shard_size": SHARD, "workers": 0, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        prepare(*args, **kw, on_shard_written=crash)
    first = out / m["shards"][0]["file"]
    assert calls == [0] and first.is_file() and not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="resume"):
        PreparedDataset(out)
    before = first.stat()
    written = []
    resumed = prepare(*args, **kw, on_shard_written=lambda k, p: written.append(k))
    assert written == [1, 2]  # the finished shard was not redone
    assert first.stat().st_mtime_ns == before.st_mtime_ns and first.stat().st_ino == before.st_ino
    for s in m["shards"]:
        assert (out / s["file"]).read_bytes() == (base / "out" / s["file"]).read_bytes(), s["file"]
    assert resumed["channel_mean"] == m["channel_mean"] and resumed["channel_std"] == m["channel_std"]
    assert (out / "skipped.tsv").read_text() == (base / "out" / "skipped.tsv").read_text()
    assert prepare(*args, **kw, on_shard_written=lambda k, p: written.append(k)) == resumed  # all done
    assert written == [1, 2]


def test_changed_settings_or_foreign_folders_are_refused(work, tmp_path):
    base, _ = work
    with pytest.raises(DataError, match=r"image_resolution: 16 then, 32 now"):
        prepare(
            base / "images", base / "out", 32, str(base / "vae"), shard_size=SHARD, workers=0, progress=False
        )
    assert (base / "out" / "manifest.json").is_file()  # nothing lost
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.pdf").write_text("precious")
    with pytest.raises(DataError, match="not empty"):
        prepare(base / "images", tmp_path / "foreign", RES, workers=0, progress=False)
    assert (tmp_path / "foreign" / "thesis.pdf").read_text() == "precious"
    with pytest.raises(ConfigError, match="inside the image folder"):
        prepare(base / "images", base / "images" / "prepared", RES, workers=0, progress=False)


def test_strict_stops_at_the_bad_file_and_keeps_finished_shards(work, tmp_path):
    base, _ = work
    with pytest.raises(DataError, match=r"cat/corrupt\.png.*--strict"):
        prepare(
            base / "images", tmp_path / "out", RES, strict=True, shard_size=SHARD, workers=0, progress=False
        )
    assert (tmp_path / "out" / "shard-000000-r000.safetensors").is_file()


def test_flip_stores_the_encoding_of_the_mirrored_image(work, tmp_path):
    base, _ = work
    images = tmp_path / "few"
    images.mkdir()
    for name in ("0.png", "2.png"):
        (images / name).write_bytes((base / "images" / "cat" / name).read_bytes())
    m = prepare(images, tmp_path / "out", RES, str(base / "vae"), flip=True, workers=0, progress=False)
    assert m["flip"] == "stored" and m["num_items"] == 4 and m["num_classes"] == 0
    data = _shards(tmp_path / "out")
    assert data["flipped"].tolist() == [0, 1, 0, 1] and data["index"].tolist() == [0, 0, 1, 1]
    vae = diffusers.AutoencoderKL.from_pretrained(base / "vae").eval()
    img = torch.from_numpy(load_image(images / "2.png", RES)[0]).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        plain, mirrored = vae.encode(img).latent_dist.mean, vae.encode(img.flip(-1)).latent_dist.mean
    np.testing.assert_allclose(data["mean"][2], plain[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(data["mean"][3], mirrored[0].numpy(), atol=1e-5)
    assert not np.allclose(
        data["mean"][3], data["mean"][2][..., ::-1], atol=1e-3
    )  # not just a flipped latent


def test_pixel_preparation_through_the_cli(work, tmp_path, capsys):
    base, _ = work
    out = tmp_path / "pix"
    code = cli_main(
        [
            "prepare",
            "--images",
            str(base / "images"),
            "--out",
            str(out),
            "--resolution",
            str(RES),
            "--shard-size",
            "5",
            "--flip",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    assert code == 0 and "prepared 10 items" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "pixel" and m["vae"] is None and m["flip"] == "random" and m["channels"] == 3
    data = _shards(out)
    files = (out / "files.txt").read_text().splitlines()
    ref = np.stack([load_image(base / "images" / files[i], RES)[0] for i in data["index"]]).transpose(
        0, 3, 1, 2
    )
    np.testing.assert_array_equal(data["pixels"], ref)
    x = ref.astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(m["channel_mean"], x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(m["channel_std"], x.std(axis=(0, 2, 3)), rtol=1e-10)
    ds = PreparedDataset(out, flip=False)
    xb, yb = ds.get_batch(torch.arange(len(ds)), torch.Generator())
    np.testing.assert_allclose(xb.numpy(), x, atol=1e-6)
    assert yb.tolist() == [GOOD[files[i]] for i in data["index"]]

    (tmp_path / "empty").mkdir()
    assert cli_main(["prepare", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")]) == 2
    assert "empty" in capsys.readouterr().err


def test_vae_helpers(work):
    base, _ = work
    vae = load_vae(str(base / "vae"))
    ref = diffusers.AutoencoderKL.from_pretrained(base / "vae").eval()
    assert vae_scaling_factor(vae) == ref.config.scaling_factor == pytest.approx(0.18215)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), ref.state_dict().values()))
    x = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean, logvar = encode_distribution(vae, x)
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        torch.testing.assert_close(mean, dist.mean)
        torch.testing.assert_close(logvar, dist.logvar)
        z = mean * 0.18215
        torch.testing.assert_close(decode(vae, z, batch_size=1), ref.decode(mean).sample.clamp(-1, 1))
    assert decode(vae, z).shape == (2, 3, RES, RES)
    with pytest.raises(DataError, match="not found"):
        load_vae("./no/such/vae")
    with pytest.raises(DataError, match=r"config\.json"):
        load_vae(str(base / "images"))


def test_two_torchrun_ranks_write_disjoint_shards_covering_every_image(work, tmp_path):
    """Pixel mode keeps the two subprocesses free of the (slow) diffusers import; the distributed
    logic (shard blocks, gathering, all-reduced statistics, one manifest) is the same for latents."""
    base, _ = work
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fasterdit",
        "prepare",
        "--images",
        str(base / "images"),
        "--out",
        str(out),
        "--resolution",
        str(RES),
        "--shard-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("prepared 10 items") == 1  # rank 0 reports, once
    md = json.loads((out / "manifest.json").read_text())
    assert [s["rank"] for s in md["shards"]] == [0, 0, 0, 1, 1, 1]  # 12 files, shards of 2, blocks of 3
    assert sorted(p.name for p in out.glob("shard-*")) == [s["file"] for s in md["shards"]]
    per_rank = {
        r: np.concatenate([load_file(str(out / s["file"]))["index"] for s in md["shards"] if s["rank"] == r])
        for r in (0, 1)
    }
    assert not set(per_rank[0]) & set(per_rank[1])
    files = (out / "files.txt").read_text().splitlines()
    covered = sorted(files[i] for i in np.concatenate(list(per_rank.values())))
    assert covered == sorted(GOOD)  # every readable image exactly once
    assert md["skipped"]["count"] == 2 and md["num_items"] == len(GOOD)
    x = _shards(out)["pixels"].astype(np.float64) / 127.5 - 1  # statistics all-reduced over the ranks
    np.testing.assert_allclose(md["channel_mean"], x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(md["channel_std"], x.std(axis=(0, 2, 3)), rtol=1e-10)
    assert md["std"] == pytest.approx(x.std(), rel=1e-10)
