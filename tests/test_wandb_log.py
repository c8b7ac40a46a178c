"""``log.wandb``: a tiny training run in wandb's offline mode writes a wandb run whose history is
metrics.jsonl's numbers under TensorBoard's names, and whose config is the run's config.yaml.

The wandb side is read back from the offline run's ``.wandb`` file itself (a LevelDB-style log of wandb's
protobuf ``Record``s, the format ``wandb sync`` uploads), so the test sees what wandb stored, not what
fasterdit meant to send.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from fasterdit.cli import main
from fasterdit.errors import UserError
from fasterdit.run.config import load_config
from fasterdit.train.build import check_config
from fasterdit.train.logging import read_metrics

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402 - after the skip

SETS = ["data.source=digits", "model.name=DiT-Mi/2", "train.batch_size=8", "train.threads=1",
        "log.log_every=1", "log.sample_every=0", "log.tensorboard=false", "log.wandb=true",
        "eval.every=3", "eval.num_samples=20", "sample.steps=2"]  # fmt: skip
_BLOCK = 32768  # the log format's block size; a record header is 7 bytes (crc32c, length, type)


def _records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: ``:W&B`` header (7 bytes), then LevelDB log blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding
            continue
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST; MIDDLE, LAST append
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _history(records: list) -> list[dict]:
    rows = []
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})  # wandb's own _step, ...
    return rows


def _config(records: list) -> dict:
    out: dict = {}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind in ("run", "config"):
            items = rec.run.config.update if kind == "run" else rec.config.update
            out.update({i.key: json.loads(i.value_json) for i in items if not i.key.startswith("_")})
    return out


def _expected(run: Path) -> list[dict]:
    """metrics.jsonl's records as scalars named ``kind/key``, with the training step."""
    rows = []
    for rec in read_metrics(run):
        vals = {f"{rec['kind']}/{k}": v for k, v in rec.items() if k not in ("kind", "step", "time")}
        vals = {k: v for k, v in vals.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip
        rows.append({"step": rec["step"], **vals})
    return rows


def _train(run: Path, steps: int) -> None:
    args = ["train", "--config", "demo", "--run-dir", str(run), "--no-progress"]
    sets = [*SETS, f"train.steps={steps}"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0


def test_offline_wandb_run_holds_metrics_jsonl_and_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run = tmp_path / "run"
    _train(run, 3)
    (offline,) = (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = _records(offline)
    expected = _expected(run)
    assert [r["step"] for r in expected] == [1, 2, 3, 3]  # three train records and the eval of step 3
    assert "eval/fid" in expected[-1] and "train/loss" in expected[0]
    assert _history(records) == expected
    assert _config(records) == yaml.safe_load((run / "config.yaml").read_text())
    run_id = (run / "wandb-id").read_text().strip()
    assert offline.name == f"run-{run_id}.wandb"
    # a resumed run continues the same wandb run (same id), logging only the new steps
    _train(run, 4)
    again = [p for p in (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb") if p != offline]
    assert len(again) == 1 and again[0].name == f"run-{run_id}.wandb"
    assert _history(_records(again[0])) == [r for r in _expected(run) if r["step"] == 4]


def test_without_wandb_installed_log_wandb_is_a_clear_error_before_any_work(monkeypatch):
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find(name, *a)
    )
    cfg = load_config("demo", [*SETS, "train.steps=1"])
    with pytest.raises(UserError, match=r"pip install 'fasterdit\[wandb\]'"):
        check_config(cfg)
