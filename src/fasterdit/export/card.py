"""The model card (``README.md``) of an export: Hub front matter and a short text.

Why every number is read, never typed: the card is the export's claim about itself, so the recipe,
the training step, the data and VAE (with SHA-256s) come from the checkpoint's ``meta.json`` and the
written files, and the FID with its protocol from what evaluated this very step: a ``fasterdit eval``
JSON in the run directory whose ``checkpoint`` is this one (it records the label mode), else the
run's ``eval.every`` record of the step in ``metrics.jsonl`` (whose label mode is balanced: the trainer
evaluates nothing else). No record: the card says so instead of a number. The usage snippet samples
with the run's own resolved defaults (``resolve_sampling("sample", ...)``: steps, guidance, the grid's
classes), so that the card's code draws what ``fasterdit sample`` draws by default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from fasterdit.data.autoencoder import builtin_path
from fasterdit.generate.defaults import ResolvedSampling, grid_classes
from fasterdit.generate.loading import LoadedModel

__all__ = ["find_eval", "model_card", "usage_snippet"]

#: what a FID record must hold to be quoted (the protocol of docs/evaluation.md); ``resize``: how the
#: images were resized for the feature network (absent from records written before it was recorded)
_PROTOCOL = (
    "sampler", "steps", "nfe", "cfg_scale", "num_samples", "seed", "reference", "feature_network", "resize",
)  # fmt: skip


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _run_dir(lm: LoadedModel) -> Path | None:
    """RUN for a checkpoint RUN/checkpoints/step-k (None for anything else)."""
    if lm.source != "fasterdit" or lm.path.parent.name != "checkpoints":
        return None
    return lm.path.parent.parent


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def find_eval(lm: LoadedModel) -> dict[str, Any] | None:
    """The FID record of this checkpoint's step, with where it was read (``"file"``), or None."""
    run = _run_dir(lm)
    if run is None or lm.step is None:
        return None
    for path in sorted(run.glob("*.json")):
        rec = _read_json(path)
        if rec is None or "fid" not in rec or rec.get("step") != lm.step:
            continue
        if Path(str(rec.get("checkpoint", ""))).resolve() in (lm.path.resolve(), run.resolve()):
            return {**rec, "file": path.name, "writer": "fasterdit eval"}
    metrics = run / "metrics.jsonl"
    found = None
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("kind") == "eval" and rec.get("step") == lm.step and "fid" in rec:
                found = {**rec, "label_mode": "balanced", "file": "metrics.jsonl", "writer": "eval.every"}
    return found


def _vae_files(meta: dict[str, Any], out: Path) -> dict[str, Any]:
    source = str(meta["vae"]["source"])
    builtin = builtin_path(source)
    folder = builtin if builtin is not None else Path(source)
    return {
        "source": source,
        "source_sha256": _sha256(folder / "diffusion_pytorch_model.safetensors"),
        "exported_sha256": _sha256(out / "vae" / "diffusion_pytorch_model.safetensors"),
        "folded_scaling": bool(meta["vae"]["folded"]),
    }


def _data(lm: LoadedModel) -> dict[str, Any]:
    d = lm.data
    manifest = Path(d.source) / "manifest.json"
    return {
        "source": d.source,
        "dataset": d.origin.dataset if d.origin is not None else None,
        "split": d.origin.split if d.origin is not None else None,
        "items": d.size,
        "shape": [d.channels, d.resolution, d.resolution],
        "classes": d.num_classes,
        "manifest_sha256": _sha256(manifest),
    }


def _resize_words(resize: dict[str, Any] | str | None) -> str:
    """A FID record's ``resize`` in words (``to 299 bilinear, antialias false, align_corners false``)."""
    if not isinstance(resize, dict):
        return "not recorded"
    if resize.get("filter") == "none":
        return f"none (fed at {resize.get('to')}x{resize.get('to')})"
    return (
        f"to {resize.get('to')}x{resize.get('to')} {resize.get('filter')}, antialias "
        f"{str(resize.get('antialias')).lower()}, align_corners {str(resize.get('align_corners')).lower()}"
    )


def usage_snippet(lm: LoadedModel, folder: str, r: ResolvedSampling, null_class: bool) -> str:
    """The card's Python block: the documented one-line load, then one sample per grid class with the
    run's resolved steps and guidance (1 when the model has no null class to guide with)."""
    classes = grid_classes(lm.cfg, lm.data.num_classes) if lm.data.num_classes > 0 else []
    scale = r.cfg_scale if null_class and classes else 1.0
    where = r.sources["cfg_scale"] if scale == r.cfg_scale else "no null class: unguided"
    labels = f"class_labels={classes}, " if classes else ""
    return f"""```python
import torch
from diffusers import DiffusionPipeline

DIR = {json.dumps(folder)}  # this folder (run from its parent directory), or its Hub id once uploaded
pipe = DiffusionPipeline.from_pretrained(DIR, custom_pipeline="pipeline_fasterdit", trust_remote_code=True)
generator = torch.Generator().manual_seed({r.seed})
# the run's defaults: {r.steps} steps ({r.sources["steps"]}), guidance {scale:g} ({where})
images = pipe(
    {labels}guidance_scale={scale!r}, num_inference_steps={r.steps}, generator=generator
).images
```"""


def model_card(lm: LoadedModel, meta: dict[str, Any], out: Path, name: str, r: ResolvedSampling) -> str:
    """The card's text: YAML front matter the Hub reads, then a few lines for people. ``out``: where the
    files are being written; ``name``: the folder's final name; ``r``: the run's sampling defaults."""
    ev = find_eval(lm)
    recipe = lm.recipe
    card: dict[str, Any] = {
        "library_name": "diffusers",
        "tags": ["fasterdit", "dit", "class-conditional", "diffusion"],
        "fasterdit": {
            "recipe": recipe.name,
            "schedule": recipe.schedule,
            "target": recipe.target,
            "step": lm.step,
            "ema": meta["ema"],
            "weights_sha256": meta["weights_sha256"],
            "model": meta["model"]["name"],
            "data": _data(lm),
            "vae": _vae_files(meta, out),
            "scheduler": meta["scheduler"],
        },
    }
    if ev is not None:
        protocol = {k: ev.get(k) for k in _PROTOCOL}
        protocol.update(label_mode=ev.get("label_mode"), recorded_in=ev["file"], writer=ev["writer"])
        card["fasterdit"]["eval"] = {"fid": ev["fid"], **protocol}
        card["model-index"] = [
            {
                "name": name or "fasterdit-dit",
                "results": [
                    {
                        "task": {"type": "image-generation"},
                        "dataset": {
                            "name": str(ev.get("reference")),
                            "type": str(card["fasterdit"]["data"]["dataset"]),
                        },
                        "metrics": [
                            {"type": "fid", "value": ev["fid"], "name": f"FID ({ev.get('feature_network')})"}
                        ],
                    }
                ],
            }
        ]
    front = yaml.safe_dump(card, sort_keys=False, default_flow_style=False, allow_unicode=True)
    fid_line = (
        f"FID {ev['fid']:.4g} at step {lm.step}: {ev.get('num_samples')} samples, {ev.get('sampler')} "
        f"{ev.get('steps')} steps (NFE {ev.get('nfe')}), CFG {ev.get('cfg_scale')}, {ev.get('label_mode')} "
        f"labels, seed {ev.get('seed')}, reference {ev.get('reference')}, "
        f"features {ev.get('feature_network')}, images resized {_resize_words(ev.get('resize'))} "
        f"(from {ev['file']})."
        if ev is not None
        else "No FID was recorded for this step (run `fasterdit eval --ckpt` on the checkpoint, then export)."
    )
    body = f"""
# {meta["model"]["name"]} trained with fasterdit ({recipe.name} recipe)

A DiT of the official architecture trained with fasterdit for {lm.step} steps
on {card["fasterdit"]["data"]["dataset"] or lm.data.source}; {"EMA" if meta["ema"] else "raw"} weights.

{fid_line}

{usage_snippet(lm, name, r, bool(meta["has_null_class"]))}

The pipeline steps {meta["scheduler"]["shipped"]}; the run's own sampler is {r.sampler}
({r.sources["sampler"]}). `trust_remote_code=True` lets diffusers run `pipeline_fasterdit.py` from this
folder: read it first (it imports only torch and diffusers).

`DiTPipeline.from_pretrained(DIR)` loads the same folder with the stock pipeline:
{meta["scheduler"]["stock"]}.
"""
    return f"---\n{front}---\n{body}"
