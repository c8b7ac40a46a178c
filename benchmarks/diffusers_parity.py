"""How far is a diffusers DiT from the DiT it was converted from? (docs/diffusers.md, issue #28)

diffusers' ``DiTTransformer2DModel`` embeds the timestep with ``downscale_freq_shift=1`` (frequencies
``10000^(-i/127)``) where the original DiT uses 0 (``10000^(-i/128)``), and ``facebook/DiT-XL-2-256``'s
config leaves ``norm_eps`` at diffusers' 1e-5 where DiT's LayerNorms use 1e-6. This script measures the
output error each causes, in float32, against fasterdit's DiT (the official parameter layout, the
official function), on:

* the EMA weights of a tiny trained run exported by ``fasterdit export`` (DiT-Mi/2 on ``mnist-ae``
  latents, the fasterdit recipe, trained here for a minute), and
* DiT-XL/2 at 256 px (32x32x4 latents, 1000 classes) with the official initialisation and its zeroed
  adaLN/output layers redrawn (N(0, 0.02)): no released weights are read offline, so this measures the
  architecture at full size, not the released checkpoint.

and, end to end on the tiny run, the images of the stock ``DiTPipeline`` against fasterdit's sampler.
The FID a diffusers user gets (stock pipeline, frequency shift isolated) is ``diffusers_fid.py``'s.

    python benchmarks/diffusers_parity.py            # ~2 min on 2 CPU cores
    python benchmarks/diffusers_parity.py --quick    # the tiny run only, fewer steps
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fasterdit.cli import main as cli
from fasterdit.diffusion.sampling import sample
from fasterdit.generate.loading import load_trained
from fasterdit.models import create_model
from fasterdit.models.diffusers_dit import to_diffusers

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks"
#: where docs/diffusers.md holds the table this script writes
START, END = "<!-- diffusers_parity.py: start -->", "<!-- diffusers_parity.py: end -->"
VARIANTS = (
    ("fasterdit export, FasterDiTPipeline (shift 0, eps 1e-6)", 0, 1e-6),
    ("fasterdit export, stock DiTPipeline (shift 1, eps 1e-6)", 1, 1e-6),
    ("facebook/DiT-XL-2-256 config (shift 1, eps 1e-5)", 1, 1e-5),
    ("DiT frequencies, diffusers' eps (shift 0, eps 1e-5)", 0, 1e-5),
)


def _transformer(config: dict[str, Any], state: dict[str, torch.Tensor], shift: int, eps: float):
    from diffusers import DiTTransformer2DModel

    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    tr = DiTTransformer2DModel(**{**kwargs, "norm_eps": eps})
    tr.load_state_dict(state, strict=True)
    for block in tr.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = shift
    return tr.eval()


@torch.no_grad()
def measure(model, label: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Each variant's output error against ``model`` on ``n`` random inputs over t ∈ [0, 999]."""
    g = torch.Generator().manual_seed(seed)
    c, (h, w) = model.in_channels, model.input_size
    x = torch.randn(n, c, h, w, generator=g)
    t = torch.linspace(0.0, 999.0, n)
    y = torch.randint(0, model.num_classes + 1, (n,), generator=g)  # the null class included
    ref = model(x, t, y).double()
    config, state = to_diffusers(model)
    rows = []
    for name, shift, eps in VARIANTS:
        out = _transformer(config, state, shift, eps)(x, timestep=t, class_labels=y).sample.double()
        d = out - ref
        rows.append({
            "model": label, "variant": name, "downscale_freq_shift": shift, "norm_eps": eps, "n": n,
            "max_abs": float(d.abs().max()), "rel_l2": float(d.norm() / ref.norm()),
            "ref_std": float(ref.std()),
        })  # fmt: skip
    return rows


def tiny_run(root: Path, steps: int) -> Path:
    lat, run = root / "lat", root / "run"
    prep = ["prepare", "--images", "mnist", "--split", "heldout", "--vae", "mnist-ae", "--resolution", "32"]
    assert cli([*prep, "--small", "pad", "--out", str(lat), "--no-progress", "--workers", "0"]) == 0
    sets = ["model.name=DiT-Mi/2", f"train.steps={steps}", f"log.ckpt_every={steps}", "log.sample_every=0",
            "log.tensorboard=false", "train.batch_size=32", "optim.lr=3e-3",
            f"data.source={lat}"]  # fmt: skip
    args = ["train", "--config", "mnist-latent", "--run-dir", str(run), "--no-progress"]
    assert cli([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    return run


@torch.no_grad()
def pipeline_images(run: Path, out: Path, steps: int) -> dict[str, Any]:
    """Mean/max |Δ| (pixels in [0, 1]) of the stock DiTPipeline's images against fasterdit's Euler from
    the same noise (t_max = 0.999, as diffusers' flow sigmas start there), unguided, 16 samples."""
    from diffusers import DiTPipeline

    lm = load_trained(run)
    pipe = DiTPipeline.from_pretrained(str(out))
    y = torch.arange(16) % 10
    got = pipe(class_labels=y.tolist(), guidance_scale=1.0, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="pt").images  # fmt: skip
    noise = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    from fasterdit.data.vae import latent_decoder

    res = sample(lm.model, lm.recipe, noise, y=y, sampler="euler", steps=steps, t_max=0.999)
    ref = (latent_decoder("mnist-ae", "cpu")(res.x) + 1) / 2
    d = (got - ref).abs()
    return {"steps": steps, "n": 16, "mean_abs_pixel": float(d.mean()), "max_abs_pixel": float(d.max())}


def report(rows: list[dict[str, Any]], images: dict[str, Any], command: str) -> str:
    lines = [
        "# diffusers parity: the DiT in diffusers' layout against the DiT",
        "",
        f"`{command}` (float32, CPU; {time.strftime('%Y-%m-%d')}).",
        "",
        "| model | variant | max abs error | relative L2 error | output std |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['max_abs']:.2e} | {r['rel_l2']:.2e} | {r['ref_std']:.3f} |"
        )
    lines += [
        "",
        f"End to end (tiny run, stock `DiTPipeline`, {images['steps']} steps, unguided, "
        f"{images['n']} samples): "
        f"images differ from fasterdit's Euler (t_max 0.999) by {images['mean_abs_pixel']:.2e} on average, "
        f"{images['max_abs_pixel']:.2e} at most (pixels in [0, 1]); this includes the frequency shift and "
        "the "
        "stock scheduler's integer timesteps.",
        "",
        "The FID of the stock pipeline against fasterdit's sampler, with the frequency shift isolated, is "
        "measured by `benchmarks/diffusers_fid.py` ([diffusers_fid.md](diffusers_fid.md)).",
    ]
    return "\n".join(lines) + "\n"


def run(quick: bool) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = tiny_run(root, 60 if quick else 300)
        assert cli(["export", "--ckpt", str(train), "--out", str(root / "export")]) == 0
        rows = measure(load_trained(train).model, "DiT-Mi/2, tiny run (EMA)", 16, 0)
        images = pipeline_images(train, root / "export", 10 if quick else 30)
    if not quick:
        torch.manual_seed(0)
        xl = create_model("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000).eval()
        with torch.no_grad():
            for block in [*xl.blocks, xl.final_layer]:
                block.adaLN_modulation[-1].weight.normal_(0, 0.02)
            xl.final_layer.linear.weight.normal_(0, 0.02)
        rows += measure(xl, "DiT-XL/2 256 px (init + redrawn adaLN)", 4, 0)
    command = "python benchmarks/diffusers_parity.py" + (" --quick" if quick else "")
    stem = "diffusers_parity_quick" if quick else "diffusers_parity"
    out = Path(tempfile.gettempdir()) if quick else DOCS
    (out / f"{stem}.json").write_text(json.dumps({"rows": rows, "images": images}, indent=2) + "\n")
    text = report(rows, images, command)
    (out / f"{stem}.md").write_text(text)
    if not quick:  # the table in docs/diffusers.md, between its markers
        doc = REPO / "docs" / "diffusers.md"
        head, rest = doc.read_text().split(START, 1)
        table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
        doc.write_text(f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}")
    print(text)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny run only, written to the temp dir")
    run(p.parse_args().quick)
