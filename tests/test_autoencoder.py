"""The shipped MNIST autoencoder (``mnist-ae``) and the pixel geometry around it: it loads by its short
name through diffusers' ``AutoencoderKL`` like SD-VAE, its metadata agrees with a recomputation, it
reconstructs held-out digits the classifier still recognises, and the pad/crop/export/luminance helpers
agree with independent references (Pillow, numpy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fasterdit.data.autoencoder import MNIST_AE_CONFIG, MNIST_PADDED, builtin_path, latent_statistics
from fasterdit.data.embedded import center_crop_images, export_embedded, load_embedded, pad_images
from fasterdit.data.folder import pad_center
from fasterdit.data.prepare.encode import luminance
from fasterdit.data.vae import latent_decoder, load_vae, vae_downsample_factor, vae_record_name
from fasterdit.errors import DataError
from fasterdit.eval.classifier import classifier_outputs, load_classifier

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def ae():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_vae("mnist-ae")
    torch.set_num_threads(threads)


def test_the_builtin_name_loads_a_diffusers_autoencoder_with_its_own_config(ae):
    assert isinstance(ae, diffusers.AutoencoderKL)
    assert vae_downsample_factor(ae) == 4 and ae.config.latent_channels == 4
    for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
        assert ae.config[key] == MNIST_AE_CONFIG[key]
    assert tuple(ae.config.block_out_channels) == MNIST_AE_CONFIG["block_out_channels"]
    assert vae_record_name("mnist-ae") == "mnist-ae"  # runs record the portable short name
    folder = builtin_path("mnist-ae")
    assert (folder / "diffusion_pytorch_model.safetensors").stat().st_size < 2_000_000


def test_scaling_factor_is_one_over_the_training_latents_std(ae):
    """As LDM set SD's 0.18215: recompute the std of posterior draws on the training split, from the
    posterior moments in float64 numpy (law of total variance), and compare with the shipped config."""
    meta = json.loads((builtin_path("mnist-ae") / "fasterdit.json").read_text())
    x, _ = load_embedded("mnist", "train")
    with torch.no_grad():
        dist = ae.encode(pad_images(x, MNIST_PADDED)).latent_dist
    mean, var = dist.mean.double().numpy(), dist.var.double().numpy()
    std = float(np.sqrt(mean.var() + var.mean()))
    assert abs(ae.config.scaling_factor * std - 1.0) < 1e-4
    assert abs(meta["latents"]["std"] / std - 1.0) < 1e-4
    assert abs(latent_statistics(ae, pad_images(x[:300], MNIST_PADDED))["std"] / std - 1.0) < 0.1
    assert abs(std - 1.0) > 0.25, "the raw latents are meant to keep a std of their own, as SD-VAE's"


def test_round_trip_keeps_held_out_digits_recognisable(ae):
    x, y = load_embedded("mnist", "heldout")
    pick = torch.arange(0, 500, 25)  # 20 digits, two of each class
    decode = latent_decoder("mnist-ae", "cpu", crop=28)
    with torch.no_grad():
        z = ae.encode(pad_images(x[pick], MNIST_PADDED)).latent_dist.mean * ae.config.scaling_factor
    recon = decode(z)
    assert recon.shape == (20, 1, 28, 28)
    assert float((recon - x[pick]).abs().mean()) < 0.1  # in [-1, 1]: under 5% of the range
    clf, _ = load_classifier("mnist")
    _, logits = classifier_outputs(clf, recon)
    assert int((logits.argmax(1) == y[pick]).sum()) >= 19


def test_pad_and_crop_are_inverse_and_match_the_pillow_pad():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    x = torch.from_numpy(arr).float().div(127.5).sub(1.0)[None, None]
    padded = pad_images(x, 32)
    assert padded.shape == (1, 1, 32, 32)
    assert torch.equal(center_crop_images(padded, 28), x)
    assert bool((padded[..., :2, :] == -1).all()) and bool((padded[..., :, 30:] == -1).all())
    pil = np.asarray(pad_center(Image.fromarray(arr, "L").convert("RGB"), 32))[..., 0]
    assert torch.equal(torch.from_numpy(pil.copy()).float().div(127.5).sub(1.0), padded[0, 0])
    with pytest.raises(DataError):
        pad_images(x, 20)
    with pytest.raises(DataError):
        center_crop_images(x, 30)


def test_luminance_matches_pillow():
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    assert np.array_equal(luminance(rgb), want)
    gray = np.repeat(rgb[..., :1], 3, axis=-1)
    assert np.array_equal(luminance(gray), gray[..., 0])


def test_export_writes_the_embedded_pixels_losslessly_once(tmp_path):
    folder = export_embedded("mnist", "heldout", tmp_path / "src")
    x, y = load_embedded("mnist", "heldout")
    files = sorted(folder.glob("*/*.png"), key=lambda p: p.name)
    assert len(files) == len(y)
    for j in (0, 7, len(files) - 1):
        f = folder / str(int(y[j])) / f"{j:05d}.png"
        got = np.asarray(Image.open(f)).astype(np.float64)
        assert np.array_equal(got, np.round((x[j, 0].double().numpy() + 1.0) * 127.5))
    mtime = files[0].stat().st_mtime_ns
    export_embedded("digits", "heldout", folder)  # complete: reused as it is
    assert files[0].stat().st_mtime_ns == mtime


def test_the_latent_gauge_scales_the_latents_and_keeps_the_autoencoder():
    """``set_latent_gauge(c)``: the posterior of every image becomes N(c·μ, c²·σ²) and decoding c·z gives
    what decoding z gave, checked in float64 on a random (untrained) diffusers AutoencoderKL."""
    from fasterdit.data.autoencoder import MNIST_AE16_CONFIG, set_latent_gauge

    torch.manual_seed(0)
    ae = diffusers.AutoencoderKL(**MNIST_AE16_CONFIG).double().eval()
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64) * 2 - 1
    z = torch.randn(3, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        before = ae.encode(x).latent_dist
        mean, std, out = before.mean.clone(), before.std.clone(), ae.decode(z).sample
        set_latent_gauge(ae, 5.5)
        after = ae.encode(x).latent_dist
        torch.testing.assert_close(after.mean, 5.5 * mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(after.std, 5.5 * std, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ae.decode(5.5 * z).sample, out, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="c > 0"):
        set_latent_gauge(ae, 0.0)


def test_the_second_builtin_has_16_channels_and_sd_vae_statistics():
    """``mnist-ae16`` (SNR validation's data set (b)): loads by name, 16 channels, the raw latent std of
    SD-VAE (1/0.18215, recomputed here in float64 from the posterior moments), held-out digits survive."""
    ae16 = load_vae("mnist-ae16")
    assert ae16.config.latent_channels == 16 and vae_downsample_factor(ae16) == 4
    x, _ = load_embedded("mnist", "train")
    with torch.no_grad():
        dist = ae16.encode(pad_images(x, MNIST_PADDED)).latent_dist
    mean, var = dist.mean.double().numpy(), dist.var.double().numpy()
    std = float(np.sqrt(mean.var() + var.mean()))
    assert abs(std * 0.18215 - 1.0) < 1e-3 and abs(ae16.config.scaling_factor * std - 1.0) < 1e-4
    held, labels = load_embedded("mnist", "heldout")
    pick = torch.arange(0, 500, 25)
    decode = latent_decoder("mnist-ae16", "cpu", crop=28)
    with torch.no_grad():
        z = ae16.encode(pad_images(held[pick], MNIST_PADDED)).latent_dist.mean * ae16.config.scaling_factor
    recon = decode(z)
    assert float((recon - held[pick]).abs().mean()) < 0.1
    clf, _ = load_classifier("mnist")
    assert int((classifier_outputs(clf, recon)[1].argmax(1) == labels[pick]).sum()) >= 19
