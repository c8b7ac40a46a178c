"""``train.init``: a fresh run starts from another model's weights (here a diffusers export), bit for bit;
a resumed run ignores it; another architecture is a one-line error naming what differs.

The reference weights are the source run's own ``ema.safetensors`` (read with safetensors), not the export:
the run must start from exactly what was exported, through diffusers' layout and back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_runs import TRAIN, prepare_latents, train_run
from fasterdit.cli import main
from fasterdit.errors import ConfigError
from fasterdit.generate.loading import load_trained
from fasterdit.run.checkpoint import read_meta
from fasterdit.run.config import load_config
from fasterdit.train import Trainer

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(latents, the source run's EMA checkpoint, its diffusers export)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("init")
    latents = prepare_latents(root / "latents")
    run = train_run(latents, root / "src", "fasterdit", steps=6)
    assert main(["export", "--ckpt", str(run), "--out", str(root / "export")]) == 0
    torch.set_num_threads(threads)
    return latents, load_trained(run).path, root / "export"


def _trainer(latents: Path, run: Path, steps: int, init: Path | None) -> Trainer:
    sets = [*TRAIN, f"data.source={latents}", "recipe=fasterdit", f"train.steps={steps}", "log.ckpt_every=2"]
    if init is not None:
        sets.append(f"train.init={init}")
    return Trainer(load_config("mnist-latent", sets), run, install_signal_handlers=False)


def _snapshot_at(tr: Trainer, step: int) -> dict[str, dict[str, torch.Tensor]]:
    """The model's and the EMA's weights when step ``step`` computes its loss (before its update)."""
    seen: dict[str, dict[str, torch.Tensor]] = {}

    def hook(s: int, terms: dict) -> dict:
        if s == step and not seen:
            seen["model"] = {k: v.detach().clone() for k, v in tr.parts.model.state_dict().items()}
            seen["ema"] = {k: v.detach().clone() for k, v in tr.parts.ema.state_dict().items()}
        return terms

    tr.loss_hook = hook
    return seen


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_a_run_initialised_from_a_diffusers_export_starts_with_exactly_its_weights(source, tmp_path, capsys):
    latents, src_ckpt, export = source
    reference = load_file(str(src_ckpt / "ema.safetensors"))
    tr = _trainer(latents, tmp_path / "run", 2, export)
    seen = _snapshot_at(tr, 0)
    tr.run()
    assert _equal(seen["model"], reference) and _equal(seen["ema"], reference)
    out = "".join(capsys.readouterr())  # the run summary: stderr while a progress object is up
    assert f"from train.init {export} (diffusers step 6" in out
    meta = read_meta(tmp_path / "run" / "checkpoints" / "step-000000002")
    weights = export / "transformer" / "diffusion_pytorch_model.safetensors"
    assert meta["init"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (meta["init"]["path"], meta["init"]["source"], meta["init"]["step"]) == (
        str(export),
        "diffusers",
        6,
    )
    assert meta["config"]["train"]["init"] == str(export)


def test_a_resumed_run_ignores_init_and_keeps_its_record(source, tmp_path, capsys):
    latents, src_ckpt, export = source
    run = tmp_path / "run"
    _trainer(latents, run, 2, export).run()
    step2 = run / "checkpoints" / "step-000000002"
    tr = _trainer(latents, run, 3, export)
    seen = _snapshot_at(tr, 2)
    capsys.readouterr()
    tr.run()
    summary = "".join(capsys.readouterr())
    assert f"train.init ({export}) ignored: the run's own checkpoint wins" in summary
    assert _equal(seen["model"], load_file(str(step2 / "model.safetensors")))
    assert _equal(seen["ema"], load_file(str(step2 / "ema.safetensors")))
    assert not _equal(seen["ema"], load_file(str(src_ckpt / "ema.safetensors")))
    step3 = read_meta(run / "checkpoints" / "step-000000003")
    assert step3["init"] == read_meta(step2)["init"] and step3["init"]["source"] == "diffusers"


def test_another_architecture_is_a_one_line_error_naming_it(source, tmp_path, capsys):
    _latents, _src, export = source
    args = ["train", "--config", "demo", "--run-dir", str(tmp_path / "px"), "--no-progress"]
    sets = [*TRAIN, "data.source=digits", "train.steps=1", f"train.init={export}"]  # 8x8x1 pixels
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.init" in err and "in_channels 4 there, 1 here" in err
    assert not (tmp_path / "px" / "checkpoints").exists()
    with pytest.raises(ConfigError, match=r"train\.init: no such run"):
        _trainer(_latents, tmp_path / "none", 1, tmp_path / "missing")
