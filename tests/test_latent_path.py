"""The latent-diffusion path end to end through the product's own commands, on the embedded MNIST and
the shipped autoencoder (no download, no special case): ``prepare --images mnist --vae mnist-ae`` writes
latent shards whose statistics and decodings are checked against the autoencoder itself; ``train`` runs
the three recipes on them; ``sample`` decodes to 28x28 digits with the requested labels; ``eval`` scores
the decoded samples in pixel space; ``snr --data`` reads the latent shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fasterdit.cli import main
from fasterdit.data.autoencoder import MNIST_PADDED
from fasterdit.data.embedded import load_embedded, pad_images
from fasterdit.data.prepared import PreparedDataset
from fasterdit.data.vae import latent_decoder, load_vae

pytest.importorskip("diffusers")

TRAIN = [
    "model.name=DiT-Mi/2",
    "train.steps=3",
    "train.batch_size=8",
    "train.threads=1",
    "log.log_every=1",
    "log.ckpt_every=3",
    "log.sample_every=3",
    "sample.steps=2",
    "sample.per_class=1",
    "log.tensorboard=false",
]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("latent") / "mnist-latent"
    # the 500 held-out digits: the same path as the training split, at a ninth of the encoding time
    args = ["prepare", "--images", "mnist", "--split", "heldout", "--vae", "mnist-ae", "--resolution", "32"]
    args += ["--small", "pad"]
    assert main([*args, "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    yield out
    torch.set_num_threads(threads)


def test_prepare_writes_scaled_latents_with_the_origin(latents):
    m = json.loads((latents / "manifest.json").read_text())
    assert (m["kind"], m["vae"], m["channels"], m["resolution"]) == ("latent", "mnist-ae", 4, 8)
    assert m["origin"] == {"dataset": "mnist", "split": "heldout", "resolution": 28}
    assert m["num_items"] == 500 and m["num_classes"] == 10
    # scaling_factor = 1 / std of the training latents, so a scaled set has pooled std ~1 (as LDM's SD)
    assert abs(m["std"] - 1.0) < 0.1
    ds = PreparedDataset(latents)
    assert ds.origin is not None and ds.origin.dataset == "mnist"
    assert np.array_equal(np.bincount(ds.labels), np.full(10, 50))


def test_the_shards_hold_the_autoencoders_own_posterior(latents):
    """Shard rows equal a direct diffusers encoding of the padded digits they name (files.txt line
    ``index`` is ``<label>/<position in the split>.png``)."""
    ae = load_vae("mnist-ae")
    x, y = load_embedded("mnist", "heldout")
    ds = PreparedDataset(latents)
    rows = np.array([0, 234, 499])
    (shard,) = ds.shard_files
    arrays = {k: v[rows] for k, v in load_file(str(shard)).items()}
    files = (latents / "files.txt").read_text().splitlines()
    pos = [int(files[i].split("/")[1].removesuffix(".png")) for i in arrays["index"]]
    x, y = x[pos], y[pos]
    with torch.no_grad():
        dist = ae.encode(pad_images(x, MNIST_PADDED)).latent_dist
    assert np.allclose(arrays["mean"], dist.mean.numpy(), atol=2e-4)  # float32, other batch blocking
    assert np.allclose(arrays["logvar"], dist.logvar.numpy(), atol=2e-3)
    assert np.array_equal(arrays["label"], y.numpy())
    # and a training draw decodes (cropped back) to the digit it came from
    z, _ = ds.get_batch(torch.from_numpy(rows), torch.Generator().manual_seed(0))
    images = latent_decoder("mnist-ae", "cpu", crop=28)(z)
    assert images.shape == (3, 1, 28, 28)
    assert float((images - x).abs().mean()) < 0.15


@pytest.mark.parametrize("recipe", ["fasterdit", "sit", "dit"])
def test_train_sample_and_eval_each_recipe_on_latents(latents, tmp_path, recipe, no_network):
    run = tmp_path / recipe
    sets = [*TRAIN, f"data.source={latents}", f"recipe={recipe}"]
    args = ["train", "--config", "mnist-latent", "--run-dir", str(run), "--no-progress"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    assert (run / "samples").is_dir() and any((run / "samples").glob("*.png"))  # decoded grids
    npz = tmp_path / f"{recipe}.npz"
    assert main(["sample", "--ckpt", str(run), "--num-samples", "6", "--labels", "3,7", "--steps", "2",
                 "--out", str(npz)]) == 0  # fmt: skip
    with np.load(npz) as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (6, 28, 28, 1)
    assert sorted(set(labels.tolist())) == [3, 7]
    out = tmp_path / f"{recipe}.json"
    assert main(["eval", "--ckpt", str(run), "--num-samples", "20", "--steps", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert 0.0 <= res["class_accuracy"] <= 1.0 and res["fid"] > 0


def test_snr_reads_the_latent_shards(latents, capsys):
    """``snr --data`` on latent shards uses the manifest's statistics of the scaled latents: dit sees them
    as they are, fasterdit standardises them (effective std 1)."""
    args = ["snr", "--recipe", "fasterdit", "--compare", "dit", "--data", str(latents), "--recommend"]
    assert main([*args, "--json", "--mc", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = json.loads((latents / "manifest.json").read_text())
    assert np.allclose(out["data"]["channel_std"], m["channel_std"], rtol=1e-12)
    assert abs(out["data"]["pooled_std"] - m["std"]) < 1e-9
    curves = {c["recipe"]: c for c in out["curves"]}
    assert abs(curves["fasterdit"]["effective_std"] - 1.0) < 1e-9
    assert abs(curves["dit"]["effective_std"] - m["std"]) < 1e-9
    assert curves["dit"]["recommendation"]["k"] > 1.0  # dit's density sits on the noisy side


# --- the silent-failure guard on (d), latents multiplied by 5 ------------------------------------------

X5 = ["recipe=sit", "recipe.scaling.mode=scalar", "recipe.scaling.multiplier=5", "log.sample_every=0"]


def _train_x5(latents, run, extra: list[str]) -> None:
    args = ["train", "--config", "demo", "--run-dir", str(run), "--no-progress"]
    for s in [*TRAIN, f"data.source={latents}", *X5, *extra]:
        args += ["--set", s]
    assert main(args) == 0


def test_train_warns_once_on_latents_multiplied_by_five_and_records_the_pdf(latents, tmp_path, capsys):
    _train_x5(latents, tmp_path / "x5", [])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: sit sees data of std")]
    assert len(warnings) == 1, err
    m = json.loads((latents / "manifest.json").read_text())
    shift = 2 * np.log(5 * m["std"])  # the law moves by 2·ln(effective std), effective std = 5 × measured
    assert f"{shift:+.2f} nats" in warnings[0] and f"measured {m['std']:.4g}" in warnings[0]
    assert f"--set recipe.scaling.multiplier={1 / m['std']:.4g}" in warnings[0]  # 5 × 1/(5·std)
    record = json.loads((tmp_path / "x5" / "snr.json").read_text())["placement"]
    assert record["far"] and record["shift_nats"] == pytest.approx(shift, rel=1e-6)


def test_the_warning_can_be_silenced_and_the_scaled_latents_do_not_warn(latents, tmp_path, capsys):
    _train_x5(latents, tmp_path / "quiet", ["train.snr_warning=false"])
    assert "warning: sit sees data" not in capsys.readouterr().err
    _train_x5(latents, tmp_path / "x1", ["recipe.scaling.multiplier=1"])
    assert "warning: sit sees data" not in capsys.readouterr().err


def test_snr_warns_on_latents_multiplied_by_five(latents, tmp_path, capsys):
    from fasterdit.diffusion.recipe import get_preset

    yml = tmp_path / "sit-x5.yaml"
    get_preset("sit").updated({"scaling.mode": "scalar", "scaling.multiplier": 5.0}).to_yaml(yml)
    assert main(["snr", "--recipe", str(yml), "--data", str(latents), "--mc", "0", "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # the warning goes to stderr: --json stays parseable
    assert captured.err.count("which moves its log-SNR law by +3.") == 1
