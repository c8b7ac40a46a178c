"""`--dry-run` of a sampling job (fasterdit.generate.cost).

The evaluation counts come from a stand-in network; the reference is the real network run through
the same sampler with a counting wrapper (calls, and calls whose batch is doubled by guidance).
The GPU-hours are checked against the arithmetic N × passes × forward FLOPs / (peak × MFU).
"""

from __future__ import annotations

import pytest
import torch

from fasterdit.cli import main
from fasterdit.diffusion.recipe import get_preset
from fasterdit.diffusion.sampling import sample
from fasterdit.generate.cost import sampling_cost
from fasterdit.generate.job import SampleSettings
from fasterdit.models import create_model
from fasterdit.models.cost import GPUS, estimate_cost
from test_official_sampling import random_dit, save_official


class _Rows(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, []
        self.num_classes = net.num_classes

    def forward(self, x, t, y=None):
        self.rows.append(x.shape[0])
        return self.net(x, t, y)


@pytest.mark.parametrize(
    "preset, sampler, steps, cfg, interval",
    [
        ("dit", "ddpm", 7, 1.5, None),
        ("fasterdit", "heun", 5, 4.0, (0.0, 0.6)),
        ("fasterdit", "euler", 6, 1.0, None),
        ("sit", "euler-maruyama", 5, 2.0, (0.3, 1.0)),
    ],
)
def test_evaluation_counts_match_the_real_network(preset, sampler, steps, cfg, interval):
    torch.manual_seed(0)
    recipe = get_preset(preset).resolve(torch.randn(64, 1, 8, 8))
    net = create_model(
        "DiT-Mi/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=recipe.learn_sigma
    )
    settings = SampleSettings(3, 0, sampler, steps, cfg, guidance_interval=interval)
    counted = _Rows(net.eval())
    sample(counted, recipe, torch.randn(1, 1, 8, 8), y=torch.tensor([3]), sampler=sampler, steps=steps,
           cfg_scale=cfg, guidance_interval=interval, generator=torch.Generator().manual_seed(0))  # fmt: skip
    cost = sampling_cost(net, recipe, settings, gpus=["H100-SXM"], mfu=0.5)
    assert cost.nfe == len(counted.rows)
    assert cost.guided == sum(1 for r in counted.rows if r == 2)
    fwd = estimate_cost(net).forward_flops_per_sample
    assert cost.forward_flops == fwd
    expected = 3 * (cost.nfe + cost.guided) * fwd / (GPUS["H100-SXM"].peak_tflops["bf16"] * 1e12 * 0.5) / 3600
    assert cost.hours["H100-SXM"] == pytest.approx(expected, rel=1e-12)


def test_cli_dry_run_prints_the_plan_and_samples_nothing(tmp_path, capsys):
    path = tmp_path / "DiT-Mi-2-256x256.pt"
    save_official(random_dit(), path)  # an official DiT file: ddpm, 250 steps, the batch doubled by cfg
    out = tmp_path / "samples.npz"
    args = [
        "--ckpt",
        str(path),
        "--num-samples",
        "50000",
        "--cfg-scale",
        "1.5",
        "--dry-run",
        "--gpu-model",
        "H100-SXM",
    ]
    assert main(["sample", *args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NFE 250, 250 of them guided" in text and "50,000" in text and "H100-SXM" in text
    assert "A100" not in text  # --gpu names the one GPU to cost
    assert not out.exists() and not (tmp_path / "samples.npz.work").exists()
    # eval plans before the reference batch is downloaded
    missing = ["--reference-npz", str(tmp_path / "VIRTUAL_imagenet256_labeled.npz")]
    assert main(["eval", *args, *missing, "--out", str(tmp_path / "m.json")]) == 0
    assert "NFE 250" in capsys.readouterr().out and not (tmp_path / "m.json").exists()
