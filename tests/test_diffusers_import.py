"""``--ckpt`` reads a diffusers DiT pipeline folder laid out as ``facebook/DiT-XL-2-256``
(``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``), built here with diffusers' own
classes the way diffusers' conversion script builds it (one embedder copied into every block,
``norm_eps`` left at diffusers' default), and samples it as the official DiT's ``sample.py`` does."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fasterdit.cli import main
from fasterdit.data.vae import load_vae
from fasterdit.generate.loading import DIT_SAMPLE, load_trained

diffusers = pytest.importorskip("diffusers")

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub") / "DiT-tiny-256"
    torch.manual_seed(0)
    tr = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10,
    )  # fmt: skip
    for block in tr.transformer_blocks[1:]:  # the conversion copies DiT's one embedder into every block
        block.norm1.emb.load_state_dict(tr.transformer_blocks[0].norm1.emb.state_dict())
    tr.save_pretrained(root / "transformer")
    cfg = json.loads((root / "transformer" / "config.json").read_text())
    cfg["_class_name"] = "Transformer2DModel"  # as facebook/DiT-XL-2-256 names it
    del cfg["norm_eps"]
    (root / "transformer" / "config.json").write_text(json.dumps(cfg))
    load_vae("mnist-ae").save_pretrained(root / "vae")
    diffusers.DDIMScheduler().save_pretrained(root / "scheduler")
    index = {
        "_class_name": "DiTPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "transformer": ["diffusers", "Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_the_folder_loads_as_the_official_dit_and_computes_dits_function(official):
    lm = load_trained(official)
    assert (lm.source, lm.recipe.name, lm.family, lm.data.vae) == (
        "diffusers",
        "dit",
        DIT_SAMPLE,
        str(official),
    )
    assert (lm.model.num_classes, lm.model.learn_sigma, len(lm.model.blocks)) == (10, True, 2)
    # the reference: diffusers' transformer computing DiT's function (its frequencies, its LayerNorm eps)
    ref_tr = diffusers.DiTTransformer2DModel.from_pretrained(
        str(official / "transformer"), norm_eps=1e-6
    ).eval()
    for block in ref_tr.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([0.0, 17.0, 500.0, 999.0])
    y = torch.tensor([0, 4, 9, 10])
    with torch.no_grad():
        ours = lm.model(x, t, y)
        ref = ref_tr(x, timestep=t, class_labels=y).sample
    assert float(ref.std()) > 0.1
    assert _rel_err(ours, ref) < 1e-5


def test_sample_reads_the_folder_and_decodes_with_its_vae(official, tmp_path, no_network):
    out = tmp_path / "s.npz"
    args = ["sample", "--ckpt", str(official), "--num-samples", "3", "--labels", "2,5", "--steps", "2"]
    assert main([*args, "--out", str(out)]) == 0
    with np.load(out) as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 1)
    assert sorted(set(labels.tolist())) == [2, 5]
    job = json.loads(out.with_suffix(".json").read_text())["job"]
    assert (
        job["checkpoint_source"] == "diffusers"
        and job["weights_file"] == "diffusion_pytorch_model.safetensors"
    )
    assert job["checkpoint_sha256"] == hashlib.sha256((official / WEIGHTS).read_bytes()).hexdigest()


def test_a_block_whose_embedder_copy_differs_is_refused_in_one_line(official, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(official, bad)
    state = load_file(str(bad / WEIGHTS))
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.weight"
    state[key] = state[key] + 1e-3
    save_file(state, str(bad / WEIGHTS))
    assert main(["sample", "--ckpt", str(bad), "--num-samples", "1", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "differs from block 0" in err


def test_sample_to_a_folder_writes_one_png_per_sample_and_the_labels(official, tmp_path):
    """``--out DIR/`` (what torch-fidelity and clean-fid read): the PNGs are the ``.npz``'s images."""
    from PIL import Image

    out = tmp_path / "imgs"
    args = ["sample", "--ckpt", str(official), "--num-samples", "3", "--labels", "2,5", "--steps", "2"]
    assert main([*args, "--out", f"{out}/"]) == 0
    with np.load(out / "samples.npz") as f:
        images, labels = f["arr_0"], f["arr_1"]
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "filename,label" and len(rows) == 4
    for i, row in enumerate(rows[1:]):
        name, label = row.split(",")
        assert int(label) == labels[i]
        assert np.array_equal(np.asarray(Image.open(out / name)), images[i][..., 0])
