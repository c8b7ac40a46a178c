"""The samplers' names and the options each takes: a table with no imports.

Why apart from :mod:`fasterdit.diffusion.sampling`: the :class:`~fasterdit.diffusion.recipe.Recipe` checks its
sampler name, and the samplers take a recipe; a table both read keeps the two modules out of a loop.
"""

from __future__ import annotations

__all__ = ["SAMPLER_NAMES", "SAMPLER_OPTIONS"]

#: The keyword options each sampler takes beyond ``steps``, ``shift`` and ``return_trajectory`` (which
#: ``sample`` always passes), in the order of its signature; ``generator`` marks the stochastic ones.
#: ``sample`` rejects a misspelt option by name without inspecting the functions;
#: ``tests/test_sampling.py`` checks this table against the signatures.
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "euler": ("t_max", "last_step"),
    "heun": ("t_max", "last_step"),
    "dopri5": ("rtol", "atol", "t_max", "t_min", "method"),
    "euler-maruyama": ("generator", "diffusion", "diffusion_norm", "last_step", "last_step_size", "t_max"),
    "ddpm": ("generator", "variance", "respacing", "clip_x0", "t_max"),
    "ddim": ("eta", "generator", "respacing", "clip_x0", "t_max"),
}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLER_OPTIONS)
