"""Official DiT and SiT checkpoints sample as their own ``sample.py`` does.

References, written out here in float64 from the official code's semantics (never from fasterdit):
SiT's ``forward`` (drop the learned-sigma half), its ``forward_with_cfg`` (guide ``[:, :3]``), and its
ODE sampler with ``euler`` on ``linspace(0, 1, N)`` in SiT's time (s = 0 noise, s = 1 data), whose
network predicts the velocity dx/ds. The networks are randomly initialised DiTs saved in the official
file layouts (a raw state dict, or ``{"model", "ema", "args"}`` as the training scripts write).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from fasterdit.cli import main
from fasterdit.generate.loading import load_trained
from fasterdit.models import create_model
from fasterdit.models.official import checkpoint_family

F64 = torch.float64
NULL = 10  # the null class of a 10-class model


def random_dit(seed: int = 0, scale: float = 0.15) -> torch.nn.Module:
    """A DiT-Mi/2 on 8×8×4 latents with every weight random (the zero-initialised output is not)."""
    torch.manual_seed(seed)
    model = create_model("DiT-Mi/2", input_size=8, in_channels=4, num_classes=10, learn_sigma=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(scale * torch.randn_like(p))
    return model.eval()


def save_official(model, path, args_model: str | None = None) -> None:
    state = model.state_dict()
    if args_model is None:
        torch.save(state, path)  # the released weights: a raw state dict
    else:  # what train.py writes; the EMA is what gets loaded
        args = argparse.Namespace(model=args_model)
        torch.save({"model": state, "ema": state, "opt": {}, "args": args}, path)


def sit_euler_reference(net, z, y, cfg_scale: float, num_steps: int) -> torch.Tensor:
    """SiT's ``sample.py`` (ODE, ``--sampling-method euler``) in float64, with CFG as SiT does it."""

    def forward(x, s, labels):  # SiT's forward: the network, then the first half of a learn_sigma output
        out = net(x, s, labels)
        return out.chunk(2, dim=1)[0]

    def forward_with_cfg(x, s, labels):
        half = x[: len(x) // 2]
        out = forward(torch.cat([half, half]), s, labels)
        eps, rest = out[:, :3], out[:, 3:]
        cond, uncond = eps.chunk(2)
        half_eps = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)

    x = torch.cat([z, z])
    labels = torch.cat([y, torch.full_like(y, NULL)])
    grid = np.linspace(0.0, 1.0, num_steps)  # SiT: t = linspace(t0, t1, num_steps), t0 = 0, t1 = 1
    for k in range(num_steps - 1):
        s = torch.full((len(x),), float(grid[k]), dtype=torch.float32)
        x = x + float(grid[k + 1] - grid[k]) * forward_with_cfg(x, s, labels)
    return x.chunk(2)[0]


@pytest.mark.parametrize("layout", ["raw", "train"])
def test_official_sit_checkpoint_samples_like_sits_euler_ode(tmp_path, layout):
    ref = random_dit()
    path = tmp_path / ("SiT-Mi-2-256x256.pt" if layout == "raw" else "0100000.pt")
    save_official(ref, path, None if layout == "raw" else "SiT-Mi/2")
    lm = load_trained(path)
    assert lm.source == "official-sit" and lm.recipe.time_input == "reversed"
    assert lm.family.sampler == "dopri5" and lm.family.cfg_scale == 4.0
    assert lm.family.guide_channels == 3 and lm.family.sampler_kwargs == {"atol": 1e-6, "rtol": 1e-3}

    from fasterdit.diffusion.sampling import sample

    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, 8, 8, generator=g, dtype=F64)
    y = torch.tensor([1, 4, 7])
    num_steps = 6  # SiT's grid points: 5 Euler steps
    with torch.no_grad():
        want = sit_euler_reference(ref.double(), z, y, 4.0, num_steps)
    model = lm.model.double()
    got = sample(
        model, lm.recipe, z, y=y, sampler="euler", steps=num_steps - 1, cfg_scale=4.0,
        guide_channels=lm.family.guide_channels,
    ).x  # fmt: skip
    assert float(want.abs().max()) > 0.1
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # without the sign flip the ODE would run the wrong way: the two ends are far apart
    assert float((got - z).abs().mean()) > 0.05


def test_checkpoint_family_order():
    assert checkpoint_family("SiT-XL-2-256x256.pt") == "sit"
    assert checkpoint_family("DiT-XL-2-256x256.pt") == "dit"
    assert checkpoint_family("0400000.pt") == "dit"  # no hint: DiT, the common case
    assert checkpoint_family("0400000.pt", "SiT-XL/2") == "sit"  # the args the training script saved
    assert checkpoint_family("SiT-XL-2-256x256.pt", None, "dit") == "dit"  # an explicit family wins
    from fasterdit.errors import DataError

    with pytest.raises(DataError, match="family"):
        checkpoint_family("x.pt", None, "edm")


def _tiny_vae_dir(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), sample_size=16,
    ).eval()  # fmt: skip
    out = tmp_path / "vae"
    vae.save_pretrained(out)
    return out


def _sample_npz(tmp_path, ckpt, name, *extra) -> np.ndarray:
    out = tmp_path / f"{name}.npz"
    args = ["sample", "--ckpt", str(ckpt), "--num-samples", "3", "--labels", "1,2,3", "--seed", "2",
            "--vae", str(tmp_path / "vae"), "--out", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    return np.load(out)["arr_0"]


def test_official_dit_checkpoint_guides_three_channels_by_default(tmp_path, capsys, no_network):
    _tiny_vae_dir(tmp_path)
    path = tmp_path / "DiT-Mi-2-256x256.pt"
    save_official(random_dit(seed=3), path)
    lm = load_trained(path)
    assert lm.source == "official-dit" and lm.family.sampler == "ddpm" and lm.family.guide_channels == 3
    default = _sample_npz(tmp_path, path, "default", "--steps", "3")
    assert "ddpm, 3 steps" in capsys.readouterr().out
    three = _sample_npz(tmp_path, path, "three", "--steps", "3", "--guide-channels", "3")
    four = _sample_npz(tmp_path, path, "four", "--steps", "3", "--guide-channels", "4")
    assert np.array_equal(default, three)
    assert not np.array_equal(default, four)


def test_official_sit_checkpoint_through_the_cli(tmp_path, capsys, no_network):
    _tiny_vae_dir(tmp_path)
    path = tmp_path / "SiT-Mi-2-256x256.pt"
    save_official(random_dit(seed=4, scale=0.03), path)  # a smooth field: few dopri5 steps
    images = _sample_npz(tmp_path, path, "sit")
    out = capsys.readouterr().out
    assert "sampler dopri5" in out and "cfg 4.0 on 3 channels" in out
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    # --family overrides the file name: the same file read as DiT samples differently
    as_dit = _sample_npz(tmp_path, path, "as-dit", "--family", "dit", "--steps", "2")
    assert "sampler ddpm" in capsys.readouterr().out
    assert not np.array_equal(images, as_dit)
