"""The DiT against independent references: the published architecture (written out here in float64,
following the paper and the official code's layout), the MAE sin-cos formula in numpy, naive float64
attention, the paper's parameter counts, and hand-derived state-dict shapes."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fasterdit.diffusion import get_preset
from fasterdit.errors import ConfigError, DataError, UserError
from fasterdit.models import CONFIGS, DiT, create_model, infer_official_config, load_official_checkpoint
from fasterdit.models.dit import Attention, sincos_pos_embed_2d
from fasterdit.train.step import draw_global

OFFICIAL = [f"DiT-{s}/{p}" for s in ("XL", "L", "B", "S") for p in (2, 4, 8)]
ARCH = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}  # Table 1


def small(**kw) -> DiT:
    """A tiny model with every parameter randomised, so that outputs are not the adaLN-Zero zeros."""
    args = dict(
        input_size=8, patch_size=2, in_channels=3, hidden_size=64, depth=2, num_heads=2, num_classes=5
    )
    args.update(kw)
    model = DiT(**args)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def inputs(model: DiT, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.in_channels, *model.input_size, generator=g).to(model.pos_embed.dtype)
    t = torch.rand(n, generator=g) * 999
    y = torch.randint(0, max(model.num_classes, 1), (n,), generator=g)
    return x, t, y


# ---------------------------------------------------------------------------------------------------
# Independent reference: the published forward pass, functional, float64, from a state dict
# ---------------------------------------------------------------------------------------------------


def mae_pos_embed(dim: int, gh: int, gw: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed (numpy), generalised to a gh x gw grid."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)), 0)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def reference_forward(sd, x, t, y, p, heads, out_ch):
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    n, c, hh, ww = x.shape
    h, w = hh // p, ww // p
    d = sd["pos_embed"].shape[-1]
    # a stride-p conv is a linear map of each flattened (C, p, p) patch
    patches = x.reshape(n, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, c * p * p)
    tok = (
        patches @ sd["x_embedder.proj.weight"].reshape(d, -1).T + sd["x_embedder.proj.bias"] + sd["pos_embed"]
    )
    # GLIDE timestep features, computed in float32 as the official code does
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    tf = torch.cat([torch.cos(args), torch.sin(args)], -1).double()
    temb = F.silu(tf @ sd["t_embedder.mlp.0.weight"].T + sd["t_embedder.mlp.0.bias"])
    cvec = temb @ sd["t_embedder.mlp.2.weight"].T + sd["t_embedder.mlp.2.bias"]
    if "y_embedder.embedding_table.weight" in sd:
        cvec = cvec + sd["y_embedder.embedding_table.weight"][y]

    def ln(z):
        mu = z.mean(-1, keepdim=True)
        return (z - mu) / torch.sqrt(((z - mu) ** 2).mean(-1, keepdim=True) + 1e-6)

    def gelu_tanh(z):
        return 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b = f"blocks.{i}."
        mod = F.silu(cvec) @ sd[b + "adaLN_modulation.1.weight"].T + sd[b + "adaLN_modulation.1.bias"]
        sh1, sc1, g1, sh2, sc2, g2 = (m[:, None] for m in mod.chunk(6, -1))
        a = ln(tok) * (1 + sc1) + sh1
        qkv = (a @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]).reshape(
            n, h * w, 3, heads, d // heads
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v
        att = att.transpose(1, 2).reshape(n, h * w, d)
        tok = tok + g1 * (att @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"])
        m = ln(tok) * (1 + sc2) + sh2
        m = gelu_tanh(m @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        tok = tok + g2 * (m @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"])
    mod = (
        F.silu(cvec) @ sd["final_layer.adaLN_modulation.1.weight"].T
        + sd["final_layer.adaLN_modulation.1.bias"]
    )
    sh, sc = (m[:, None] for m in mod.chunk(2, -1))
    out = (ln(tok) * (1 + sc) + sh) @ sd["final_layer.linear.weight"].T + sd["final_layer.linear.bias"]
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(n, h, w, p, p, out_ch))
    return out.reshape(n, out_ch, h * p, w * p)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(input_size=(8, 12), in_channels=1, learn_sigma=False, num_heads=4),
        dict(num_classes=0, patch_size=4, input_size=16),
    ],
)
def test_forward_matches_float64_reference(kw):
    model = small(**kw).double()
    x, t, y = inputs(model)
    ref = reference_forward(
        model.state_dict(), x, t, y, model.patch_size, model.num_heads, model.out_channels
    )
    out = model(x.double(), t, y)
    assert out.shape == ref.shape
    assert out.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gh,gw,dim", [(16, 16, 1152), (4, 4, 64), (4, 6, 32)])
def test_pos_embed_matches_mae_numpy(gh, gw, dim):
    ref = torch.from_numpy(mae_pos_embed(dim, gh, gw))
    torch.testing.assert_close(sincos_pos_embed_2d(dim, gh, gw), ref, rtol=0, atol=1e-12)
    model = DiT(
        input_size=(2 * gh, 2 * gw), patch_size=2, in_channels=1, hidden_size=dim, depth=0, num_heads=1
    )
    torch.testing.assert_close(model.pos_embed[0], ref.float(), rtol=0, atol=1e-7)
    assert not model.pos_embed.requires_grad and "pos_embed" in model.state_dict()


def test_sdpa_attention_equals_naive_float64():
    attn = Attention(64, num_heads=4)
    x = torch.randn(3, 20, 64)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    w_qkv, b_qkv = attn.qkv.weight.double(), attn.qkv.bias.double()
    qkv = (x.double() @ w_qkv.T + b_qkv).reshape(3, 20, 3, 4, 16)
    ref = torch.zeros(3, 20, 64, dtype=torch.float64)
    for head in range(4):
        q, k, v = (qkv[:, :, j, head] for j in range(3))
        weights = torch.softmax(torch.einsum("nid,njd->nij", q, k) / 4.0, dim=-1)
        ref[:, :, 16 * head : 16 * (head + 1)] = torch.einsum("nij,njd->nid", weights, v)
    ref = ref @ attn.proj.weight.double().T + attn.proj.bias.double()
    torch.testing.assert_close(attn(x).double(), ref, rtol=1e-4, atol=1e-4)  # float32 vs exact
    torch.testing.assert_close(attn.double()(x.double()), ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Configs, shapes, parameter counts, state-dict layout
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_config_output_shape(name):
    p = CONFIGS[name].patch_size
    if not name.startswith(("DiT-Ti", "DiT-Mi")):  # shapes only, nothing allocated
        with torch.device("meta"):
            model = create_model(name, input_size=32, in_channels=4)
            out = model(torch.randn(2, 4, 32, 32), torch.rand(2), torch.randint(0, 1000, (2,)))
        assert out.shape == (2, 8, 32, 32)
        return
    size = 8 if p == 1 else 4 * p  # a small multiple of the patch, not the default 32
    model = create_model(name, input_size=size, in_channels=1, num_classes=10)
    out = model(torch.randn(2, 1, size, size), torch.rand(2), torch.tensor([3, 10]))
    assert out.shape == (2, 2, size, size)


def official_param_count(depth, d, p, c=4, classes=1000, tokens=256, learn_sigma=True, mlp_ratio=4):
    """From the published architecture: conv patch embed, 256-d frequency MLP, label table with null
    row, pos_embed, per block qkv/proj/fc1/fc2/adaLN(6D), final adaLN(2D) + linear."""
    m, out = int(d * mlp_ratio), (2 * c if learn_sigma else c)
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + (d * 6 * d + 6 * d)
    embed = (c * p * p * d + d) + (256 * d + d) + (d * d + d) + (classes + 1) * d + tokens * d
    final = (d * 2 * d + 2 * d) + (d * p * p * out + p * p * out)
    return embed + depth * block + final


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_parameter_counts(name):
    depth, d, heads = ARCH[name.split("-")[1].split("/")[0]]
    p = int(name.split("/")[1])
    cfg = CONFIGS[name]
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (depth, d, heads, p)
    with torch.device("meta"):
        model = create_model(name, input_size=32, in_channels=4)
    n = sum(q.numel() for q in model.parameters())
    assert n == official_param_count(depth, d, p, tokens=(32 // p) ** 2)
    published = {"XL": 675, "L": 458, "B": 130, "S": 33}[name.split("-")[1].split("/")[0]]  # Table 1, M
    assert abs(n / 1e6 - published) < 1.0


def test_published_headline_counts():
    with torch.device("meta"):
        xl = create_model("DiT-XL/2")
        s = create_model("DiT-S/2")
    assert sum(p.numel() for p in xl.parameters()) == 675_129_632
    assert round(sum(p.numel() for p in s.parameters()) / 1e6) == 33


def test_small_configs_have_documented_sizes():
    def count(name, size, ch, classes):
        model = create_model(name, input_size=size, in_channels=ch, num_classes=classes)
        return sum(p.numel() for p in model.parameters())

    assert 1.2e6 < count("DiT-Mi/2", 8, 1, 10) < 1.4e6
    assert 3.8e6 < count("DiT-Ti/4", 28, 1, 10) < 4.4e6
    with torch.device("meta"):
        xs = sum(p.numel() for p in create_model("DiT-XS/2").parameters())
    assert 15e6 < xs < 30e6
    for name, cfg in CONFIGS.items():  # head dim 64 everywhere but DiT-XL (1152 / 16 = 72)
        assert cfg.hidden_size // cfg.num_heads == (72 if name.startswith("DiT-XL") else 64)


def expected_layout(depth=2, d=64, p=2, c=3, classes=5, tokens=16, learn_sigma=True):
    """Key -> shape of the official DiT state dict, written out from the architecture description."""
    out = 2 * c if learn_sigma else c
    keys = {
        "pos_embed": (1, tokens, d),
        "x_embedder.proj.weight": (d, c, p, p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (classes + 1, d),
        "final_layer.linear.weight": (p * p * out, d),
        "final_layer.linear.bias": (p * p * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        keys.update({
            f"blocks.{i}.attn.qkv.weight": (3 * d, d),
            f"blocks.{i}.attn.qkv.bias": (3 * d,),
            f"blocks.{i}.attn.proj.weight": (d, d),
            f"blocks.{i}.attn.proj.bias": (d,),
            f"blocks.{i}.mlp.fc1.weight": (4 * d, d),
            f"blocks.{i}.mlp.fc1.bias": (4 * d,),
            f"blocks.{i}.mlp.fc2.weight": (d, 4 * d),
            f"blocks.{i}.mlp.fc2.bias": (d,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * d, d),
            f"blocks.{i}.adaLN_modulation.1.bias": (6 * d,),
        })  # fmt: skip
    return keys


def test_state_dict_layout_matches_official():
    model = DiT(
        input_size=8, patch_size=2, in_channels=3, hidden_size=64, depth=2, num_heads=2, num_classes=5
    )
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_layout()
    with torch.device("meta"):
        xl = create_model("DiT-XL/2")
    sd = {k: tuple(v.shape) for k, v in xl.state_dict().items()}
    assert sd == expected_layout(depth=28, d=1152, p=2, c=4, classes=1000, tokens=256)
    assert len(sd) == 292


# ---------------------------------------------------------------------------------------------------
# adaLN-Zero, CFG, label dropout, unconditional, checkpointing, errors
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_adaln_zero_initial_output_is_exactly_zero(learn_sigma):
    model = create_model("DiT-Mi/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=learn_sigma)
    x, t, y = inputs(model)
    out = model(x, t, y)
    assert torch.count_nonzero(out) == 0
    tokens, c = torch.randn(4, 16, 128), torch.randn(4, 128)
    assert torch.equal(model.blocks[0](tokens, c), tokens)  # every block starts as the identity
    ((out - x.repeat(1, out.shape[1], 1, 1)) ** 2).mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0  # but it can learn


def _split_cfg(model, n=3, seed=0):
    x, t, y = inputs(model, 2 * n, seed)
    t = torch.cat([t[:n], t[:n]])
    y = torch.cat([y[:n], torch.full((n,), model.num_classes)])
    return x, t, y


def test_cfg_scale_one_equals_conditional_output():
    # float64: in float32 a batch of 3 and a batch of 6 block their matmuls differently on some CPUs'
    # BLAS (3e-5 apart on AMD EPYC), so a float32 equality would test the BLAS, not the guidance.
    model = small(in_channels=4).double()
    x, t, y = _split_cfg(model)
    cond = model(x[:3], t[:3], y[:3])
    out = model.forward_with_cfg(x, t, y, cfg_scale=1.0)
    torch.testing.assert_close(out[:3, :4], cond[:, :4], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[3:, :4], cond[:, :4], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("guide_channels", [None, 3])
def test_cfg_guides_the_requested_channels(guide_channels):
    model = small(in_channels=4).double()  # float64: batch 3 vs 6 (see above)
    x, t, y = _split_cfg(model)
    x_other = x.clone()
    x_other[3:] = 100.0  # the second half of x is ignored, as in the official code
    cond = model(x[:3], t[:3], y[:3])
    uncond = model(x[:3], t[:3], y[3:])
    s = 4.0
    out = model.forward_with_cfg(x_other, t, y, cfg_scale=s, guide_channels=guide_channels)
    g = 4 if guide_channels is None else 3  # default: every prediction channel of the 4-channel input
    guided = uncond[:, :g] + s * (cond[:, :g] - uncond[:, :g])
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[:3, :g], guided, **tol)
    torch.testing.assert_close(out[3:, :g], guided, **tol)
    torch.testing.assert_close(out[:3, g:], cond[:, g:], **tol)  # passed through per row
    torch.testing.assert_close(out[3:, g:], uncond[:, g:], **tol)
    assert not torch.allclose(out[:3, 3], cond[:, 3], atol=1e-3) or g == 3


def test_cfg_errors():
    model = small()
    x, t, y = _split_cfg(model)
    with pytest.raises(UserError, match="even batch"):
        model.forward_with_cfg(x[:5], t[:5], y[:5], 2.0)
    with pytest.raises(ConfigError, match="guide_channels"):
        model.forward_with_cfg(x, t, y, 2.0, guide_channels=7)
    with pytest.raises(UserError, match="class-conditional"):
        small(num_classes=0).forward_with_cfg(x, t, y, 2.0)


def _drop_mask(model: DiT, n: int, seed: int) -> torch.Tensor | None:
    """The trainer's label-dropout mask for a global batch of ``n`` (the one place training draws it)."""
    data = SimpleNamespace(channels=model.in_channels, resolution=model.input_size[0])
    g = torch.Generator().manual_seed(seed)
    return draw_global(get_preset("dit"), data, model, g, torch.device("cpu"), n).drop


def test_label_dropout():
    model = small().double().train()
    x, t, y = inputs(model, 6)
    drop = torch.tensor([1, 0, 1, 0, 0, 1])
    out = model(x, t, y, force_drop_ids=drop)
    ref = model.eval()(x, t, torch.where(drop == 1, model.num_classes, y))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # the trainer's dropout mask: reproducible from its generator, at the configured rate
    emb = model.y_embedder
    labels = torch.zeros(20000, dtype=torch.long)
    a, b = _drop_mask(model, 20000, seed=3), _drop_mask(model, 20000, seed=3)
    assert a is not None and a.dtype == torch.long and torch.equal(a, b)
    rate = (a == 1).float().mean().item()
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20000)
    assert torch.equal(emb.token_drop(labels, a) == model.num_classes, a == 1)  # the model applies it as is
    # without a mask, training mode drops at random from the global RNG (the official semantics)
    torch.manual_seed(3)
    c = emb.token_drop(labels)
    torch.manual_seed(3)
    assert torch.equal(c, emb.token_drop(labels))
    rate = (c == model.num_classes).float().mean().item()
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20000)
    torch.testing.assert_close(model.eval()(x, t, y), model(x, t, y))
    # without a null row (class_dropout_prob=0, as official) labels cannot be dropped
    nonull = small(class_dropout_prob=0.0)
    assert nonull.y_embedder.embedding_table.num_embeddings == 5
    assert _drop_mask(nonull, 6, seed=0) is None
    with pytest.raises(ConfigError, match="null class"):
        nonull(x.float(), t, y, force_drop_ids=drop)


@pytest.mark.parametrize("num_classes", [0, None])
def test_unconditional(num_classes):
    model = small(num_classes=num_classes)
    assert model.y_embedder is None and model.num_classes == 0
    assert not any(k.startswith("y_embedder") for k in model.state_dict())
    x, t, y = inputs(model)
    torch.testing.assert_close(model(x, t), model(x, t, y))
    assert _drop_mask(model, 4, seed=0) is None


def test_gradient_checkpointing_gives_identical_gradients():
    model = small().double().train()
    x, t, y = inputs(model)
    drop = torch.zeros(4, dtype=torch.long)

    def grads(ckpt):
        model.zero_grad()
        model.grad_checkpointing = ckpt
        (model(x, t, y, force_drop_ids=drop) ** 2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, ckpt = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-12, atol=1e-12)


def test_scalar_t_rectangular_and_channels():
    # float64: a scalar t embeds a batch of 1 where a full t embeds a batch of 4 (different BLAS blocking)
    model = small(input_size=(8, 12), in_channels=1, learn_sigma=False, num_heads=4).double()
    x, _, y = inputs(model)
    out = model(x, torch.tensor(500.0), y)
    assert out.shape == (4, 1, 8, 12)
    torch.testing.assert_close(out, model(x, torch.full((4,), 500.0), y), rtol=1e-12, atol=1e-12)


def test_config_errors():
    with pytest.raises(ConfigError, match="input_size"):
        create_model("DiT-S/4", input_size=30)
    with pytest.raises(ConfigError, match="num_heads"):
        DiT(hidden_size=64, num_heads=3, depth=1, input_size=8)
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("DiT-XXL/2")
    with pytest.raises(ConfigError, match="fixes depth"):
        create_model("DiT-S/2", depth=3)
    model = small()
    with pytest.raises(UserError, match="expects inputs of shape"):
        model(torch.randn(2, 3, 16, 16), torch.rand(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(UserError, match="pass labels"):
        model(torch.randn(2, 3, 8, 8), torch.rand(2))


# ---------------------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------------------


def test_official_checkpoint_round_trip(tmp_path):
    model = create_model("DiT-Mi/2", input_size=8, in_channels=1, num_classes=10)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n != "pos_embed":
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    x, t, y = inputs(model)
    path = tmp_path / "DiT-Mi-2-8x8.pt"
    torch.save(model.state_dict(), path)  # the released-weights format: a raw state dict
    loaded = load_official_checkpoint(path)
    assert loaded.config_name == "DiT-Mi/2" and not loaded.training
    assert loaded.num_classes == 10 and loaded.learn_sigma and loaded.input_size == (8, 8)
    assert not loaded.pos_embed.requires_grad
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)

    # the official train.py layout: EMA preferred; DDP "module." prefixes are stripped
    ema = {k: v + 1.0 if k.startswith("final_layer.linear") else v for k, v in model.state_dict().items()}
    ckpt = {
        "model": {f"module.{k}": v for k, v in model.state_dict().items()},
        "ema": ema,
        "opt": torch.optim.AdamW(model.parameters()).state_dict(),
        "args": argparse.Namespace(model="DiT-Mi/2", image_size=64),
    }
    torch.save(ckpt, tmp_path / "0001000.pt")
    from_ema = load_official_checkpoint(tmp_path / "0001000.pt")
    torch.testing.assert_close(from_ema.final_layer.linear.bias, ema["final_layer.linear.bias"])
    from_model = load_official_checkpoint(tmp_path / "0001000.pt", prefer_ema=False)
    torch.testing.assert_close(from_model(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_official_loader_unconditional_custom_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = small(num_classes=0, depth=3, hidden_size=128, num_heads=2)  # no named config: head dim 64
    path = tmp_path / "custom.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_official_checkpoint(path)
    assert loaded.config_name is None and loaded.num_classes == 0 and loaded.num_heads == 2
    x, t, _ = inputs(model)
    torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)


def test_infer_config_of_dit_xl2_shapes():
    with torch.device("meta"):
        sd = create_model("DiT-XL/2").state_dict()
    cfg = infer_official_config(sd)
    assert cfg["name"] == "DiT-XL/2"
    assert (cfg["input_size"], cfg["in_channels"], cfg["num_classes"], cfg["learn_sigma"]) == (
        32,
        4,
        1000,
        True,
    )
    assert (cfg["depth"], cfg["hidden_size"], cfg["num_heads"], cfg["patch_size"]) == (28, 1152, 16, 2)


def test_official_loader_rejects_junk(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(DataError, match=r"junk\.pt.*not a readable"):
        load_official_checkpoint(junk)
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(DataError, match=r"resnet\.pt: not a DiT checkpoint"):
        load_official_checkpoint(other)
    with pytest.raises(DataError, match="no such checkpoint"):
        load_official_checkpoint(tmp_path / "missing.pt")
    broken = small().state_dict()
    broken["blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(DataError, match=r"broken\.pt"):
        load_official_checkpoint(tmp_path / "broken.pt")


# ---------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_fullgraph():
    """fullgraph=True fails on any graph break. The 'eager'/'aot_eager' backends check tracing (the
    part that matters for graph breaks) in seconds; inductor's C++ codegen takes ~45 s per block on
    this CPU and is left to GPU machines."""
    torch._dynamo.reset()
    model = small().train()
    block = model.blocks[0]
    tokens, c = torch.randn(2, 16, 64, requires_grad=True), torch.randn(2, 64)
    compiled_block = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled_block(tokens, c), block(tokens, c))
    compiled_block(tokens, c).sum().backward()

    x, t, y = inputs(model)
    drop = _drop_mask(model, len(y), seed=0)
    ref = model(x, t, y, force_drop_ids=drop)
    model.grad_checkpointing = True
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    out = compiled(x, t, y, force_drop_ids=drop)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref)
