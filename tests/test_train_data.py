"""Training on `fasterdit prepare` output (pixels, and latents of a tiny random VAE built offline):
the trainer reads the shards, and `fasterdit sample` decodes latents through the run's VAE."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fasterdit.cli import main
from fasterdit.data.source import open_source


def _image_folder(root, n=6, size=12):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            arr[..., c] = 255  # a class-dependent colour
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def _train(run_dir, source, *extra):
    args = ["train", "--config", "demo", "--run-dir", str(run_dir), "--no-progress"]
    sets = [
        f"data.source={source}",
        "model.name=DiT-Mi/2",
        "train.steps=2",
        "train.batch_size=4",
        "train.threads=1",
        "log.ckpt_every=0",
        "log.sample_every=0",
        "sample.steps=2",
        "sample.per_class=1",
        "log.tensorboard=false",
        *extra,
    ]
    for s in sets:
        args += ["--set", s]
    return main(args)


def test_train_and_sample_on_prepared_pixels(tmp_path):
    images = _image_folder(tmp_path / "img")
    out = tmp_path / "prepared"
    assert main(["prepare", "--images", str(images), "--out", str(out), "--resolution", "8"]) == 0
    src = open_source(str(out))
    assert (src.channels, src.resolution, src.num_classes, len(src)) == (3, 8, 2, 12)
    run = tmp_path / "run"
    assert _train(run, out, "data.resolution=8", "data.channels=3") == 0
    assert (run / "samples.png").is_file()
    png = tmp_path / "g.png"
    assert main(["sample", "--ckpt", str(run), "--num-samples", "4", "--steps", "2", "--out", str(png)]) == 0
    assert np.asarray(Image.open(png)).ndim == 3  # RGB grid


def test_train_on_latents_and_decode_through_the_runs_vae(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16,
    )
    vae_dir = tmp_path / "tiny-vae"
    vae.save_pretrained(vae_dir)
    images = _image_folder(tmp_path / "img", size=20)
    out = tmp_path / "latents"
    args = [
        "prepare",
        "--images",
        str(images),
        "--out",
        str(out),
        "--resolution",
        "16",
        "--vae",
        str(vae_dir),
    ]
    assert main(args) == 0
    src = open_source(str(out))
    assert src.is_latent and (src.channels, src.resolution) == (4, 8)
    run = tmp_path / "run"
    assert _train(run, out) == 0
    npz = tmp_path / "s.npz"
    assert main(["sample", "--ckpt", str(run), "--num-samples", "3", "--steps", "2", "--out", str(npz)]) == 0
    with np.load(npz) as f:
        assert f["arr_0"].shape == (3, 16, 16, 3) and f["arr_0"].dtype == np.uint8
