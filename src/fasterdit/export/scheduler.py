"""The diffusers scheduler that samples a recipe's model, and how close it comes to fasterdit's sampler.

Why these choices (each checked numerically in tests/test_diffusers_export.py):

* the ``dit`` recipe (DDPM-linear chain, ε, step index input): ``DDPMScheduler`` with DiT's betas,
  ``timestep_spacing="linspace"`` (250 steps keep indices ``round(k·999/249)``, the official respacing),
  no clipping. The stock ``DiTPipeline`` drops the learned variance before the scheduler, so the
  config says ``fixed_small``; the shipped pipeline switches to ``learned_range`` (the recipe's DDPM).
* flow recipes (flow-linear, velocity, ``t·time_scale`` input): ``DPMSolverMultistepScheduler`` of order
  1 on flow sigmas. A first-order DPM-Solver++ step on the flow-linear path is exactly an Euler step
  (``x_s = (1−s)·x̂₀ + s·ε̂`` both ways), so the stock ``DiTPipeline`` runs fasterdit's Euler, but on the
  grid from ``t = 1 − 1/time_scale`` (diffusers' flow sigmas never start at 1), and it feeds the model
  ``int64(t·time_scale)`` (the scheduler casts its timesteps to integers; the steps use the exact
  sigmas). The shipped pipeline steps fasterdit's own grid from ``t = 1``, at the exact times, with
  ``FlowMatchEulerDiscreteScheduler``.

Anything else (cosine/EDM paths, other targets) has no diffusers scheduler here: ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fasterdit.diffusion.recipe import Recipe
from fasterdit.errors import ConfigError

__all__ = ["SchedulerPlan", "scheduler_plan"]


@dataclass(frozen=True)
class SchedulerPlan:
    """A diffusers scheduler (class name and config) and what it runs, in words."""

    class_name: str
    config: dict[str, Any]
    flow: bool
    stock: str  #: what the stock DiTPipeline runs with it
    shipped: str  #: what FasterDiTPipeline runs with it


def scheduler_plan(recipe: Recipe) -> SchedulerPlan:
    """The scheduler of ``recipe``'s sampler (ConfigError for recipes diffusers cannot sample)."""
    sampler = recipe.sampler
    if recipe.schedule == "ddpm-linear" and recipe.target == "eps" and recipe.time_input == "index":
        params = recipe.schedule_obj.params
        config = {
            "num_train_timesteps": int(recipe.schedule_obj.num_steps),
            "beta_start": float(params["beta_start"]),
            "beta_end": float(params["beta_end"]),
            "beta_schedule": "linear",
            "variance_type": "fixed_small",
            "clip_sample": False,
            "prediction_type": "epsilon",
            "timestep_spacing": "linspace",
        }
        learned = " with the learned variance" if recipe.learn_sigma else ""
        return SchedulerPlan(
            "DDPMScheduler", config, flow=False,
            stock="DDPM, fixed-small variance, the official respacing (fasterdit: ddpm variance=fixed-small)",
            shipped=f"DDPM{learned}, the official respacing (fasterdit: ddpm)",
        )  # fmt: skip
    if recipe.schedule == "flow-linear" and recipe.target == "velocity" and recipe.time_input == "scaled":
        scale = recipe.time_scale
        if scale != int(scale):
            raise ConfigError(
                "time_scale", f"diffusers feeds t·num_train_timesteps (an integer), not t·{scale}"
            )
        config = {
            "num_train_timesteps": int(scale),
            "solver_order": 1,
            "prediction_type": "flow_prediction",
            "algorithm_type": "dpmsolver++",
            "use_flow_sigmas": True,
            "flow_shift": float(sampler.shift),
            "final_sigmas_type": "zero",
            "lower_order_final": True,
        }
        return SchedulerPlan(
            "DPMSolverMultistepScheduler", config, flow=True,
            stock=(
                f"Euler from t = 1 - 1/{int(scale)} (fasterdit: euler t_max={1 - 1 / scale:g}), the model "
                f"fed the integer part of t·{int(scale)}"
            ),
            shipped=f"Euler from t = 1, shift {sampler.shift:g} (fasterdit: euler)",
        )  # fmt: skip
    raise ConfigError(
        "recipe",
        f"no diffusers scheduler for schedule {recipe.schedule!r}, target {recipe.target!r}, time input "
        f"{recipe.time_input!r}: export supports the dit recipe (DDPM) and flow-linear velocity (Euler)",
    )
