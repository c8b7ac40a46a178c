"""``fasterdit export --format diffusers``: a trained run as a diffusers pipeline folder.

The folder is what ``DiTPipeline.from_pretrained`` reads (``model_index.json``, ``transformer/``, ``vae/``,
``scheduler/``), plus ``pipeline_fasterdit.py`` (the pipeline that samples as fasterdit does, loaded with
``custom_pipeline="pipeline_fasterdit"``), ``fasterdit.json`` (what was exported, from which weights,
with which recipe: what ``--ckpt DIR`` reads back) and ``README.md`` (the model card).

Why diffusers writes the components: its ``from_pretrained`` is the reader, so building each component
with diffusers' own classes and ``save_pretrained`` proves, at export time, that the weights fit
(``load_state_dict(strict=True)``) and that the configs are ones diffusers accepts.
diffusers is the optional ``fasterdit[vae]`` extra, imported on first use.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fasterdit.errors import UserError
from fasterdit.export.card import model_card
from fasterdit.export.scheduler import SchedulerPlan, scheduler_plan
from fasterdit.export.vae_fold import LatentAffine, fold_into_vae, latent_affine
from fasterdit.generate.defaults import ResolvedSampling, SamplingFlags, resolve_sampling
from fasterdit.generate.loading import LoadedModel
from fasterdit.generate.provenance import weights_sha256
from fasterdit.models.diffusers_dit import to_diffusers

__all__ = ["EXPORT_META", "PIPELINE_FILE", "ExportResult", "export_diffusers"]

#: the shipped pipeline (module name = file stem, what ``custom_pipeline=`` names)
PIPELINE_FILE = "pipeline_fasterdit.py"
#: what the export records about itself, read back by ``--ckpt DIR``
EXPORT_META = "fasterdit.json"
#: embedded datasets whose class names are their digits (the stock pipeline's ``get_label_ids``)
_DIGIT_DATASETS = ("mnist", "digits")


@dataclass(frozen=True)
class ExportResult:
    out: Path
    scheduler: SchedulerPlan
    vae_folded: bool
    meta: dict[str, Any]


def _diffusers():
    try:  # lazy: the optional "fasterdit[vae]" extra, ~3 s to import
        import diffusers
    except ImportError as err:
        raise UserError("export --format diffusers needs diffusers: pip install 'fasterdit[vae]'") from err
    return diffusers


def _check_exportable(lm: LoadedModel) -> str:
    """The VAE to export with; UserError for models a DiTPipeline cannot hold."""
    if not lm.data.is_latent or lm.data.vae is None:
        raise UserError(
            "export --format diffusers needs a latent model (a DiTPipeline decodes with a VAE); "
            "this run trained on pixels"
        )
    return lm.data.vae


def export_diffusers(lm: LoadedModel, out: str | Path, *, ema: bool) -> ExportResult:
    """Write ``lm`` as a diffusers pipeline folder at ``out`` (which must not exist or be empty).

    Written into a temporary sibling and renamed at the end, so ``out`` is either complete or absent.
    """
    diffusers = _diffusers()
    from fasterdit.data.vae import load_vae, vae_scaling_factor, vae_shift_factor

    vae_name = _check_exportable(lm)
    plan = scheduler_plan(lm.recipe)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; export writes a new folder")
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    config, state = to_diffusers(lm.model)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    transformer = diffusers.DiTTransformer2DModel(**kwargs)
    transformer.load_state_dict(state, strict=True)
    transformer.save_pretrained(tmp / "transformer")

    vae = load_vae(vae_name)
    affine = latent_affine(
        lm.recipe.scaling, vae_scaling_factor(vae), vae_shift_factor(vae), lm.data.channels
    )
    folded = not affine.is_scale
    if folded:
        fold_into_vae(vae, affine)
        vae.register_to_config(scaling_factor=1.0, shift_factor=None)
    else:
        vae.register_to_config(scaling_factor=float(affine.a[0]), shift_factor=None)
    vae.save_pretrained(tmp / "vae")

    schedulers = {
        "DDPMScheduler": diffusers.DDPMScheduler,
        "DPMSolverMultistepScheduler": diffusers.DPMSolverMultistepScheduler,
    }
    schedulers[plan.class_name](**plan.config).save_pretrained(tmp / "scheduler")
    (tmp / PIPELINE_FILE).write_text(resources.files("fasterdit.export").joinpath(PIPELINE_FILE).read_text())

    meta = _export_meta(lm, ema, vae_name, affine, folded, plan)
    r = resolve_sampling("sample", lm, SamplingFlags())  # the defaults of the pipeline and the card's code
    index = _model_index(diffusers.__version__, lm, plan, r)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / "README.md").write_text(model_card(lm, meta, tmp, out.name, r))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return ExportResult(out, plan, folded, meta)


def _model_index(version: str, lm: LoadedModel, plan: SchedulerPlan, r: ResolvedSampling) -> dict[str, Any]:
    """What ``DiffusionPipeline.from_pretrained`` reads: the stock ``DiTPipeline`` and its components,
    plus the shipped pipeline's arguments (the stock one ignores what it does not take). Its default
    steps, guidance and guided channels are what ``fasterdit sample`` resolves for the run (``r``)."""
    index: dict[str, Any] = {
        "_class_name": "DiTPipeline",
        "_diffusers_version": version,
        "scheduler": ["diffusers", plan.class_name],
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "num_classes": lm.model.num_classes,
        "crop": lm.data.origin.resolution if lm.data.origin is not None else None,
        "guide_channels": r.guide_channels,
        "default_steps": int(r.steps),
        "default_guidance_scale": float(r.cfg_scale),
    }
    origin = lm.data.origin
    if origin is not None and origin.dataset in _DIGIT_DATASETS:
        index["id2label"] = {str(i): str(i) for i in range(lm.model.num_classes)}
    return index


def _export_meta(
    lm: LoadedModel, ema: bool, vae_name: str, affine: LatentAffine, folded: bool, plan: SchedulerPlan
) -> dict[str, Any]:
    model = lm.model
    return {
        "format": "fasterdit-diffusers-1",
        "checkpoint": str(lm.path),
        "checkpoint_source": lm.source,
        "step": lm.step,
        "ema": ema,
        "weights_sha256": weights_sha256(lm, ema),
        "model": {"name": lm.cfg.model.name, **model.config},
        "has_null_class": model.y_embedder is not None and model.y_embedder.has_null_class,
        "recipe": lm.recipe.to_dict(),
        "config": lm.cfg.to_dict(),
        "data": lm.data.to_dict(),
        "vae": {
            "source": vae_name,
            "folded": folded,
            "latent_affine": affine.to_dict(),
            "note": (
                "the recipe's data scaling is folded into quant_conv/post_quant_conv; scaling_factor 1"
                if folded
                else "weights unchanged; scaling_factor = the VAE's times the recipe's scale"
            ),
        },
        "scheduler": {"class": plan.class_name, "stock": plan.stock, "shipped": plan.shipped},
    }
