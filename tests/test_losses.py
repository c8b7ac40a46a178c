"""Losses: direction loss geometry, min-SNR weights, the DiT VB term against float64 numpy/scipy, and
DiffusionLoss wiring (x_t, model time, targets) against closed forms."""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from fasterdit.diffusion.losses import (
    DiffusionLoss,
    direction_loss,
    dit_vb_terms,
    min_snr_weight,
)
from fasterdit.diffusion.recipe import LossConfig, Recipe, get_preset
from fasterdit.diffusion.schedules import get_schedule
from fasterdit.diffusion.targets import TARGETS, convert, target_from_data
from fasterdit.errors import ConfigError

F64 = torch.float64
MODES = ("channel", "token", "sample")


# --- velocity direction -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_direction_loss_is_0_1_2(mode):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 3, 4, 4, generator=g, dtype=F64)
    w = torch.randn(4, 3, 4, 4, generator=g, dtype=F64)
    # a vector orthogonal to u in every cosine group: Gram–Schmidt within the group
    if mode == "channel":
        ortho = w - (w * u).sum(1, keepdim=True) / (u * u).sum(1, keepdim=True) * u
    elif mode == "sample":
        ortho = w - (w * u).sum((1, 2, 3), keepdim=True) / (u * u).sum((1, 2, 3), keepdim=True) * u
    else:
        uu = u.reshape(4, 3, 2, 2, 2, 2)
        ww = w.reshape(4, 3, 2, 2, 2, 2)
        dims = (1, 3, 5)
        ortho = (ww - (ww * uu).sum(dims, keepdim=True) / (uu * uu).sum(dims, keepdim=True) * uu).reshape(
            u.shape
        )
    kw = {"patch_size": 2} if mode == "token" else {}
    assert torch.allclose(direction_loss(u, u, mode, **kw), torch.zeros(4, dtype=F64), atol=1e-12)
    assert torch.allclose(direction_loss(ortho, u, mode, **kw), torch.ones(4, dtype=F64), atol=1e-12)
    assert torch.allclose(direction_loss(-u, u, mode, **kw), torch.full((4,), 2.0, dtype=F64), atol=1e-12)
    # invariant to positive rescaling of the prediction
    assert torch.allclose(
        direction_loss(3.7 * w, u, mode, **kw), direction_loss(w, u, mode, **kw), atol=1e-12
    )
    scale = torch.rand(4, 1, 1, 1, generator=g, dtype=F64) + 0.1
    assert torch.allclose(
        direction_loss(scale * w, u, mode, **kw), direction_loss(w, u, mode, **kw), atol=1e-12
    )


def test_direction_loss_matches_torch_cosine_similarity():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 5, 4, 4, generator=g, dtype=F64), torch.randn(2, 5, 4, 4, generator=g, dtype=F64)
    ref = (1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).mean((1, 2))
    assert torch.allclose(direction_loss(a, b, "channel"), ref, atol=1e-12)
    ref = 1 - torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
    assert torch.allclose(direction_loss(a, b, "sample"), ref, atol=1e-12)


def test_one_channel_per_position_cosine_has_no_gradient():
    """With C = 1 the per-position cosine is ±1: no gradient. The token mode still has one."""
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 1, 4, 4, generator=g, dtype=F64)
    p = torch.randn(2, 1, 4, 4, generator=g, dtype=F64, requires_grad=True)
    direction_loss(p, u, "channel").sum().backward()
    assert p.grad.abs().max() < 1e-12
    p.grad = None
    direction_loss(p, u, "token", patch_size=2).sum().backward()
    assert p.grad.abs().max() > 1e-3


def test_token_mode_needs_a_dividing_patch():
    x = torch.zeros(1, 1, 5, 5)
    with pytest.raises(ConfigError) as e:
        direction_loss(x, x, "token", patch_size=2)
    assert e.value.field == "loss.direction_patch"


# --- min-SNR ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddpm-linear", "flow-linear", "flow-cosine"])
@pytest.mark.parametrize("target", TARGETS)
def test_min_snr_weight_is_min_snr_on_x0_error(name, target):
    """weight·‖e_target‖² must equal min(SNR, γ)·‖e_x0‖² for any prediction error (x_t fixed)."""
    s = get_schedule(name)
    g = torch.Generator().manual_seed(3)
    t = torch.rand(16, generator=g, dtype=F64) * 0.98 + 0.01
    x = torch.randn(16, 2, generator=g, dtype=F64)
    eps = torch.randn(16, 2, generator=g, dtype=F64)
    xt = s.alpha(t)[:, None] * x + s.sigma(t)[:, None] * eps
    true = target_from_data(target, x, eps, t, s)
    pred = true + torch.randn(16, 2, generator=g, dtype=F64)
    x0_err = (convert(pred, target, "x0", xt, t, s) - x).pow(2).sum(1)
    snr = (s.alpha(t) / s.sigma(t)) ** 2
    w = min_snr_weight(target, 5.0, t, s)
    assert torch.allclose(
        w * (pred - true).pow(2).sum(1), torch.minimum(snr, torch.tensor(5.0, dtype=F64)) * x0_err, rtol=1e-9
    )


def test_min_snr_closed_forms():
    s = get_schedule("flow-cosine")  # VP
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    snr = (s.alpha(t) / s.sigma(t)) ** 2
    g5 = torch.full_like(snr, 5.0)
    assert torch.allclose(min_snr_weight("eps", 5.0, t, s), torch.minimum(snr, g5) / snr)
    assert torch.allclose(min_snr_weight("v", 5.0, t, s), torch.minimum(snr, g5) / (snr + 1))
    lin = get_schedule("flow-linear")
    snr = ((1 - t) / t) ** 2
    assert torch.allclose(min_snr_weight("velocity", 5.0, t, lin), torch.minimum(snr, g5) * t**2)


# --- DiT VB term vs float64 numpy/scipy ---------------------------------------------------------------
def _vb_reference(x0, xt, eps_pred, v, idx):
    """Independent float64 ADM/iDDPM variational-bound term (bits/dim), exact normal CDF."""
    b = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1 - b)
    prev = np.append(1.0, abar[:-1])
    post_var = b * (1 - prev) / (1 - abar)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    out = []
    for k, i in enumerate(idx):
        c1 = b[i] * np.sqrt(prev[i]) / (1 - abar[i])
        c2 = (1 - prev[i]) * np.sqrt(1 - b[i]) / (1 - abar[i])
        mu_q = c1 * x0[k] + c2 * xt[k]
        x0_hat = xt[k] / np.sqrt(abar[i]) - np.sqrt(1 / abar[i] - 1) * eps_pred[k]
        mu_p = c1 * x0_hat + c2 * xt[k]
        frac = (v[k] + 1) / 2
        lv_p = frac * np.log(b[i]) + (1 - frac) * post_logvar[i]
        lv_q = post_logvar[i]
        if i == 0:
            sd = np.exp(0.5 * lv_p)
            hi = st.norm.cdf((x0[k] + 1 / 255 - mu_p) / sd)
            lo = st.norm.cdf((x0[k] - 1 / 255 - mu_p) / sd)
            lp = np.where(
                x0[k] < -0.999,
                np.log(np.maximum(hi, 1e-12)),
                np.where(
                    x0[k] > 0.999, np.log(np.maximum(1 - lo, 1e-12)), np.log(np.maximum(hi - lo, 1e-12))
                ),
            )
            out.append(-lp.mean() / np.log(2))
        else:
            var_q, var_p = np.exp(lv_q), np.exp(lv_p)
            kl = 0.5 * (np.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1)
            out.append(kl.mean() / np.log(2))
    return np.array(out)


def test_vb_term_matches_independent_float64():
    s = get_schedule("ddpm-linear")
    g = torch.Generator().manual_seed(4)
    n = 10
    idx = torch.tensor([0, 0, 1, 5, 50, 333, 500, 800, 998, 999])
    x0 = torch.randint(0, 256, (n, 2, 3, 3), generator=g).to(F64) / 127.5 - 1.0  # 8-bit pixels in [-1, 1]
    eps = torch.randn(n, 2, 3, 3, generator=g, dtype=F64)
    t = s.index_to_t(idx)
    xt = s.alpha(t)[:, None, None, None] * x0 + s.sigma(t)[:, None, None, None] * eps
    eps_pred = eps + 0.3 * torch.randn(n, 2, 3, 3, generator=g, dtype=F64)
    v = torch.rand(n, 2, 3, 3, generator=g, dtype=F64) * 2 - 1
    got = dit_vb_terms(x0, xt, eps_pred, v, idx, s)
    want = _vb_reference(x0.numpy(), xt.numpy(), eps_pred.numpy(), v.numpy(), idx.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    # a perfect ε and the true posterior variance (v = −1 gives β̃) make the KL vanish for i > 0
    exact = dit_vb_terms(x0, xt, eps, -torch.ones_like(v), idx, s)
    assert exact[2:].abs().max() < 1e-9


# --- DiffusionLoss wiring ------------------------------------------------------------------------------
class Oracle(torch.nn.Module):
    """Returns a given output and records what it was called with; one parameter so backward works."""

    def __init__(self, fn, patch_size=2):
        super().__init__()
        self.fn, self.calls, self.patch_size = fn, [], patch_size
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, y):
        self.calls.append((x.clone(), t.clone(), y))
        return self.fn(x, t) * self.w


def _data(n=6, c=2, hw=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, hw, hw, generator=g) * 2 - 1, torch.randn(n, c, hw, hw, generator=g)


def test_flow_loss_is_zero_for_the_exact_velocity_and_wires_inputs():
    r = get_preset("fasterdit")
    x0, eps = _data()
    r = r.resolve(x0)
    x = r.scaling.forward(x0)
    t = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
    model = Oracle(lambda xt, tm: eps - x)  # flow-linear velocity = ε − x
    terms = DiffusionLoss(r)(model, x0, torch.zeros(6, dtype=torch.long), t=t, noise=eps)
    xt, tm, _ = model.calls[0]
    assert torch.allclose(xt, (1 - t)[:, None, None, None] * x + t[:, None, None, None] * eps, atol=1e-6)
    assert torch.allclose(tm, t * 1000)
    assert terms["mse"] < 1e-12 and terms["direction"] < 1e-6 and terms["loss"] < 1e-6
    assert terms["loss"].requires_grad and not terms["mse"].requires_grad


def test_dit_loss_matches_diffusers_noising_and_uses_step_indices():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    r = get_preset("dit")
    x0, eps = _data(seed=1)
    idx = torch.tensor([0, 3, 99, 500, 998, 999])
    t = (idx + 1).float() / 1000
    model = Oracle(lambda xt, tm: torch.cat([eps, torch.zeros_like(eps)], 1))  # perfect ε, v = 0
    terms = DiffusionLoss(r)(model, x0, None, t=t, noise=eps)
    xt, tm, _ = model.calls[0]
    assert torch.equal(tm, idx.float())  # the official DiT's integer steps
    assert torch.allclose(xt, ref.add_noise(x0, eps, idx), atol=5e-6)
    assert terms["mse"] < 1e-12
    # the VB term trains only the variance channels: the mean half gets no gradient from it
    out = torch.randn(6, 4, 4, 4, requires_grad=True)
    DiffusionLoss(r)(lambda xt, tm, y: out, x0, None, t=t, noise=eps)["loss"].backward()
    mse_grad = 2 * (out[:, :2] - eps) / out[:, :2].numel()  # d/d(mean) of the ε-MSE alone
    assert torch.allclose(out.grad[:, :2], mse_grad.detach(), atol=1e-9)
    assert out.grad[:, 2:].abs().max() > 0


def test_non_velocity_targets_get_the_direction_loss_through_conversion():
    r = Recipe(
        schedule="flow-cosine", target="eps", loss=LossConfig(direction_weight=1.0, direction_mode="sample")
    )
    x0, eps = _data(seed=2)
    t = torch.full((6,), 0.4)
    terms = DiffusionLoss(r)(Oracle(lambda xt, tm: eps), x0, None, t=t, noise=eps)
    assert terms["direction"] < 1e-6
    terms = DiffusionLoss(r)(Oracle(lambda xt, tm: -eps), x0, None, t=t, noise=eps)
    assert terms["direction"] > 0.1


def test_min_snr_weighting_is_applied():
    r = Recipe(schedule="flow-cosine", target="eps", loss=LossConfig(weighting="min-snr", min_snr_gamma=5.0))
    x0, eps = _data(seed=3)
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    terms = DiffusionLoss(r)(Oracle(lambda xt, tm: torch.zeros_like(xt)), x0, None, t=t, noise=eps)
    s = r.schedule_obj
    snr = (s.alpha(t.double()) / s.sigma(t.double())) ** 2
    w = torch.minimum(snr, torch.tensor(5.0, dtype=F64)) / snr
    per = eps.double().pow(2).mean((1, 2, 3))
    assert math.isclose(terms["loss"].item(), float((w * per).mean()), rel_tol=1e-5)
    assert math.isclose(float(terms["mse"]), float(per.mean()), rel_tol=1e-5)


def test_seeded_draws_are_reproducible():
    r = get_preset("sit")
    x0, _ = _data(seed=4)
    model = Oracle(lambda xt, tm: torch.zeros_like(xt))
    a = DiffusionLoss(r)(model, x0, None, generator=torch.Generator().manual_seed(9))["mse"]
    b = DiffusionLoss(r)(model, x0, None, generator=torch.Generator().manual_seed(9))["mse"]
    c = DiffusionLoss(r)(model, x0, None, generator=torch.Generator().manual_seed(10))["mse"]
    assert float(a) == float(b) and float(a) != float(c)


def test_channel_mismatch_names_learn_sigma():
    x0, _ = _data()
    with pytest.raises(ConfigError) as e:
        DiffusionLoss(get_preset("dit"))(Oracle(lambda xt, tm: xt), x0, None)
    assert e.value.field == "learn_sigma"
    with pytest.raises(ConfigError) as e:
        DiffusionLoss(get_preset("sit"))(Oracle(lambda xt, tm: torch.cat([xt, xt], 1)), x0, None)
    assert e.value.field == "learn_sigma"


def test_token_direction_uses_the_patch_size_the_loss_is_given():
    """The token cosine takes p from DiffusionLoss(recipe, patch_size) (the trainer passes the DiT's),
    ``loss.direction_patch`` wins over it, and without either the error names the field."""
    x0, eps = _latents(c=1)
    t = torch.full((5,), 0.4, dtype=F64)
    out = torch.randn(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    r = replace_loss(get_preset("fasterdit").resolve(x0), direction_mode="token")
    u = target_from_data("velocity", r.scaling.forward(x0), eps, t, r.schedule_obj)
    for p in (2, 4):
        got = DiffusionLoss(r, patch_size=p)(FixedNet(out), x0, None, t=t, noise=eps)["direction"]
        assert float(got) == float(direction_loss(out, u, "token", p).mean())
    fixed = replace_loss(r, direction_patch=4)
    got = DiffusionLoss(fixed, patch_size=2)(FixedNet(out), x0, None, t=t, noise=eps)["direction"]
    assert float(got) == float(direction_loss(out, u, "token", 4).mean())
    with pytest.raises(ConfigError) as e:
        DiffusionLoss(r)(FixedNet(out), x0, None, t=t, noise=eps)
    assert e.value.field == "loss.direction_patch"


def test_direction_loss_gradient_is_bounded_at_a_zero_prediction():
    """A fresh DiT predicts exactly 0: the direction loss must not explode (≤ 1/(0.01·‖v‖) per token)."""
    g = torch.Generator().manual_seed(4)
    v = torch.randn(2, 1, 4, 4, generator=g, dtype=F64)
    for pred0 in (torch.zeros_like(v), 1e-9 * torch.randn(2, 1, 4, 4, generator=g, dtype=F64)):
        p = pred0.clone().requires_grad_(True)
        direction_loss(p, v, "token", patch_size=2).sum().backward()
        token_norms = v.reshape(2, 1, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 4, 4).norm(dim=-1)
        # each token's gradient is at most 1/(0.01·‖v_tok‖); the loss averages 4 disjoint tokens
        bound = (1.0 / (0.01 * token_norms)).pow(2).sum(1).sqrt() / 4
        assert torch.isfinite(p.grad).all()
        assert (p.grad.flatten(1).norm(dim=1) <= bound * (1 + 1e-9)).all()


# --- the fasterdit preset against LightningDiT's loss ------------------------------------------------
def lightningdit_loss_f64(x_lat, noise, t_ours, out_ours, mean, std):
    """LightningDiT's training loss, written out in numpy float64 in *its* conventions.

    Its latents are normalised ``(x − mean)/std``; its time s runs from noise (s = 0) to data (s = 1),
    ``x_s = s·x1 + (1 − s)·x0`` with x1 the data and x0 the noise, and its network predicts the
    velocity ``x1 − x0``. Loss per sample: ``mean_flat((v̂ − v)²) + mean_flat(1 − cos_C(v̂, v))`` with
    the cosine over the channel dim at each position (``F.cosine_similarity(..., dim=1)``).
    Our network predicts ε − x at our t = 1 − s, i.e. the negative; the loss must be the same.
    """
    x1 = (x_lat - mean[None, :, None, None]) / std[None, :, None, None]
    x0 = noise
    s = (1.0 - t_ours)[:, None, None, None]
    _ = s * x1 + (1.0 - s) * x0  # the input it would see (checked against ours separately)
    v = x1 - x0
    v_hat = -out_ours
    mse = ((v_hat - v) ** 2).mean(axis=(1, 2, 3))
    dot = (v_hat * v).sum(axis=1)
    cos = dot / (np.linalg.norm(v_hat, axis=1) * np.linalg.norm(v, axis=1))
    return (mse + (1.0 - cos).mean(axis=(1, 2))).mean(), (1.0 - cos).mean()


def _latents(seed=0, n=5, c=4, hw=8):
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([5.0, 4.0, 6.5, 3.0], dtype=F64)[:c]  # raw SD-VAE-like latent stds
    shift = torch.tensor([0.8, -0.3, 0.1, 1.2], dtype=F64)[:c]
    x = torch.randn(n, c, hw, hw, generator=g, dtype=F64) * scale[None, :, None, None]
    return x + shift[None, :, None, None], torch.randn(n, c, hw, hw, generator=g, dtype=F64)


def test_fasterdit_preset_trains_lightningdits_loss_on_latents():
    """On 4-channel latents the preset's loss is LightningDiT's: MSE + per-position channel cosine."""
    x_lat, eps = _latents()
    mean, std = x_lat.mean((0, 2, 3)), x_lat.std((0, 2, 3))
    r = get_preset("fasterdit").resolve(mean=mean.tolist(), std=std.tolist()).for_channels(4)
    assert r.loss.direction_mode == "channel"
    t = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=F64)
    out = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(9), dtype=F64)
    terms = DiffusionLoss(r)(lambda xt, tm, y: out, x_lat, None, t=t, noise=eps)
    ref_loss, ref_dir = lightningdit_loss_f64(
        x_lat.numpy(), eps.numpy(), t.numpy(), out.numpy(), mean.numpy(), std.numpy()
    )
    assert float(terms["loss"]) == pytest.approx(ref_loss, rel=1e-12)
    assert float(terms["direction"]) == pytest.approx(ref_dir, rel=1e-12)
    # the token form (the former default) is measurably another loss on the same tensors
    tok = DiffusionLoss(replace_loss(r, direction_mode="token"), patch_size=FixedNet.patch_size)
    other = tok(FixedNet(out), x_lat, None, t=t, noise=eps)["direction"]
    assert abs(float(other) - ref_dir) > 1e-3


class FixedNet:
    """A network with a DiT's patch size that returns a fixed output."""

    patch_size = 2

    def __init__(self, out):
        self.out = out

    def __call__(self, xt, tm, y):
        return self.out


def replace_loss(r: Recipe, **kw) -> Recipe:
    from dataclasses import replace

    return replace(r, loss=replace(r.loss, **kw)).validate()


def test_auto_direction_mode_is_token_on_one_channel_and_is_said():
    r = get_preset("fasterdit")
    assert r.loss.direction_mode == "auto"
    assert r.for_channels(1).loss.direction_mode == "token"
    assert r.for_channels(3).loss.direction_mode == "channel"
    assert "LightningDiT" in r.loss.describe(4) and "[channel" in r.loss.describe(4)
    assert "no gradient" in r.loss.describe(1) and "[token" in r.loss.describe(1)
    # on 1-channel data auto is the token loss, with the model's patch size
    x0, eps = _latents(c=1)
    t = torch.full((5,), 0.4, dtype=F64)
    out = torch.randn(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    fixed = r.resolve(x0)
    p = FixedNet.patch_size
    a = DiffusionLoss(fixed, patch_size=p)(FixedNet(out), x0, None, t=t, noise=eps)["direction"]
    b = DiffusionLoss(replace_loss(fixed, direction_mode="token"), patch_size=p)(
        FixedNet(out), x0, None, t=t, noise=eps
    )
    assert float(a) == float(b["direction"])


@pytest.mark.parametrize(
    "overrides", [[], ["model.name=DiT-B/2", "train.steps=400000"]], ids=["DiT-XL/2", "DiT-B/2"]
)
def test_imagenet_configs_train_the_references_loss_and_optimizer(overrides):
    """LightningDiT's direction loss on the 4-channel latents, and DiT's optimizer: AdamW lr 1e-4, no
    weight decay, no warm-up, no clipping (docs/benchmarks/grad_clip.md measured that it can go)."""
    from pathlib import Path

    from fasterdit.run.config import load_config
    from fasterdit.train.build import check_config

    path = Path(__file__).resolve().parents[1] / "src" / "fasterdit" / "configs" / "imagenet256.yaml"
    cfg = load_config(str(path), overrides)
    recipe, _ = check_config(cfg, shape_if_missing=True)  # the data need not exist: its shape is in cfg
    assert recipe.loss.direction_weight == 1.0 and recipe.loss.direction_mode == "channel"
    o = cfg.optim
    assert (o.lr, o.weight_decay, o.warmup_steps, o.grad_clip) == (1e-4, 0, 0, 0)
    assert (o.beta1, o.beta2) == (0.9, 0.999)
