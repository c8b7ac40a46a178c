"""The model card (``README.md``) of an export: Hub front matter and a short text.

Why every number is read, never typed: the card is the export's claim about itself, so the recipe,
the training step, the data and VAE (with SHA-256s) come from the checkpoint's ``meta.json`` and the
written files, and the FID with its protocol from what evaluated this very step: a ``fasterdit eval``
JSON in the run directory whose ``checkpoint`` is this one (it records the label mode), else the
run's ``eval.every`` record of the step in ``metrics.jsonl`` (whose label mode is balanced: the trainer
evaluates nothing else). No record: the card says so instead of a number.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from fasterdit.data.autoencoder import builtin_path
from fasterdit.generate.loading import LoadedModel

__all__ = ["find_eval", "model_card"]

#: what a FID record must hold to be quoted (the protocol of docs/evaluation.md)
_PROTOCOL = ("sampler", "steps", "nfe", "cfg_scale", "num_samples", "seed", "reference", "feature_network")


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


def model_card(lm: LoadedModel, meta: dict[str, Any], out: Path) -> str:
    """The card's text: YAML front matter the Hub reads, then a few lines for people."""
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
                "name": out.name if out.name and not out.name.startswith(".") else "fasterdit-dit",
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
        f"features {ev.get('feature_network')} "
        f"(from {ev['file']})."
        if ev is not None
        else "No FID was recorded for this step (run `fasterdit eval --ckpt` on the checkpoint, then export)."
    )
    body = f"""
# {meta["model"]["name"]} trained with fasterdit ({recipe.name} recipe)

A DiT of the official architecture trained with fasterdit for {lm.step} steps
on {card["fasterdit"]["data"]["dataset"] or lm.data.source}; {"EMA" if meta["ema"] else "raw"} weights.

{fid_line}

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("PATH", custom_pipeline="pipeline_fasterdit")  # fasterdit's sampler
images = pipe(class_labels=[0, 1, 2]).images
```

`DiTPipeline.from_pretrained("PATH")` loads the same folder with the stock pipeline:
{meta["scheduler"]["stock"]}; the shipped pipeline: {meta["scheduler"]["shipped"]}.
"""
    return f"---\n{front}---\n{body}"
