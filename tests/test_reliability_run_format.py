"""Reliability, round two (issue 27, items 1, 2, 3 and 10): the run format under a live writer, file
permissions, a damaged meta.json, and leftovers of a restarted job.

1. ``sample``/``eval`` of a run that is training with ``log.keep_last 1``: the checkpoint a reader chose
   is pruned under it; the reader lists again and loads the newest intact one, and says nothing about
   damage (a checkpoint deleted under it is not damaged).
2. Every file of a run gets the mode the umask gives a new file (safetensors alone wrote 0600).
3. An edited or damaged meta.json (another model, ``"step": "abc"``, a list, a changed recipe value) is
   damage like a flipped byte: ``sample --ckpt RUN`` and resume fall back to the previous checkpoint
   with a warning that names the file.
10. A restarted job (torchrun ``--max-restarts``, or a rerun after ``kill -9``) removes the temporary
    files and directories the dead attempt left in the run directory before it writes anything.

Issue 30, item 5 (the stop checkpoint against torchrun's SIGKILL): the SHA-256 that meta.json records is
taken while each file is written, and is that of the file as read back; a checkpoint killed between its
files (weights written, training state not) is never taken for a checkpoint, and the next start removes it.

Everything goes through the real code: real checkpoints written by the trainer and by
``save_checkpoint``, ``fasterdit sample`` and ``fasterdit train`` through ``fasterdit.cli.main``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fasterdit.cli import main
from fasterdit.generate import load_trained
from fasterdit.run import checkpoint as ck
from fasterdit.runtime import hashed
from tiny_run import TINY_RUN, train_cli

BASE = [*TINY_RUN, "log.keep_last=2"]
CKPT4 = Path("checkpoints") / "step-000000004"


def train_args(run_dir: Path, steps: int, *extra: str) -> list[str]:
    """``fasterdit train`` argv (for :func:`main`) of the tiny run, a checkpoint every 2 steps."""
    return train_cli([], run_dir, [*BASE, f"train.steps={steps}", "log.ckpt_every=2", *extra])


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (copied by the tests that change it)."""
    d = tmp_path_factory.mktemp("four") / "run"
    assert main(train_args(d, 4)) == 0
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(d)] == [2, 4]
    return d


@pytest.fixture
def run_copy(four_steps, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(four_steps, d)
    return d


def saved_parts(ckpt: Path) -> dict:
    """What ``save_checkpoint`` needs to write ``ckpt`` again (its weights, state and own meta fields)."""
    meta = ck.read_meta(ckpt)
    for key in ("format", "version", "step", "files", "sha256", "saved_at", "meta_sha256"):
        meta.pop(key)
    return {
        "model_state": ck.load_tensors(ckpt, "model"),
        "ema_state": ck.load_tensors(ckpt, "ema"),
        "train_state": ck.load_train_state(ckpt),
        "meta": meta,
    }


# ---------------------------------------------------------------------------------------------------
# 1. reading a run while it saves and prunes
# ---------------------------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Saves a checkpoint after another with ``keep_last=1`` (what training with ``log.keep_last 1`` does,
    with 0.1 s instead of the training in between), until stopped.

    Why a pause at all: a reader needs the checkpoint it reads to live for one read (30-100 ms here);
    saving back to back (about 60 ms a save) would prune faster than anything can be read, which no
    training does, and end in the bounded retry's error.
    """

    PAUSE_S = 0.1

    def __init__(self, run_dir: Path, parts: dict, first_step: int):
        super().__init__(daemon=True)
        self.run_dir, self.parts, self.step = run_dir, parts, first_step
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.saved = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                ck.save_checkpoint(self.run_dir, self.step + 1, keep_last=1, **self.parts)
                self.step += 1
                self.saved += 1
                self.stop.wait(self.PAUSE_S)
        except (ck.CheckpointError, OSError) as err:  # reported by the test, not lost in the thread
            self.error = err


def test_loading_a_run_that_prunes_with_keep_last_1_always_succeeds(run_copy, capsys, monkeypatch):
    parts = saved_parts(run_copy / CKPT4)
    want = ck.read_meta(run_copy / CKPT4)["sha256"]["ema.safetensors"]
    passes = {"moved": 0}
    real_pass = ck._first_intact

    def counting_pass(*args):
        found, moved = real_pass(*args)
        passes["moved"] += moved
        return found, moved

    monkeypatch.setattr(ck, "_first_intact", counting_pass)
    writer = Writer(run_copy, parts, first_step=4)
    writer.start()
    steps = []
    try:
        while len(steps) < 30 or (writer.saved < 15 and len(steps) < 300):
            newest_before = writer.step
            lm = load_trained(run_copy)  # every load must succeed
            assert lm.step >= newest_before  # the newest checkpoint when the load began, or a newer one
            assert lm.weights_file == "ema.safetensors" and lm.weights_sha256 == want
            steps.append(lm.step)
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    assert writer.error is None, writer.error
    assert writer.saved >= 15 and len(ck.list_checkpoints(run_copy)) == 1
    assert "warning" not in capsys.readouterr().err  # a pruned checkpoint is not a damaged one
    assert passes["moved"] >= 1  # the race did happen: a checkpoint was pruned under a read
    print(f"{writer.saved} saves, loaded steps {steps[0]}..{steps[-1]}, {passes['moved']} passes re-listed")


def test_a_checkpoint_pruned_while_it_is_read_is_looked_up_again(run_copy):
    """Deterministic: the first read is overtaken by a save of step 5 that prunes step 4 (keep_last 1)."""
    parts = saved_parts(run_copy / CKPT4)
    warnings: list[str] = []
    read: list[int] = []

    def read_and_overtake(ckpt: Path) -> int:
        read.append(ck.checkpoint_step(ckpt))
        if len(read) == 1:
            ck.save_checkpoint(run_copy, 5, keep_last=1, **parts)
        ck.load_tensors(ckpt, "ema")  # fails for step 4: pruned
        return ck.read_meta(ckpt)["step"]

    path, step = ck.open_intact(run_copy, read_and_overtake, warnings.append)
    assert read == [4, 5] and step == 5 and path.name == "step-000000005" and warnings == []


def test_a_checkpoint_pruned_between_its_size_and_its_checksum_is_looked_up_again(run_copy, monkeypatch):
    """Deterministic: step 4's files pass the size check, then a save of step 5 prunes it before its
    checksum is read (the window a concurrent ``keep_last 1`` run hit, as FileNotFoundError)."""
    parts = saved_parts(run_copy / CKPT4)
    real_sha = ck._sha256
    saved: list[int] = []

    def sha_after_a_prune(path: Path) -> str:
        if not saved:
            saved.append(5)
            ck.save_checkpoint(run_copy, 5, keep_last=1, **parts)  # prunes step 4, whose file is `path`
        return real_sha(path)

    monkeypatch.setattr(ck, "_sha256", sha_after_a_prune)
    warnings: list[str] = []
    path, step = ck.open_intact(run_copy, lambda c: ck.read_meta(c)["step"], warnings.append)
    assert saved == [5] and step == 5 and path.name == "step-000000005" and warnings == []


def test_a_checkpoint_that_keeps_vanishing_is_a_clear_error(run_copy, monkeypatch):
    monkeypatch.setattr(ck, "_first_intact", lambda *args: (None, True))
    with pytest.raises(ck.CheckpointError, match=r"pruned or replaced 20 times in a row"):
        ck.open_intact(run_copy, ck.read_meta, print)


# ---------------------------------------------------------------------------------------------------
# 2. permissions
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_of_a_run_follows_the_umask(tmp_path, umask):
    run_dir = tmp_path / "run"
    old = os.umask(umask)
    try:
        assert main(train_args(run_dir, 2, "log.ckpt_every=1", "log.sample_every=1")) == 0
        out = run_dir / "samples" / "extra.npz"
        assert main(["sample", "--ckpt", str(run_dir), "--num-samples", "2", "--steps", "2",
                     "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    finally:
        os.umask(old)
    modes = {p.relative_to(run_dir).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run_dir.rglob("*")}
    for rel in ("checkpoints/step-000000002/model.safetensors", "checkpoints/step-000000002/ema.safetensors",
                "checkpoints/step-000000002/state.pt", "checkpoints/step-000000002/meta.json",
                "checkpoints/latest", "config.yaml", "recipe.yaml", "metrics.jsonl", ".fasterdit.lock",
                "samples/step-000000002.png", "samples/extra.npz", "samples/extra.json"):  # fmt: skip
        assert rel in modes, rel
    want = {p: (0o777 if (run_dir / p).is_dir() else 0o666) & ~umask for p in modes}
    assert {p: oct(m) for p, m in modes.items() if m != want[p]} == {}


# ---------------------------------------------------------------------------------------------------
# 3. a damaged meta.json
# ---------------------------------------------------------------------------------------------------


def _edit(field: str, value):
    def apply(meta: dict) -> dict:
        node = meta
        *path, last = field.split(".")
        for key in path:
            node = node[key]
        node[last] = value
        return meta

    return apply


def _version_1(edit):
    """A checkpoint of the previous format (no meta_sha256) with the same edit: caught by its shape or
    by the weights it does not describe."""

    def apply(meta: dict) -> dict:
        meta = edit(meta)
        meta.pop("meta_sha256")
        meta["version"] = 1
        return meta

    return apply


DAMAGE = {
    "another-model": _edit("model.name", "DiT-S/2"),
    "step-abc": _edit("step", "abc"),
    "another-step": _edit("step", 2),
    "a-list": lambda meta: [meta],
    "edited-recipe": _edit("recipe.loss.direction_weight", 0.5),
    "truncated": None,
    "v1-another-model": _version_1(_edit("model.name", "DiT-S/2")),
    "v1-config-model-a-list": _version_1(_edit("config.model", ["DiT-Mi/2"])),
    "v1-no-config": _version_1(lambda meta: {k: v for k, v in meta.items() if k != "config"}),
}


def damage_meta(ckpt: Path, kind: str) -> Path:
    path = ckpt / "meta.json"
    if DAMAGE[kind] is None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text(json.dumps(DAMAGE[kind](json.loads(path.read_text())), indent=1))
    return path


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_sample_falls_back_from_a_damaged_meta_json(run_copy, tmp_path, capsys, kind):
    bad = damage_meta(run_copy / CKPT4, kind)
    out = tmp_path / "s.npz"
    code = main(["sample", "--ckpt", str(run_copy), "--num-samples", "2", "--steps", "2",
                 "--out", str(out), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and str(bad) in warnings[0], err
    side = json.loads(out.with_suffix(".json").read_text())
    assert "step-000000002" in json.dumps(side) and "step-000000004" not in json.dumps(side)


def test_a_damaged_meta_json_given_explicitly_is_a_clear_error(run_copy, tmp_path, capsys):
    bad = damage_meta(run_copy / CKPT4, "step-abc")
    out = tmp_path / "x.png"
    code = main(["sample", "--ckpt", str(run_copy / CKPT4), "--num-samples", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(bad) in err and "'abc'" in err


@pytest.mark.parametrize(
    "kind", ["another-model", "step-abc", "a-list", "edited-recipe", "truncated", "v1-config-model-a-list"]
)
def test_resume_falls_back_from_a_damaged_meta_json(run_copy, capsys, kind):
    bad = damage_meta(run_copy / CKPT4, kind)
    assert main(train_args(run_copy, 6)) == 0
    out = capsys.readouterr()
    err = out.out + out.err  # the trainer's console lines
    assert str(bad) in err and "falling back" in err and "step-000000002 (step 2)" in err, err
    # one that fails its checks is kept aside, never used; a version-1 one that passes them but does not
    # load is left where it is (as a state.pt that verifies but does not load), and pruned in its turn
    assert (run_copy / "checkpoints" / "corrupt-step-000000004").is_dir() == (not kind.startswith("v1"))
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(run_copy)] == [4, 6]


def test_meta_sha256_is_recorded_and_checked(run_copy):
    ckpt = run_copy / CKPT4
    meta = ck.read_meta(ckpt)
    assert meta["version"] == 2 and meta["meta_sha256"] == ck.meta_digest(meta)
    ck.verify_checkpoint(ckpt)
    # the manifest is checked by the files, not by the digest; any other field is covered
    assert ck.meta_digest({**meta, "files": {}, "sha256": {}}) == meta["meta_sha256"]
    assert ck.meta_digest({**meta, "saved_at": "yesterday"}) != meta["meta_sha256"]


# ---------------------------------------------------------------------------------------------------
# 10. a restarted job and the leftovers of the attempt that died
# ---------------------------------------------------------------------------------------------------


def test_a_restart_removes_what_the_dead_attempt_left(run_copy, capsys):
    ckpts = run_copy / "checkpoints"
    half = ckpts / ".tmp-step-000000006-99999"  # a checkpoint being written when the attempt died
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    trash = ckpts / ".trash-step-000000002-99998"  # a prune interrupted after its rename
    shutil.copytree(ckpts / "step-000000002", trash)
    planted = [half, trash, ckpts / ".tmp-latest-99999", run_copy / ".tmp-config.yaml-99999",
               run_copy / "samples" / ".tmp-step-000000006.png-99999"]  # fmt: skip
    for p in planted[2:]:
        p.parent.mkdir(exist_ok=True)
        p.write_text("partial")
    assert main(train_args(run_copy, 6)) == 0
    out = capsys.readouterr()
    err = out.out + out.err  # the trainer's console lines
    for p in planted:
        assert not p.exists() and f"removed {p}" in err, (p, err)
    assert "step-000000004 (step 4)" in err  # resumed from the intact checkpoint, not the leftovers
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(run_copy)] == [4, 6]
    assert not [p for p in run_copy.rglob(".tmp-*")] and not [p for p in ckpts.iterdir() if p.name[0] == "."]


# ---------------------------------------------------------------------------------------------------
# issue 30, item 5: checksums taken while writing; a checkpoint killed between its files
# ---------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_sha256_taken_while_writing_is_that_of_the_file_read_back(run_copy, monkeypatch):
    meta = ck.read_meta(run_copy / CKPT4)  # written by the trainer
    assert meta["sha256"] == {n: file_sha256(run_copy / CKPT4 / n) for n in meta["files"]}
    # small chunks and a short queue: many chunks, the writer waiting for the hashing thread
    monkeypatch.setattr(hashed, "CHUNK", 4096)
    monkeypatch.setattr(hashed, "QUEUED", 2)
    again = ck.save_checkpoint(run_copy / "again", 4, keep_last=None, **saved_parts(run_copy / CKPT4))
    meta = ck.read_meta(again)
    assert meta["sha256"] == {n: file_sha256(again / n) for n in meta["files"]}
    assert set(meta["files"]) == {"ema.safetensors", "model.safetensors", "state.pt"}
    ck.verify_checkpoint(again)
    assert not [t for t in threading.enumerate() if t.name == "fasterdit-sha256"]


def test_safetensors_written_as_a_stream_load_back_and_match_save_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    fp32 = {"b.weight": torch.randn(7, 5, generator=g), "a.bias": torch.randn(3, generator=g),
            "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}  # fmt: skip
    digest = hashed.write_tensors(fp32, tmp_path / "ours.safetensors")
    save_file(fp32, str(tmp_path / "ref.safetensors"))
    ours = (tmp_path / "ours.safetensors").read_bytes()
    assert ours == (tmp_path / "ref.safetensors").read_bytes()  # the checkpoints' case: fp32 weights
    assert digest == hashlib.sha256(ours).hexdigest()
    mixed = {
        **fp32,
        "half": torch.randn(4, 4, generator=g).half(),
        "bf": torch.randn(6, generator=g).bfloat16(),
        "steps": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
        "u8": torch.arange(9).to(torch.uint8),
    }
    hashed.write_tensors(mixed, tmp_path / "mixed.safetensors")
    back = load_file(tmp_path / "mixed.safetensors")
    assert back.keys() == mixed.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in mixed.items())


KILLED_BETWEEN_FILES = textwrap.dedent(
    """
    import os, signal, sys
    from fasterdit.cli import main
    from fasterdit.run import checkpoint as ck

    def killed(obj, path):  # the weights are written, the training state is next: SIGKILL now
        os.kill(os.getpid(), signal.SIGKILL)

    ck.write_torch = killed
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_checkpoint_killed_between_its_files_is_not_taken_as_intact(run_copy, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_BETWEEN_FILES)
    cmd = train_cli([sys.executable, str(script)], run_copy, [*BASE, "train.steps=6", "log.ckpt_every=2"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    ckpts = run_copy / "checkpoints"
    [half] = [p for p in ckpts.iterdir() if p.name.startswith(".tmp-step-000000006")]
    # weights first, what sampling needs: both complete; no training state, no meta.json
    assert sorted(p.name for p in half.iterdir()) == ["ema.safetensors", "model.safetensors"]
    assert load_file(half / "ema.safetensors").keys() == load_file(half / "model.safetensors").keys()
    # not a checkpoint to any reader: the latest, the candidates, sample/eval loading
    assert ck.checkpoint_step(ck.latest_checkpoint(run_copy)) == 4
    assert half not in ck.candidates(run_copy) and half not in ck.list_checkpoints(run_copy)
    assert load_trained(run_copy).step == 4
    # the next start removes it and resumes from the intact checkpoint
    assert main(train_args(run_copy, 6)) == 0
    assert not half.exists()
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(run_copy)] == [4, 6]
