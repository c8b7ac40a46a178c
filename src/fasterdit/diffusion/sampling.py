"""Sampling: one entry point, :func:`sample`, over every sampler, with classifier-free guidance.

The samplers themselves live in small modules and work on a bare model function
``model_fn(x_t, t) -> prediction`` (t ∈ [0, 1], prediction in the recipe's target), so they can be
tested against closed forms without a network:

* :mod:`.sampling_ode`: ``euler``, ``heun`` (fixed steps, optional SD3 time shift), ``dopri5``
  (adaptive, torchdiffeq) on the probability-flow ODE, and ``euler-maruyama`` on SiT's reverse SDE;
* :mod:`.sampling_ddpm`: ``ddpm`` ancestral sampling (fixed-small / fixed-large / learned-range
  variance, official respacing) and ``ddim`` (η);
* :mod:`.sampling_base`: time grids, endpoint rules, NFE counting, :class:`SampleResult`.

:func:`sample` adds what a real network needs: the recipe's time mapping (``model(x, recipe.model_time(t),
y)``), classifier-free guidance, and the inverse of the recipe's data scaling.

NFE convention: one call of the model function is one evaluation, and a classifier-free-guidance pair
(conditional + unconditional rows in one doubled batch) is ONE call. Outside a guidance interval no
doubling happens, so the cost per evaluation halves there while the NFE stays the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fasterdit.diffusion.sampler_options import SAMPLER_OPTIONS
from fasterdit.diffusion.sampling_base import ModelFn, Network, NoiseSource, PerSampleNoise, SampleResult
from fasterdit.diffusion.sampling_ddpm import ddim, ddpm, space_timesteps
from fasterdit.diffusion.sampling_ode import dopri5, euler, euler_maruyama, heun
from fasterdit.errors import ConfigError
from fasterdit.guidance import cfg_mix, guided_channels

if TYPE_CHECKING:  # annotations only: the recipe module reads the sampler names from sampler_options
    from fasterdit.diffusion.recipe import Recipe

__all__ = [
    "SAMPLERS",
    "ModelFn",
    "Network",
    "PerSampleNoise",
    "SampleResult",
    "ddim",
    "ddpm",
    "dopri5",
    "euler",
    "euler_maruyama",
    "guided_model_fn",
    "heun",
    "sample",
    "space_timesteps",
]

SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "euler": euler,
    "heun": heun,
    "dopri5": dopri5,
    "euler-maruyama": euler_maruyama,
    "ddpm": ddpm,
    "ddim": ddim,
}


def _check_interval(interval: Any) -> tuple[float, float] | None:
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError) as err:
        raise ConfigError("guidance_interval", f"must be a pair (t_lo, t_hi), got {interval!r}") from err
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError("guidance_interval", f"need 0 <= t_lo < t_hi <= 1, got ({lo}, {hi})")
    return lo, hi


def guided_model_fn(
    model: Network,
    recipe: Recipe,
    y: Tensor | None = None,
    *,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    guide_channels: int | None = None,
) -> ModelFn:
    """The network as a sampler's model function, with classifier-free guidance.

    Calls ``model(x, recipe.model_time(t), y)`` (through ``recipe.network_output``). With
    ``cfg_scale != 1`` and t inside the guidance interval (``t_lo < t <= t_hi``, in this library's t
    where 1 is noise; Kynkäänniemi et al. 2024), the batch is doubled with the null label
    ``model.num_classes`` and the prediction becomes ``uncond + cfg_scale·(cond − uncond)`` on the
    first ``guide_channels`` channels (default: all C prediction channels); the remaining channels
    (iDDPM's variance) are the conditional ones. Outside the interval, or at scale 1, the conditional
    prediction is returned untouched (no doubling), so scale 1 is exactly the conditional model.
    ``guide_channels=3`` reproduces the official DiT, SiT and LightningDiT samplers, which guide only
    the first three latent channels.
    """
    if not (isinstance(cfg_scale, int | float) and math.isfinite(cfg_scale)):
        raise ConfigError("cfg_scale", f"must be a finite number, got {cfg_scale!r}")
    interval = _check_interval(guidance_interval)
    num_classes = int(model.num_classes)
    guided = cfg_scale != 1.0
    if guided and num_classes <= 0:
        raise ConfigError(
            "cfg_scale", "classifier-free guidance needs a class-conditional model (num_classes > 0)"
        )
    if guided and y is None:
        raise ConfigError("cfg_scale", "classifier-free guidance needs class labels y")
    if guide_channels is not None and (int(guide_channels) != guide_channels or guide_channels < 1):
        raise ConfigError("guide_channels", f"must be a positive integer or None, got {guide_channels!r}")

    def fn(x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        labels: Tensor | None = None
        if num_classes > 0:
            labels = y if y is not None else torch.full((n,), num_classes, dtype=torch.long)
            labels = labels.to(device=x.device, dtype=torch.long)
            if labels.shape != (n,):
                raise ConfigError("y", f"expected {n} class labels, got shape {tuple(labels.shape)}")
        # float32 (recipe.model_time's dtype) even for low-precision x: bf16 cannot hold index 999
        t_model = recipe.model_time(t).to(device=x.device)
        mask = torch.ones(n, dtype=torch.bool, device=x.device)
        if interval is not None:
            mask = (t > interval[0]) & (t <= interval[1])
        if not guided or not bool(mask.any()):
            return recipe.network_output(model(x, t_model, labels))
        assert labels is not None
        null = torch.full_like(labels, num_classes)
        out = model(torch.cat([x, x]), torch.cat([t_model, t_model]), torch.cat([labels, null]))
        out = recipe.network_output(out)  # a sign flip commutes with the guidance mix below
        cond, uncond = out.chunk(2)
        g = guided_channels(guide_channels, x.shape[1], out.shape[1])
        result = torch.cat([cfg_mix(cond, uncond, cfg_scale, g), cond[:, g:]], dim=1)
        keep = mask.view(-1, *([1] * (out.ndim - 1)))
        return torch.where(keep, result, cond)

    return fn


def sample(
    model: Network,
    recipe: Recipe,
    noise: Tensor,
    *,
    y: Tensor | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    shift: float | None = None,
    generator: NoiseSource = None,
    return_trajectory: bool = False,
    guide_channels: int | None = None,
    **sampler_kwargs: Any,
) -> SampleResult:
    """Generate samples from ``noise`` (N, C, H, W) with a trained model and its recipe.

    Args:
        model: ``model(x, t_model, y)`` returning the recipe's target (C or 2C channels).
        recipe: supplies the schedule, target, ``model_time``, data scaling and the default sampler.
        noise: the starting point ε ~ N(0, I); its dtype/device are those of the whole run.
        y: (N,) class labels; None samples unconditionally (the null label for a conditional model).
        sampler: one of :data:`SAMPLERS`; default ``recipe.sampler.name``.
        steps: number of steps (DDPM/DDIM on the 1000-step chain: respaced count); default
            ``recipe.sampler.steps``.
        cfg_scale, guidance_interval, guide_channels: classifier-free guidance (see
            :func:`guided_model_fn`).
        shift: SD3 time shift of the step grid (continuous schedules); default ``recipe.sampler.shift``.
        generator: randomness of the stochastic samplers (euler-maruyama, ddpm, ddim with η > 0);
            a ``torch.Generator`` on ``noise.device``, or a :class:`PerSampleNoise` (one CPU generator
            per sample, so a sample's noise does not depend on its batch).
        return_trajectory: also return the diffusion-space states of every step.
        sampler_kwargs: passed to the sampler (e.g. ``rtol``/``atol`` for dopri5, ``eta`` for ddim,
            ``variance``/``respacing`` for ddpm, ``diffusion``/``last_step_size`` for euler-maruyama,
            ``t_max`` for the continuous ones).

    Returns:
        :class:`SampleResult` whose ``x`` is in data space (``recipe.scaling.inverse`` applied).
    """
    defaults = recipe.sampler
    name = sampler or defaults.name
    fn_sampler = SAMPLERS.get(name)
    if fn_sampler is None:
        raise ConfigError("sampler", f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if steps is None:
        steps = defaults.steps
    if shift is None:
        shift = defaults.shift
    options = SAMPLER_OPTIONS[name]
    for key in sampler_kwargs:
        if key not in options or key == "generator":  # the generator is sample()'s own argument
            allowed = ", ".join(o for o in options if o != "generator")
            raise ConfigError(f"sampler.{key}", f"{name!r} does not take {key!r}; it takes {allowed}")
    kwargs: dict[str, Any] = dict(sampler_kwargs, steps=steps, return_trajectory=return_trajectory)
    if shift is not None:
        kwargs["shift"] = shift
    if "generator" in options:
        kwargs["generator"] = generator
    model_fn = guided_model_fn(
        model,
        recipe,
        y,
        cfg_scale=cfg_scale,
        guidance_interval=guidance_interval,
        guide_channels=guide_channels,
    )
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()  # label dropout and other train-time randomness must be off while sampling
    try:
        with torch.no_grad():
            res = fn_sampler(model_fn, noise, recipe.schedule_obj, recipe.target, **kwargs)
    finally:
        if was_training:
            model.train()
    res.x = recipe.scaling.inverse(res.x)
    return res
