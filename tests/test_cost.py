"""The analytic cost model against independent references: torch's FlopCounterMode, the DiT paper's
published Gflops, the real parameter count of built models, and the bytes autograd actually saves."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fasterdit.commands import info
from fasterdit.errors import ConfigError, UserError
from fasterdit.models import CONFIGS, DiT, create_model
from fasterdit.models.cost import GPUS, Arch, estimate_cost


def _inputs(model: DiT, n: int):
    x = torch.randn(n, model.in_channels, *model.input_size)
    return x, torch.rand(n) * 999, torch.randint(0, max(model.num_classes, 1), (n,))


@pytest.mark.parametrize(
    "build",
    [
        lambda: create_model("DiT-Mi/2", input_size=8, in_channels=1, num_classes=10),
        lambda: create_model("DiT-Ti/4", input_size=28, in_channels=1, num_classes=10),
        lambda: DiT(
            input_size=(8, 12),
            patch_size=2,
            in_channels=3,
            hidden_size=64,
            depth=2,
            num_heads=2,
            num_classes=0,
            learn_sigma=False,
            mlp_ratio=3.0,
        ),
    ],
)
def test_forward_flops_equal_flop_counter(build):
    model = build().eval()
    x, t, y = _inputs(model, 3)
    # the math backend decomposes attention into bmm's, which FlopCounterMode counts
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, t, y)
    est = estimate_cost(model, batch_size=3)
    assert est.forward_flops_per_sample * 3 == counter.get_total_flops()


# Table 4 of Peebles & Xie: forward Gflops (fvcore counts multiply-adds) at 256x256 (32x32x4 latents)
PAPER_GFLOPS = {
    "DiT-S/8": 0.36, "DiT-S/4": 1.41, "DiT-S/2": 6.06, "DiT-B/8": 1.42, "DiT-B/4": 5.56,
    "DiT-B/2": 23.01, "DiT-L/8": 5.01, "DiT-L/4": 19.70, "DiT-L/2": 80.71, "DiT-XL/8": 7.39,
    "DiT-XL/4": 29.05, "DiT-XL/2": 118.64,
}  # fmt: skip


@pytest.mark.parametrize("name", list(PAPER_GFLOPS))
def test_macs_match_the_paper(name):
    macs = estimate_cost(name).forward_macs_per_sample / 1e9
    assert abs(macs - PAPER_GFLOPS[name]) <= 0.005 + 1e-3 * PAPER_GFLOPS[name]  # 2-decimal rounding
    assert estimate_cost(name).forward_flops_per_sample == 2 * estimate_cost(name).forward_macs_per_sample


def test_xl2_at_512():
    assert abs(estimate_cost("DiT-XL/2", input_size=64).forward_macs_per_sample / 1e9 - 524.60) < 0.1


@pytest.mark.parametrize("name", list(CONFIGS))
def test_param_count_equals_built_model(name):
    variants = [dict(), dict(num_classes=0), dict(learn_sigma=False, in_channels=1, num_classes=10)]
    for kw in variants:
        with torch.device("meta"):
            model = create_model(name, **kw)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert Arch.of_name(name, **kw).param_count() == (total, trainable)
        assert estimate_cost(name, **kw).params == total


def test_training_flops_and_gpu_time():
    est = estimate_cost("DiT-XL/2", batch_size=256, dtype="bf16", mfu=0.4)
    assert est.train_flops_per_step == 3 * est.forward_flops_per_sample * 256
    ck = estimate_cost("DiT-XL/2", batch_size=256, grad_checkpointing=True)
    assert ck.train_flops_per_step == 4 * ck.forward_flops_per_sample * 256
    # independent: 3 x 2 x 118.64 GMACs x 256 samples on an A100 (312 TFLOP/s bf16) at 40% MFU
    a100 = next(g for g in est.gpus if g.name == "A100-80GB")
    assert a100.seconds_per_step == pytest.approx(3 * 2 * 118.64e9 * 256 / (312e12 * 0.4), rel=1e-3)
    v100 = next(g for g in est.gpus if g.name == "V100")
    assert v100.seconds_per_step is None  # no bf16 tensor cores
    eight = estimate_cost("DiT-XL/2", batch_size=256, num_gpus=8)
    assert eight.gpus[0].seconds_per_step == pytest.approx(est.gpus[0].seconds_per_step / 8)
    assert eight.activation_bytes == est.activation_bytes // 8


def _saved_activation_bytes(model: DiT, n: int) -> int:
    """Bytes of the distinct storages autograd saves for backward, excluding the parameters."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    x, t, y = _inputs(model, n)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, t, y, force_drop_ids=torch.zeros(n, dtype=torch.long))
        ((out - torch.randn_like(out)) ** 2).mean()
    return sum(seen.values())


def test_activation_memory_matches_what_autograd_saves():
    model = create_model("DiT-Ti/4", input_size=28, in_channels=1, num_classes=10).train()
    est = estimate_cost(model, batch_size=8, dtype="fp32")
    plain = _saved_activation_bytes(model, 8)
    assert abs(est.activation_bytes / plain - 1) < 0.10
    model.grad_checkpointing = True
    kept = _saved_activation_bytes(model, 8)  # forward keeps block inputs; backward recomputes one block
    assert kept < plain / 5
    assert abs(est.activation_bytes_checkpointed / (kept + plain / len(model.blocks)) - 1) < 0.15
    half = estimate_cost(model, batch_size=8, dtype="bf16")
    assert half.activation_bytes * 2 == est.activation_bytes


def test_built_model_and_name_agree():
    model = create_model("DiT-Mi/2", input_size=8, in_channels=1, num_classes=10)
    a = estimate_cost(model, batch_size=64)
    b = estimate_cost("DiT-Mi/2", 8, 1, 64, num_classes=10)
    assert (a.params, a.forward_flops_per_sample, a.activation_bytes) == (
        b.params, b.forward_flops_per_sample, b.activation_bytes,
    )  # fmt: skip
    assert a.model_name == "DiT-Mi/2"


def test_format_is_readable():
    text = estimate_cost("DiT-XL/2", batch_size=256, num_gpus=8, mfu=0.35).format()
    for needle in ["675,129,632", "MFU 35%", "GFLOPs", "checkpointed", *GPUS]:
        assert needle in text
    assert "n/a" in text  # V100 has no bf16


def test_errors():
    with pytest.raises(ConfigError, match="unknown model"):
        estimate_cost("DiT-Huge/2")
    with pytest.raises(ConfigError, match="dtype"):
        estimate_cost("DiT-S/2", dtype="int8")
    with pytest.raises(ConfigError, match="num_gpus"):
        estimate_cost("DiT-S/2", batch_size=10, num_gpus=4)
    with pytest.raises(ConfigError, match="unknown GPU"):
        estimate_cost("DiT-S/2", gpus=["TPU"])
    with pytest.raises(ConfigError, match="input_size"):
        estimate_cost("DiT-S/4", input_size=30)
    model = create_model("DiT-Mi/2", input_size=8, in_channels=1, num_classes=10)
    with pytest.raises(ConfigError, match="input_size"):
        estimate_cost(model, input_size=16)


# --------------------------------------------------------------------------------------------------
# fasterdit info
# --------------------------------------------------------------------------------------------------


def _info(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    info.add_arguments(parser)
    return info.run(parser.parse_args(list(argv)))


def test_info_list_and_model(capsys):
    assert _info("--list") == 0
    text = capsys.readouterr().out
    assert all(name in text for name in CONFIGS)
    assert "675.13M" in text
    assert _info("--model", "DiT-S/2", "--input-size", "32", "--in-channels", "4", "--batch-size", "64") == 0
    assert "DiT-S/2" in capsys.readouterr().out


def test_info_dataset_grid(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert _info("--dataset", "digits", "--grid", str(out), "--model", "DiT-Mi/2", "--batch-size", "8") == 0
    text = capsys.readouterr().out
    assert "1621 train" in text and "1x8x8" in text and "input 1x8x8" in text
    img = Image.open(out)
    # 8 rows x 10 classes of 8x8 tiles with 2 px padding, scaled x4
    assert img.size == ((10 * 10 + 2) * 4, (8 * 10 + 2) * 4)
    with pytest.raises(UserError, match="--dataset"):
        _info("--grid", str(out))
