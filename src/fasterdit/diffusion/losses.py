"""The training loss of a Recipe: target MSE (+ SNR weighting), velocity-direction loss, DiT's VB term.

``DiffusionLoss(recipe, patch_size)(model, x0, y, generator=g)`` draws t from the recipe's timestep
sampler and ε from ``g``, builds ``x_t = α·x + σ·ε`` in diffusion space (data scaled by the recipe), calls
``model(x_t, recipe.model_time(t), y)`` and returns a dict of terms: ``"loss"`` (the scalar to
backpropagate) plus detached ``"mse"``, ``"mse_weighted"``, ``"direction"``, ``"vb"`` as they apply.

* **MSE** on the recipe's target, averaged over all non-batch dims (as DiT's ``mean_flat``).
* **min-SNR-γ** (Hang et al. 2023) is defined on the x₀ error: ``min(SNR, γ)·‖x̂₀ − x₀‖²``. A target
  error e maps to an x₀ error ``c·e`` (x_t fixed), so the weight on the target's MSE is
  ``min(SNR, γ)·c²``: ε → ``min(1, γ/SNR)``; x₀ → ``min(SNR, γ)``; v → ``min(SNR, γ)·σ²/(α²+σ²)²``
  (= ``min(SNR, γ)/(SNR+1)`` for VP); velocity → ``min(SNR, γ)·σ²/(ασ' − σα')²`` (``min(SNR, γ)·t²`` for
  flow-linear). SNR = α²/σ² (without the data std).
* **Velocity direction** (FasterDiT's single-step supervision): ``mean(1 − cos(û, u))`` with
  u = dx_t/dt. The cosine is taken over channels at each position (``channel``, LightningDiT's
  choice), over each p×p patch × channels (``token``) or over the whole sample (``sample``); ``auto``
  (the ``fasterdit`` preset) is ``channel`` on multi-channel data and ``token`` on 1-channel data,
  where the per-position cosine is ±1 and has no gradient.
  Non-velocity predictions are first converted to velocity with the exact conversion of
  :mod:`.targets` (at t clamped to [1e-4, 1 − 1e-4]).
* **DiT hybrid loss** for learned variances (``recipe.learn_sigma``): the first C output channels are
  the mean prediction, the last C the iDDPM variance interpolation v ∈ [−1, 1]; the VB term
  ``KL(q(x_{i−1}|x_i, x₀) ‖ p(x_{i−1}|x_i))`` (decoder NLL at i = 0) in bits per dim is computed with
  the mean prediction *detached*, so it trains only the variance, and added with weight
  ``vb_weight`` (DiT: 1, i.e. iDDPM's λ = 0.001 times the T = 1000 terms of L_vlb).
* **Representation alignment** (REPA, ``recipe.align.weight`` > 0): ``weight · mean over tokens of
  −cos(projector(tokens after block k), encoder feature)`` (:mod:`.align`), with the tokens captured by a
  hook during the same forward pass and the clean image's features passed in (``features``).

Label dropout for classifier-free guidance is the model's job (``class_dropout_prob``), not the loss's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fasterdit.diffusion.align import TokenCapture, align_loss
from fasterdit.diffusion.recipe import Recipe
from fasterdit.diffusion.schedules import Schedule, _f64, ddpm_posterior
from fasterdit.diffusion.targets import convert, expand_like, target_from_data
from fasterdit.errors import ConfigError

_LN2 = math.log(2.0)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dim but the batch dim."""
    return x.mean(dim=tuple(range(1, x.ndim)))


# --- velocity direction ----------------------------------------------------------------------------------
def _cosine(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8, floor: float = 0.01) -> Tensor:
    """Cosine similarity of the prediction ``a`` with the target ``b`` along ``dim``, gradient-bounded.

    The exact cosine has a gradient of size 1/‖a‖, and a fresh DiT predicts exactly zero (adaLN-Zero):
    the first steps would see gradients of ~1e8 that wreck AdamW's second-moment estimate. So ‖a‖ is
    floored at ``floor·‖b‖`` in the denominator: where ‖a‖ ≥ 1% of ‖b‖ this is the exact cosine (and
    invariant to rescaling a), below it the loss is linear in a with gradient at most 1/(floor·‖b‖).
    The minimum (a parallel to b) is unchanged. ``eps`` keeps a zero target finite (cos = 0).
    """
    nb = b.norm(dim=dim)
    na = torch.maximum(a.norm(dim=dim), floor * nb.detach())
    return (a * b).sum(dim) / (na * nb).clamp_min(eps)


def _tokens(x: Tensor, p: int) -> Tensor:
    """(N, C, H, W) -> (N, T, C·p·p): one vector per non-overlapping p×p patch (the DiT tokens)."""
    if x.ndim != 4:
        raise ConfigError(
            "loss.direction_mode", f"'token' needs (N, C, H, W) tensors, got shape {tuple(x.shape)}"
        )
    n, c, h, w = x.shape
    if h % p or w % p:
        raise ConfigError("loss.direction_patch", f"patch size {p} does not divide the {h}x{w} input")
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def direction_loss(
    pred: Tensor, target: Tensor, mode: str = "channel", patch_size: int | None = None
) -> Tensor:
    """Per-sample ``mean(1 − cos(pred, target))`` (N,): 0 parallel, 1 orthogonal, 2 opposite.

    ``mode``: ``channel`` (cosine over dim 1 at each position), ``token`` (over each
    ``patch_size``×``patch_size`` patch × channels) or ``sample`` (over the whole sample).
    Invariant to positive rescaling of either argument.
    """
    if mode == "channel":
        return (
            mean_flat(1.0 - _cosine(pred, target, dim=1)) if pred.ndim > 2 else 1.0 - _cosine(pred, target, 1)
        )
    if mode == "token":
        if patch_size is None:
            raise ConfigError("loss.direction_patch", "'token' mode needs a patch size")
        return (1.0 - _cosine(_tokens(pred, patch_size), _tokens(target, patch_size), dim=-1)).mean(dim=1)
    if mode == "sample":
        return 1.0 - _cosine(pred.flatten(1), target.flatten(1), dim=1)
    raise ConfigError("loss.direction_mode", f"got {mode!r}; choose one of channel, token, sample")


# --- SNR weighting -------------------------------------------------------------------------------------
def min_snr_weight(target: str, gamma: float, t: Tensor, sched: Schedule) -> Tensor:
    """Per-sample min-SNR-γ weight on the MSE of ``target`` (float64, shape of t); see the module doc."""
    t64 = _f64(t)
    a, s = sched._alpha(t64), sched._sigma(t64)
    a2, s2 = a * a, s * s
    if target == "eps":
        return torch.minimum(torch.ones_like(a2), gamma * s2 / a2)
    if target == "x0":
        return torch.minimum(a2 / s2, torch.full_like(a2, gamma))
    if target == "v":
        d = (a2 + s2) ** 2
        return torch.minimum(a2 / d, gamma * s2 / d)
    if target == "velocity":
        det2 = (a * sched._d_sigma(t64) - s * sched._d_alpha(t64)) ** 2
        return torch.minimum(a2 / det2, gamma * s2 / det2)
    raise ConfigError("target", f"got {target!r}; choose one of eps, x0, v, velocity")


# --- DiT / iDDPM variational bound --------------------------------------------------------------------
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) in nats for a Gaussian discretised to 256 bins on [-1, 1] (ADM's decoder), elementwise.

    Uses the exact normal CDF where ADM uses a tanh approximation (they differ by < 2e-4 in the CDF).
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    plus_in = inv_std * (centered + 1.0 / 255.0)
    min_in = inv_std * (centered - 1.0 / 255.0)
    log_cdf_plus = torch.special.log_ndtr(plus_in)
    log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
    # Φ(b) − Φ(a), evaluated in whichever tail keeps it accurate
    delta = torch.where(
        min_in > 0,
        torch.special.ndtr(-min_in) - torch.special.ndtr(-plus_in),
        torch.special.ndtr(plus_in) - torch.special.ndtr(min_in),
    )
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(delta.clamp(min=1e-12))),
    )


def dit_vb_terms(
    x0: Tensor, x_t: Tensor, eps_pred: Tensor, var_values: Tensor, index: Tensor, sched: Schedule
) -> Tensor:
    """Per-sample VB term in bits/dim for DDPM step ``index`` (0..N−1), as DiT's ``_vb_terms_bpd``.

    The model's posterior mean comes from ``eps_pred`` (pass it detached to train only the variance);
    its log-variance is ``frac·ln β_i + (1 − frac)·ln β̃_i`` with ``frac = (v + 1)/2`` (learned range).
    Returns the KL to the true posterior for i > 0 and the decoder NLL at i = 0.
    """
    tables = ddpm_posterior(sched, x0.device, x0.dtype)  # on the device already, after the first call

    def take(name: str) -> Tensor:
        return expand_like(tables[name][index], x0)

    abar = take("alphas_cumprod")
    coef1, coef2 = take("posterior_mean_coef1"), take("posterior_mean_coef2")
    true_mean = coef1 * x0 + coef2 * x_t
    true_logvar = take("posterior_log_variance_clipped")
    pred_x0 = torch.rsqrt(abar) * x_t - torch.sqrt(1.0 / abar - 1.0) * eps_pred
    model_mean = coef1 * pred_x0 + coef2 * x_t
    frac = (var_values + 1.0) / 2.0
    model_logvar = frac * take("betas").log() + (1.0 - frac) * true_logvar
    kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / _LN2
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / _LN2
    return torch.where(index.to(kl.device) == 0, nll, kl)


# --- the loss ------------------------------------------------------------------------------------------
def _randn(
    shape: torch.Size, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Normal noise drawn on the generator's device (a CPU generator can serve CUDA data), then moved."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


class AlignTerm:
    """What the alignment term needs besides the recipe: the hook on block k and the projector (the
    module itself, or its DDP wrapper, whose backward all-reduces the projector's gradients)."""

    def __init__(self, capture: TokenCapture, projector: torch.nn.Module):
        self.capture, self.projector = capture, projector


class DiffusionLoss:
    """The loss of a Recipe; see the module docstring for the terms.

    ``patch_size`` is the model's token size, the default p of the ``token`` direction loss (when
    ``loss.direction_patch`` is unset): given here by whoever builds the model, so the loss never has
    to look inside the (DDP- or compile-wrapped) model for it. ``align`` is the alignment term's hook and
    projector, needed when ``recipe.align.weight`` > 0.
    """

    def __init__(self, recipe: Recipe, patch_size: int | None = None, align: AlignTerm | None = None):
        self.recipe = recipe.validate()
        self.patch_size = patch_size
        self.schedule = recipe.schedule_obj
        self.sampler = recipe.timestep_sampler_obj
        self.align = align if recipe.align.enabled else None
        if recipe.align.enabled and align is None:
            raise ConfigError("recipe.align.weight", "the alignment term needs its projector and hook")

    def prepare(self, x0: Tensor) -> None:
        """Fill the per-device constants that a call on data like ``x0`` reads: the data scaling's and,
        with the VB term, the posterior tables. Why: a compiled loss that filled them in its first call
        would fail a guard on the second and compile the step twice."""
        x = self.recipe.scaling.forward(x0)
        if self.recipe.learn_sigma:
            ddpm_posterior(self.schedule, x.device, x.dtype)

    def __call__(
        self,
        model: Any,
        x0: Tensor,
        y: Tensor | None,
        generator: torch.Generator | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
        features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms for a batch of clean data ``x0`` (data space) with labels ``y``.

        ``t`` (in [0, 1]) and ``noise`` (diffusion space) may be given to evaluate the loss at fixed
        draws; otherwise they come from the recipe's sampler and ``generator``. ``model_kwargs`` go to
        the model call (e.g. the trainer's label-dropout mask ``force_drop_ids``). ``features`` (N, T, D):
        the encoder's patch features of the clean images, on the DiT's token grid (alignment term only).
        """
        r, sched = self.recipe, self.schedule
        x = r.scaling.forward(x0)
        n, c = x.shape[0], x.shape[1]
        if t is None:
            t = self.sampler.sample(n, generator=generator, device=x.device)
        t64 = t.to(device=x.device, dtype=torch.float64)
        index = None
        if r.learn_sigma:  # the VB term lives on the discrete chain: snap t to its grid
            index = sched.t_to_index(t64)
            t64 = sched.index_to_t(index)
        eps = noise.to(x) if noise is not None else _randn(x.shape, generator, x.device, x.dtype)
        x_t = expand_like(sched.alpha(t64), x) * x + expand_like(sched.sigma(t64), x) * eps

        if self.align is None:
            out = r.network_output(model(x_t, r.model_time(t64), y, **(model_kwargs or {})))
        else:
            if features is None:
                raise ConfigError("recipe.align.encoder", "the alignment term needs the encoder's features")
            with self.align.capture.armed() as cap:
                out = r.network_output(model(x_t, r.model_time(t64), y, **(model_kwargs or {})))
            tokens = cap.take()
        if out.dtype != x.dtype:
            out = out.to(x.dtype)  # compute the loss in the data's precision, not autocast's
        want = 2 * c if r.learn_sigma else c
        if out.shape[1] != want:
            raise ConfigError(
                "learn_sigma",
                f"the model outputs {out.shape[1]} channels for {c}-channel data; recipe.learn_sigma="
                f"{r.learn_sigma} expects {want} (build the model with learn_sigma={r.learn_sigma})",
            )
        pred = out[:, :c]
        target = target_from_data(r.target, x, eps, t64, sched)
        mse = mean_flat((pred - target) ** 2)
        terms: dict[str, Tensor] = {"mse": mse.mean()}
        per_sample = mse
        if r.loss.weighting == "min-snr":
            w = min_snr_weight(r.target, r.loss.min_snr_gamma, t64, sched).to(mse)
            per_sample = w * mse
            terms["mse_weighted"] = per_sample.mean()

        if r.loss.direction_weight > 0:
            if r.target == "velocity":
                u_hat, u = pred, target
            else:
                tc = sched.clamp_t(t64, 1e-4)
                u_hat = convert(pred, r.target, "velocity", x_t, tc, sched)
                u = target_from_data("velocity", x, eps, tc, sched)
            mode = r.loss.direction_mode_for(c)
            patch = r.loss.direction_patch or (self.patch_size if mode == "token" else None)
            d = direction_loss(u_hat, u, mode, patch)
            per_sample = per_sample + r.loss.direction_weight * d
            terms["direction"] = d.mean()

        if r.learn_sigma:
            eps_hat = pred if r.target == "eps" else convert(pred, r.target, "eps", x_t, t64, sched)
            vb = dit_vb_terms(x, x_t, eps_hat.detach(), out[:, c:], index, sched)
            per_sample = per_sample + r.loss.vb_weight * vb
            terms["vb"] = vb.mean()

        if self.align is not None:
            a = align_loss(self.align.projector(tokens), features)
            per_sample = per_sample + r.align.weight * a.to(per_sample.dtype)
            terms["align"] = a.mean()

        terms = {k: v.detach() for k, v in terms.items()}
        terms["loss"] = per_sample.mean()
        return terms
