"""The diffusion core: schedules, prediction targets, timestep samplers, data scaling, losses and the Recipe.

Small modules with one job each (see docs/diffusion.md for every formula):

* :mod:`.schedules`: α(t), σ(t), derivatives, log-SNR and its inverse;
* :mod:`.targets`: ε / x₀ / v / velocity targets and conversions (and the score);
* :mod:`.timesteps`: timestep samplers with exact densities p(t);
* :mod:`.scaling`: data scaling (scalar, std modulation, per-channel standardisation);
* :mod:`.losses`: MSE (+ weighting), velocity-direction loss, DiT hybrid VB loss;
* :mod:`.recipe`: the Recipe that owns every training-strategy choice, and the presets.
"""

from fasterdit.diffusion.losses import DiffusionLoss, direction_loss
from fasterdit.diffusion.recipe import PRESETS, Recipe, get_preset, load_recipe
from fasterdit.diffusion.scaling import DataScaling
from fasterdit.diffusion.schedules import SCHEDULES, Schedule, get_schedule
from fasterdit.diffusion.targets import TARGETS, convert, target_from_data
from fasterdit.diffusion.timesteps import TIMESTEP_SAMPLERS, TimestepSampler, get_timestep_sampler

__all__ = [
    "PRESETS",
    "SCHEDULES",
    "TARGETS",
    "TIMESTEP_SAMPLERS",
    "DataScaling",
    "DiffusionLoss",
    "Recipe",
    "Schedule",
    "TimestepSampler",
    "convert",
    "direction_loss",
    "get_preset",
    "get_schedule",
    "get_timestep_sampler",
    "load_recipe",
    "target_from_data",
]
