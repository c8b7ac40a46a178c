"""REPA's alignment term and the recipe's step schedules (docs/repa.md).

References are independent of the code under test: REPA's ``loss.py`` formula re-implemented in float64
NumPy, the tokens after block k recomputed by running the DiT's blocks by hand, the official DiT's
parameter names from a freshly built model, and an uninterrupted run for the resumed one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fasterdit.diffusion.align import Projector, TokenCapture, align_loss
from fasterdit.diffusion.losses import AlignTerm, DiffusionLoss
from fasterdit.diffusion.recipe import load_recipe
from fasterdit.errors import ConfigError
from fasterdit.models import create_model
from fasterdit.run import checkpoint as ck
from fasterdit.run.config import load_config
from fasterdit.train.trainer import Trainer
from tiny_run import TINY_RUN

ALIGN = [
    "recipe=sit",
    "recipe.align.weight=0.5",
    "recipe.align.depth=2",
    "recipe.align.encoder=mnist-ssl",
    "recipe.align.projector_dim=32",
    # the step schedule: alignment off and lognorm timesteps after step 3
    "recipe.stages=[{at: 3, set: {align.weight: 0, timesteps: lognorm, timestep_params: {m: 0, s: 1}}}]",
]


def repa_proj_loss(zs: np.ndarray, zs_tilde: np.ndarray) -> float:
    """REPA's ``SILoss`` projection loss for one encoder, float64: sum over samples of the mean over tokens
    of ``-<z/|z|, z~/|z~|>``, divided by the batch size (F.normalize's eps: norms floored at 1e-12)."""
    total = 0.0
    for z, zt in zip(zs, zs_tilde, strict=True):
        zt = zt / np.maximum(np.linalg.norm(zt, axis=-1, keepdims=True), 1e-12)
        z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        total += np.mean(-(z * zt).sum(axis=-1))
    return total / len(zs)


def test_align_loss_is_repas_projection_loss():
    g = torch.Generator().manual_seed(0)
    proj, feats = torch.randn(5, 16, 12, generator=g), torch.randn(5, 16, 12, generator=g) * 3 + 1
    per_sample = align_loss(proj, feats)
    assert per_sample.shape == (5,)
    ref = repa_proj_loss(feats.double().numpy(), proj.double().numpy())
    assert float(per_sample.mean()) == pytest.approx(ref, abs=1e-6)
    # parallel -> -1, opposite -> +1 (whatever the scale)
    assert torch.allclose(align_loss(feats * 2, feats), torch.full((5,), -1.0), atol=1e-6)
    assert torch.allclose(align_loss(-feats, feats), torch.full((5,), 1.0), atol=1e-6)
    with pytest.raises(ConfigError, match="one feature per DiT token"):
        align_loss(proj, feats[:, :8])


def test_projector_is_repas_build_mlp():
    p = Projector(24, 10, width=40)
    ref = nn.Sequential(nn.Linear(24, 40), nn.SiLU(), nn.Linear(40, 40), nn.SiLU(), nn.Linear(40, 10))
    ref.load_state_dict(p.mlp.state_dict())  # same layout and names (mlp.0, mlp.2, mlp.4)
    x = torch.randn(3, 7, 24)
    assert torch.allclose(p(x), ref(x))
    assert all(float(m.bias.detach().abs().max()) == 0 for m in p.mlp if isinstance(m, nn.Linear))


def _tokens_after_block(model, x, t_model, y, k: int) -> torch.Tensor:
    """The DiT's tokens after block k, by running its modules by hand (float64)."""
    tokens = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t_model) + model.y_embedder(y, False)
    for block in model.blocks[:k]:
        tokens = block(tokens, c)
    return tokens


def test_loss_adds_the_weighted_term_on_the_tokens_after_block_k():
    torch.manual_seed(0)
    model = create_model(
        "DiT-Mi/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False, class_dropout_prob=0.0
    )
    with torch.no_grad():  # non-zero gates, so the blocks are not the identity
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = model.double()
    k, lam = 2, 0.7
    recipe = load_recipe("sit", {"align.weight": lam, "align.depth": k, "align.projector_dim": 16})
    projector = Projector(model.hidden_size, 6, 16).double()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 10, (4,), generator=g)
    t = torch.rand(4, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    feats = torch.randn(4, model.num_patches, 6, generator=g, dtype=torch.float64)

    with_align = DiffusionLoss(recipe, model.patch_size, AlignTerm(TokenCapture(model, k), projector))
    terms = with_align(model, x0, y, t=t, noise=noise, features=feats)
    plain = DiffusionLoss(load_recipe("sit"), model.patch_size)(model, x0, y, t=t, noise=noise)

    x_t = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * noise
    with torch.no_grad():
        tokens = _tokens_after_block(model, x_t, recipe.model_time(t).double(), y, k)
        ref = repa_proj_loss(feats.numpy(), projector(tokens).numpy())
    assert float(terms["align"]) == pytest.approx(ref, rel=1e-10)
    assert float(terms["loss"].detach()) == pytest.approx(
        float(plain["loss"].detach()) + lam * ref, rel=1e-10
    )
    # the gradient reaches the projector and the first k blocks
    terms["loss"].backward()
    assert projector.mlp[0].weight.grad is not None and float(projector.mlp[0].weight.grad.abs().sum()) > 0


def test_recipe_align_and_stages_validate_and_round_trip():
    r = load_recipe(
        "fasterdit",
        {"align.weight": 0.5, "stages": [{"at": 10, "set": {"align.weight": 0, "timesteps": "uniform"}}]},
    )
    assert r.at(9).align.weight == 0.5 and r.at(9).timesteps == "lognorm"
    assert r.at(10).align.weight == 0.0 and r.at(10).timesteps == "uniform" and r.uses_align
    assert type(r).from_yaml(r.to_yaml()) == r
    assert r.describe_stages() == ["after step 10: align.weight=0, timesteps=uniform"]
    with pytest.raises(ConfigError, match=r"recipe.stages\[0\].set.*cannot change"):
        load_recipe("sit", {"stages": [{"at": 3, "set": {"target": "eps"}}]})
    with pytest.raises(ConfigError, match=r"recipe.stages\[1\].at"):
        load_recipe(
            "sit", {"stages": [{"at": 3, "set": {"time_shift": 2}}, {"at": 3, "set": {"time_shift": 1}}]}
        )
    with pytest.raises(ConfigError, match=r"recipe\.align\.depth"):
        load_recipe("sit", {"align.depth": 0})


def _run(run_dir: Path, steps: int, *extra: str, stop_at: int | None = None):
    cfg = load_config("demo", [*TINY_RUN, *ALIGN, f"train.steps={steps}", "log.ckpt_every=100", *extra])
    tr = Trainer(cfg, run_dir, install_signal_handlers=False)
    if stop_at is not None:
        tr.after_step_hook = lambda t, s: t.stop.request("SIGTERM") if s == stop_at else None
    return tr, tr.run()


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    path = ck.latest_checkpoint(run_dir)
    out = {f"model.{k}": v for k, v in ck.load_tensors(path, "model").items()}
    out.update({f"ema.{k}": v for k, v in ck.load_tensors(path, "ema").items()})
    st = ck.load_train_state(path)
    out.update({f"proj.{k}": v for k, v in st["align_projector"].items()})
    for i, s in st["optimizer"]["state"].items():
        out[f"opt.{i}.exp_avg"], out[f"opt.{i}.exp_avg_sq"] = s["exp_avg"], s["exp_avg_sq"]
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("repa-straight")
    return d, _run(d, 5)[1]


def test_the_schedule_turns_alignment_off_after_step_n(straight):
    from fasterdit.train.logging import read_metrics

    rows = read_metrics(straight[0], "train")
    assert [("loss_align" in r) for r in rows] == [True, True, True, False, False]
    recipe = load_recipe(straight[0] / "recipe.yaml")  # saved with the run, stages included
    assert recipe.stages[0].at == 3 and recipe.at(3).timesteps == "lognorm"


def test_the_step_builds_no_recipe_once_training_runs(tmp_path, monkeypatch):
    """The stage recipes are built once with the training parts: a step indexes them, it neither rebuilds
    a recipe nor serialises one to key a cache (host work on every step of a GPU run)."""
    from fasterdit.diffusion.recipe import Recipe

    def refuse(*args, **kwargs):
        raise AssertionError("a training step built or serialised a recipe")

    def after_step(trainer, step):  # step: optimizer steps done; steps 2-5 are watched (the run's
        if step == 1:  # start and its final checkpoint serialise the recipe, as they should)
            monkeypatch.setattr(Recipe, "_stage_recipe", refuse)
            monkeypatch.setattr(Recipe, "to_dict", refuse)
        if step == 5:
            monkeypatch.undo()

    cfg = load_config("demo", [*TINY_RUN, *ALIGN, "train.steps=5", "log.ckpt_every=100", "eval.every=0"])
    tr = Trainer(cfg, tmp_path, install_signal_handlers=False)
    tr.after_step_hook = after_step
    tr.run()
    from fasterdit.train.logging import read_metrics

    rows = read_metrics(tmp_path, "train")
    assert [("loss_align" in r) for r in rows] == [True, True, True, False, False]


def test_checkpoint_model_and_ema_hold_exactly_the_official_names(straight):
    from fasterdit.generate.loading import load_trained

    path = ck.latest_checkpoint(straight[0])
    official = set(create_model("DiT-Mi/2", input_size=8, in_channels=1, num_classes=10).state_dict())
    assert set(ck.load_tensors(path, "model")) == official
    assert set(ck.load_tensors(path, "ema")) == official
    proj = ck.load_train_state(path)["align_projector"]
    assert set(proj) == {
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "mlp.4.weight",
        "mlp.4.bias",
    }
    lm = load_trained(straight[0], ema=True, device="cpu")  # what sample/eval/export load
    assert set(lm.model.state_dict()) == official
    assert not any(isinstance(m, Projector) for m in lm.model.modules())


def test_a_stopped_and_resumed_run_is_bit_identical(tmp_path, straight):
    ref_dir, ref = straight
    _, first = _run(tmp_path, 5, stop_at=2)  # stops before the stage, resumes across it
    assert first.stopped_by == "SIGTERM" and first.step == 2
    _, second = _run(tmp_path, 5)
    a, b = _state(tmp_path), _state(ref_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert first.losses + second.losses == ref.losses


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe\.align\.depth.*1\.\.4"):
        Trainer(load_config("demo", [*TINY_RUN, *ALIGN, "recipe.align.depth=9"]), tmp_path)


def test_snr_shows_each_stage_of_the_timestep_schedule(tmp_path, capsys):
    import json

    from fasterdit.cli import main

    yml = tmp_path / "sched.yaml"
    load_recipe("fasterdit", {"stages": [{"at": 100, "set": {"timesteps": "uniform"}}]}).to_yaml(yml)
    assert main(["snr", "--recipe", str(yml), "--compare", "sit", "--mc", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    curves = {c["recipe"]: c["stats"] for c in out["curves"]}
    assert list(curves) == ["fasterdit", "fasterdit>100", "sit"]
    assert out["schedules"] == {str(yml): ["after step 100: timesteps=uniform"]}
    # after step 100 the law is uniform t on the flow path: the sit preset's density (unit-std data)
    assert curves["fasterdit>100"]["quantiles_nats"] == pytest.approx(curves["sit"]["quantiles_nats"])
    assert curves["fasterdit"]["quantiles_nats"] != pytest.approx(curves["sit"]["quantiles_nats"])


def test_two_process_ddp_and_accumulation_match_one_process(tmp_path):
    """The projector's gradients are all-reduced (its own DDP) and skip the sync on all but the last
    micro-batch: 2 ranks x 8 and 2 micro-batches of 8 train like one batch of 16 (float tolerances)."""
    import os
    import subprocess
    import sys

    args = [*TINY_RUN, *ALIGN, "train.steps=4", "log.ckpt_every=0", "optim.grad_clip=1.0"]
    Trainer(load_config("demo", args), tmp_path / "one", install_signal_handlers=False).run()
    Trainer(
        load_config("demo", [*args, "train.grad_accum=2"]), tmp_path / "acc", install_signal_handlers=False
    ).run()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd += ["fasterdit", "train", "--config", "demo", "--run-dir", str(tmp_path / "ddp"), "--no-progress"]
    for a in args:
        cmd += ["--set", a]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = _state(tmp_path / "one")
    for other in ("acc", "ddp"):
        got = _state(tmp_path / other)
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=f"{other}: {k}")
    moved = ref["proj.mlp.0.weight"] - _run_init_projector(tmp_path / "init")
    assert float(moved.abs().max()) > 1e-6  # the projector trained (not two initialisations compared)


def _run_init_projector(run_dir: Path) -> torch.Tensor:
    tr = Trainer(load_config("demo", [*TINY_RUN, *ALIGN]), run_dir, install_signal_handlers=False)
    parts = tr._setup()
    assert parts.align is not None
    return parts.align.projector.state_dict()["mlp.0.weight"]
