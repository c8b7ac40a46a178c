"""``fasterdit export --format diffusers`` on tiny latent runs, checked against diffusers itself.

The references are diffusers' own classes (``DiTTransformer2DModel``, ``AutoencoderKL``, ``DiTPipeline``,
the shipped pipeline loaded by ``DiffusionPipeline.from_pretrained``) on one side and fasterdit's sampler
and decoder on the other: the export is right when the two compute the same samples.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffusers_runs import prepare_latents, rel_err, train_run
from fasterdit.cli import main
from fasterdit.data.autoencoder import MNIST_PADDED, builtin_path
from fasterdit.data.embedded import load_embedded, pad_images
from fasterdit.data.vae import decode, latent_decoder, load_vae, vae_scaling_factor
from fasterdit.diffusion.sampling import sample
from fasterdit.generate.decode import decoder_for
from fasterdit.generate.loading import load_trained
from fasterdit.run.checkpoint import read_meta

diffusers = pytest.importorskip("diffusers")

#: the one line docs/diffusers.md gives diffusers users
ONE_LINE = (
    'DiffusionPipeline.from_pretrained(DIR, custom_pipeline="pipeline_fasterdit", trust_remote_code=True)'
)


@dataclass(frozen=True)
class Exported:
    run: Path
    out: Path


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield prepare_latents(tmp_path_factory.mktemp("latent") / "mnist-latent")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flow(latents, tmp_path_factory):
    """The fasterdit recipe (flow, per-channel standardisation), with a ``fasterdit eval`` record."""
    root = tmp_path_factory.mktemp("flow")
    run = train_run(latents, root / "run", "fasterdit")
    ev = ["eval", "--ckpt", str(run), "--num-samples", "20", "--steps", "2", "--out", str(run / "eval.json")]
    assert main(ev) == 0
    assert main(["export", "--ckpt", str(run), "--out", str(root / "export")]) == 0
    return Exported(run, root / "export")


@pytest.fixture(scope="module")
def ddpm(latents, tmp_path_factory):
    """The dit recipe (DDPM chain, ε, learned variance)."""
    root = tmp_path_factory.mktemp("ddpm")
    run = train_run(latents, root / "run", "dit")
    assert main(["export", "--ckpt", str(run), "--out", str(root / "export")]) == 0
    return Exported(run, root / "export")


def _shipped(out: Path):
    return diffusers.DiffusionPipeline.from_pretrained(
        str(out), custom_pipeline="pipeline_fasterdit", trust_remote_code=True
    )


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _dit_frequencies(transformer) -> None:
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0


# --- the transformer --------------------------------------------------------------------------------


def test_diffusers_transformer_with_dit_frequencies_equals_the_dit_on_the_ema_weights(flow):
    lm = load_trained(flow.run)  # EMA weights
    tr = diffusers.DiTTransformer2DModel.from_pretrained(str(flow.out / "transformer")).eval()
    assert (tr.config.num_embeds_ada_norm, tr.config.out_channels, tr.config.norm_eps) == (10, 4, 1e-6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 8, 8, generator=g)
    t = lm.recipe.model_time(torch.rand(6, generator=g, dtype=torch.float64))
    y = torch.tensor([0, 3, 9, 10, 5, 10])  # 10: the null class
    with torch.no_grad():
        ref = lm.model(x, t, y)
        stock = tr(x, timestep=t, class_labels=y).sample
        _dit_frequencies(tr)
        exact = tr(x, timestep=t, class_labels=y).sample
    assert float(ref.std()) > 0.1  # trained away from the zero-initialised output
    assert rel_err(exact, ref) < 1e-5
    assert rel_err(stock, ref) > 10 * rel_err(exact, ref)  # diffusers' own frequencies are another function


def test_export_then_import_gives_the_same_weights_bit_for_bit(flow):
    run, back = load_trained(flow.run), load_trained(flow.out)
    a, b = run.model.state_dict(), back.model.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert back.source == "diffusers" and back.step == run.step
    assert back.recipe.name == "fasterdit" and back.recipe.scaling.mode == "none"  # folded into vae/
    assert back.weights_sha256 == hashlib.sha256((flow.out / back.weights_file).read_bytes()).hexdigest()


def test_no_ema_exports_the_raw_weights_and_a_used_folder_is_refused(flow, tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["export", "--ckpt", str(flow.run), "--no-ema", "--out", str(out)]) == 0
    raw, back = load_trained(flow.run, ema=False), load_trained(out)
    assert all(torch.equal(v, back.model.state_dict()[k]) for k, v in raw.model.state_dict().items())
    assert not torch.equal(
        raw.model.final_layer.linear.weight, load_trained(flow.run).model.final_layer.linear.weight
    )
    assert json.loads((out / "fasterdit.json").read_text())["ema"] is False
    capsys.readouterr()
    assert main(["export", "--ckpt", str(flow.run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an empty folder" in err and len(err.splitlines()) == 1


# --- the VAE ----------------------------------------------------------------------------------------


def test_the_vae_folds_the_per_channel_standardisation_both_ways(flow):
    lm = load_trained(flow.run)
    scaling = lm.recipe.scaling
    assert scaling.mode == "channel"  # not a scaling_factor: folded into the 1x1 convolutions
    orig = load_vae("mnist-ae")
    vae = diffusers.AutoencoderKL.from_pretrained(str(flow.out / "vae")).eval()
    assert vae.config.scaling_factor == 1.0
    sf = vae_scaling_factor(orig)
    # decoder: a diffusion-space latent decodes as fasterdit decodes its data-space inverse
    x = _noise(4, 2)
    with torch.no_grad():
        ref = decode(orig, scaling.inverse(x))
        got = vae.decode(x).sample.clamp(-1, 1)
    assert float((got - ref).abs().max()) < 1e-4
    # encoder: the posterior of the diffusion-space latent, N(A·mean + B, A²·var)
    images, _ = load_embedded("mnist", "heldout")
    img = pad_images(images[:4], MNIST_PADDED)
    with torch.no_grad():
        p0, p1 = orig.encode(img).latent_dist, vae.encode(img).latent_dist
    mean_ref = scaling.forward(p0.mean.double() * sf)
    std_ref = scaling.forward(p0.mean.double() * sf + p0.std.double() * sf) - mean_ref
    assert torch.allclose(p1.mean.double(), mean_ref, atol=1e-4)
    assert torch.allclose(p1.std.double(), std_ref, rtol=1e-4)


# --- the samplers -----------------------------------------------------------------------------------


def test_shipped_pipeline_guides_the_ten_class_model_as_fasterdit_euler(flow):
    lm = load_trained(flow.run)
    pipe = _shipped(flow.out)
    assert type(pipe).__name__ == "FasterDiTPipeline"
    noise, y = _noise(4, 3), torch.tensor([3, 7, 0, 9])
    kw = dict(class_labels=y.tolist(), guidance_scale=4.0, num_inference_steps=6, latents=noise)
    lat = pipe(**kw, output_type="latent").images
    images = pipe(**kw, output_type="pt").images
    with torch.no_grad():
        res = sample(lm.model, lm.recipe, noise, y=y, sampler="euler", steps=6, cfg_scale=4.0)
        ref = decoder_for(lm.data, torch.device("cpu"))(res.x)
    assert rel_err(lat, lm.recipe.scaling.forward(res.x)) < 1e-5
    assert images.shape == (4, 1, 28, 28)  # cropped back to the digits' size
    assert float((images - (ref + 1) / 2).abs().max()) < 1e-4


def test_the_documented_line_loads_offline_and_guides(flow, no_network):
    pipe = eval(ONE_LINE, {"DiffusionPipeline": diffusers.DiffusionPipeline, "DIR": str(flow.out)})
    doc = (Path(__file__).parents[1] / "docs" / "diffusers.md").read_text()
    assert ONE_LINE in doc
    g = torch.Generator().manual_seed(0)
    guided = pipe(class_labels=[3, 7], guidance_scale=4.0, num_inference_steps=4, generator=g).images
    g = torch.Generator().manual_seed(0)
    plain = pipe(class_labels=[3, 7], guidance_scale=1.0, num_inference_steps=4, generator=g).images
    assert [im.size for im in guided] == [(28, 28)] * 2
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(guided, plain))


class _IntegerTime:
    """The DiT fed ``int64(t·1000)``: diffusers' DPM-Solver casts its timesteps to integers (its sigmas,
    which the steps use, stay exact)."""

    def __init__(self, model):
        self.model, self.num_classes = model, model.num_classes

    def __call__(self, x, t, y):
        return self.model(x, t.floor(), y)


def test_stock_dit_pipeline_samples_the_flow_export_as_euler_from_t_0999(flow):
    lm = load_trained(flow.run)
    pipe = diffusers.DiTPipeline.from_pretrained(str(flow.out))
    pil = pipe(class_labels=[1, 2], guidance_scale=1.0, num_inference_steps=3).images  # as it comes
    assert [im.size for im in pil] == [(32, 32)] * 2
    _dit_frequencies(pipe.transformer)  # isolate the scheduler from the timestep frequencies
    y = torch.tensor([4, 8])
    out = pipe(class_labels=y.tolist(), guidance_scale=1.0, num_inference_steps=5,
               generator=torch.Generator().manual_seed(5), output_type="pt").images  # fmt: skip
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        res = sample(_IntegerTime(lm.model), lm.recipe, noise, y=y, sampler="euler", steps=5, t_max=0.999)
        ref = latent_decoder("mnist-ae", "cpu")(res.x)  # 32x32, as the stock pipeline leaves them
    assert float((out - (ref + 1) / 2).abs().max()) < 1e-4


def test_shipped_pipeline_runs_the_dit_recipes_ddpm_with_the_learned_variance(ddpm):
    lm = load_trained(ddpm.run)
    assert lm.recipe.learn_sigma and lm.recipe.sampler.name == "ddpm"
    pipe = _shipped(ddpm.out)
    noise, y = _noise(3, 4), torch.tensor([2, 5, 8])
    lat = pipe(class_labels=y.tolist(), guidance_scale=1.5, num_inference_steps=5, latents=noise,
               generator=torch.Generator().manual_seed(9), output_type="latent").images  # fmt: skip
    with torch.no_grad():
        res = sample(lm.model, lm.recipe, noise, y=y, sampler="ddpm", steps=5, cfg_scale=1.5,
                     generator=torch.Generator().manual_seed(9))  # fmt: skip
    assert rel_err(lat, lm.recipe.scaling.forward(res.x)) < 1e-4


def test_stock_dit_pipeline_runs_ddpm_with_the_fixed_small_variance(ddpm):
    lm = load_trained(ddpm.run)
    pipe = diffusers.DiTPipeline.from_pretrained(str(ddpm.out))
    _dit_frequencies(pipe.transformer)
    y = torch.tensor([1, 6])
    torch.manual_seed(11)  # the stock pipeline draws its step noise from the global generator
    out = pipe(class_labels=y.tolist(), guidance_scale=1.0, num_inference_steps=5, output_type="pt").images
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        res = sample(
            lm.model, lm.recipe, noise, y=y, sampler="ddpm", steps=5, variance="fixed-small", generator=g
        )
        ref = latent_decoder(str(ddpm.out), "cpu")(lm.recipe.scaling.forward(res.x))
    assert float((out - (ref + 1) / 2).abs().max()) < 1e-4


# --- the model card ---------------------------------------------------------------------------------


def test_model_card_quotes_the_runs_own_records(flow):
    text = (flow.out / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    card = front["fasterdit"]
    ckpt = load_trained(flow.run).path
    meta = read_meta(ckpt)
    ev = json.loads((flow.run / "eval.json").read_text())
    assert (card["recipe"], card["step"], card["ema"]) == (meta["recipe"]["name"], meta["step"], True)
    assert card["weights_sha256"] == meta["sha256"]["ema.safetensors"]
    assert card["data"]["manifest_sha256"] == hashlib.sha256((Path(meta["data"]["source"]) / "manifest.json")
                                                             .read_bytes()).hexdigest()  # fmt: skip
    ae = builtin_path("mnist-ae") / "diffusion_pytorch_model.safetensors"
    assert card["vae"]["source_sha256"] == hashlib.sha256(ae.read_bytes()).hexdigest()
    exported = flow.out / "vae" / "diffusion_pytorch_model.safetensors"
    assert card["vae"]["exported_sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    for key in ("fid", "sampler", "steps", "nfe", "cfg_scale", "num_samples", "seed", "label_mode",
                "reference", "feature_network", "resize"):  # fmt: skip
        assert card["eval"][key] == ev[key], key
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == ev["fid"]
    assert ev["resize"]["filter"] == "none" and "images resized none (fed at 28x28)" in text


def test_the_cards_python_block_runs_offline_and_returns_images(flow, no_network, monkeypatch):
    """The README's code, as a user copies it: the documented one-line load, then the run's own defaults
    (read here from the run's config.yaml: every class of the grid, sample.steps, sample.cfg_scale)."""
    text = (flow.out / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert ONE_LINE in block
    run_cfg = yaml.safe_load((flow.run / "config.yaml").read_text())
    steps, scale = run_cfg["sample"]["steps"], run_cfg["sample"]["cfg_scale"]
    assert f"num_inference_steps={steps}," in block and f"guidance_scale={float(scale)!r}," in block
    assert "class_labels=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]," in block  # mnist: 10 classes, sample.classes null
    monkeypatch.chdir(flow.out.parent)  # the card names its folder, relative to where it is run
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    images = namespace["images"]
    assert len(images) == 10 and {im.size for im in images} == {(28, 28)}
    assert len({np.asarray(im).tobytes() for im in images}) == 10  # ten different samples


def test_sample_and_eval_read_the_export_as_the_run_they_came_from(flow, tmp_path):
    """``--ckpt EXPORT`` samples the run's images: the same noise, labels and sampler, decoded by the
    folded VAE instead of the data scaling and mnist-ae (float rounding: at most one 8-bit level)."""
    arrays = []
    for name, ckpt in (("run", flow.run), ("export", flow.out)):
        out = tmp_path / f"{name}.npz"
        args = ["sample", "--ckpt", str(ckpt), "--num-samples", "4", "--labels", "3,7", "--steps", "3"]
        assert main([*args, "--out", str(out)]) == 0
        with np.load(out) as f:
            arrays.append((f["arr_0"].astype(int), f["arr_1"]))
    (a, ya), (b, yb) = arrays
    assert np.array_equal(ya, yb) and a.shape == b.shape == (4, 28, 28, 1)
    assert np.abs(a - b).max() <= 1
    ev = tmp_path / "ev.json"
    assert (
        main(["eval", "--ckpt", str(flow.out), "--num-samples", "20", "--steps", "2", "--out", str(ev)]) == 0
    )
    assert json.loads(ev.read_text())["fid"] > 0


def test_the_sit_recipe_exports_imports_bit_exactly_and_samples_as_fasterdit_euler(latents, tmp_path):
    """The third preset (flow, velocity, the VAE's scalar ``scaling_factor`` instead of a standardisation):
    import of the export is bit-exact and the shipped pipeline's guided samples equal fasterdit's Euler."""
    run = train_run(latents, tmp_path / "run", "sit")
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "export")]) == 0
    lm, back = load_trained(run), load_trained(tmp_path / "export")
    a, b = lm.model.state_dict(), back.model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    noise, y = _noise(3, 5), torch.tensor([1, 4, 8])
    kw = dict(class_labels=y.tolist(), guidance_scale=2.0, num_inference_steps=5, latents=noise)
    lat = _shipped(tmp_path / "export")(**kw, output_type="latent").images
    with torch.no_grad():
        res = sample(lm.model, lm.recipe, noise, y=y, sampler="euler", steps=5, cfg_scale=2.0)
    assert rel_err(lat, lm.recipe.scaling.forward(res.x)) < 1e-5
