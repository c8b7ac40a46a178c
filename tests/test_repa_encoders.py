"""REPA's feature encoders and the features ``fasterdit prepare`` stores (docs/repa.md).

DINOv2 is checked against transformers itself, on a tiny randomly initialised ``Dinov2Config`` saved to a
folder (no download), with REPA's preprocessing written out here; the shipped ``mnist-ssl`` against its
recorded training settings; stored features against the encoder run on the source images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from fasterdit.data.encoders import grid_tokens, load_encoder
from fasterdit.data.encoders.mnist_ssl import asset_path
from fasterdit.data.prepare import prepare
from fasterdit.data.prepared import PreparedDataset
from fasterdit.errors import ConfigError
from fasterdit.run.config import load_config
from fasterdit.train.trainer import Trainer
from tiny_run import TINY_RUN


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14,
        image_size=56,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Dinov2Model(cfg).eval()
    folder = tmp_path_factory.mktemp("dinov2")
    model.save_pretrained(folder)
    return folder, model


def test_dinov2_features_are_repas_patch_tokens(tiny_dinov2):
    folder, model = tiny_dinov2
    enc = load_encoder(str(folder))
    assert (enc.dim, enc.patch, enc.channels) == (32, 14, 3)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1  # what the trainer holds: [-1, 1]
    grid = (4, 4)
    got = enc(images, grid)
    assert got.shape == (3, 32, 4, 4)
    # REPA's preprocess_raw_image for DINOv2, on uint8-range pixels: /255, ImageNet Normalize, bicubic resize
    # so the patch grid is the DiT's (here 4 x 14 = 56 px), then the patch tokens after the final layernorm
    raw = (images + 1) * 127.5
    x = raw / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = F.interpolate((x - mean) / std, size=56, mode="bicubic")
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state[:, 1:]  # x_norm_patchtokens
    assert torch.allclose(grid_tokens(got), ref, atol=1e-5)
    # gray images are repeated to RGB, as an RGB copy of a gray image
    gray = images[:, :1]
    assert torch.allclose(enc(gray, grid), enc(gray.expand(-1, 3, -1, -1), grid))


def test_unknown_encoder_is_a_config_error(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(ConfigError, match=r"recipe\.align\.encoder"):
        load_encoder(str(tmp_path / "nowhere"))


def test_shipped_mnist_ssl_is_small_self_supervised_and_gives_the_dit_grid():
    path = asset_path()
    assert path.stat().st_size < 1_000_000
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["fasterdit"])
        mine = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 (safe_open is no dict)
    assert "no labels" in meta["data"] and "training split" in meta["data"]
    assert meta["knn10_heldout_accuracy"] >= meta["settings"]["min_knn"]
    assert meta["knn10_heldout_accuracy"] > meta["knn10_heldout_accuracy_random_init"]
    with safe_open(str(path.parent / "classifier_mnist.safetensors"), "pt") as f:  # the evaluation's
        clf = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118
    # another network, not the evaluation classifier: no weight tensor in common
    assert not any(a.shape == b.shape and torch.equal(a, b) for a in mine for b in clf if a.numel() > 8)
    enc = load_encoder("mnist-ssl")
    assert enc(torch.zeros(2, 1, 32, 32) - 1, (4, 4)).shape == (2, 128, 4, 4)  # padded digits: no resize
    assert enc(torch.zeros(2, 1, 8, 8) - 1, (4, 4)).shape == (2, 128, 4, 4)  # 8x8 digits: resized to 32


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_prepare_stores_the_encoders_features_beside_each_item(pixel_folder, tmp_path):
    out = tmp_path / "prepared"
    m = prepare(
        pixel_folder, out, 16, None, batch_size=3, shard_size=4, progress=False, workers=0,
        align_encoder="mnist-ssl", align_grid=2,
    )  # fmt: skip
    assert m["align_features"] == {"encoder": "mnist-ssl", "grid": 2, "dim": 128}
    ds = PreparedDataset(out, flip=False)
    idx = torch.arange(len(ds))
    x, _, f = ds.get_batch_features(idx, torch.Generator().manual_seed(0))
    assert f.shape == (10, 128, 2, 2)
    ref = load_encoder("mnist-ssl")(x, (2, 2))  # the encoder on the stored pixels, float16 storage
    assert torch.allclose(f, ref, atol=2e-3, rtol=1e-3)  # float16 storage; batches of 3 vs 10
    # a random flip mirrors the features with the image
    flip = PreparedDataset(out, flip=True)
    xf, _, ff = flip.get_batch_features(idx, torch.Generator().manual_seed(3))
    mirrored = (xf != x).flatten(1).any(1)
    assert 0 < int(mirrored.sum()) < 10
    assert torch.equal(ff[mirrored], f[mirrored].flip(-1)) and torch.equal(ff[~mirrored], f[~mirrored])
    # the features change the fingerprint: a set without them is not resumed as one with them
    with pytest.raises(Exception, match=r"settings|fingerprint|differ"):
        prepare(pixel_folder, out, 16, None, batch_size=3, shard_size=4, progress=False, workers=0)


@pytest.fixture(scope="module")
def digit_latents(tmp_path_factory):
    """The test bed's path: digits through mnist-ae, features of mnist-ssl on the padded 32x32 images."""
    pytest.importorskip("diffusers")
    out = tmp_path_factory.mktemp("latents") / "digits"
    prepare(
        "digits", out, 32, "mnist-ae", small="pad", batch_size=64, progress=False, workers=0,
        align_encoder="mnist-ssl", flip=True, split="heldout",
    )  # fmt: skip
    return out


def test_latents_store_features_of_the_image_and_of_its_mirror(digit_latents):
    ds = PreparedDataset(digit_latents)
    assert ds.align_features == {"encoder": "mnist-ssl", "grid": 4, "dim": 128}  # 8x8 latents / 2
    _, _, f = ds.get_batch_features(torch.arange(4), torch.Generator().manual_seed(0))
    files = (digit_latents / "files.txt").read_text().split()
    img = np.asarray(Image.open(digit_latents / "source-digits-heldout" / files[0]).convert("RGB"))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = F.pad(x, (12, 12, 12, 12), value=-1.0)  # --small pad: centred on a 32x32 background
    enc = load_encoder("mnist-ssl")
    assert torch.allclose(f[0], enc(x, (4, 4))[0].half().float(), atol=1e-3)
    assert torch.allclose(f[1], enc(x.flip(-1), (4, 4))[0].half().float(), atol=1e-3)  # the stored mirror


def test_training_on_latents_reads_the_stored_features(digit_latents, tmp_path):
    base = [*TINY_RUN, f"data.source={digit_latents}", "model.name=DiT-Mi/2", "train.steps=2", "recipe=sit"]
    align = ["recipe.align.weight=0.5", "recipe.align.depth=1", "recipe.align.projector_dim=16"]
    cfg = load_config("demo", [*base, *align, "recipe.align.encoder=mnist-ssl"])
    res = Trainer(cfg, tmp_path / "ok", install_signal_handlers=False).run()
    assert res.step == 2
    with pytest.raises(ConfigError, match="stores features of 'mnist-ssl'"):
        Trainer(load_config("demo", [*base, *align, "recipe.align.encoder=dinov2-vitb14"]), tmp_path / "x")
    with pytest.raises(ConfigError, match="--align-grid 8"):
        Trainer(load_config("demo", [*base, *align, "model.name=DiT-Mi/1", "recipe.align.encoder=mnist-ssl"]),
                tmp_path / "y")  # fmt: skip
