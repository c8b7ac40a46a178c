"""Reliability (issue 13): no bad weights saved as good, one process per run dir, corrupt or unreadable
checkpoints fall back, a full disk is one clear error, early validation, safe pruning, quick stops, CLI
outputs checked before the work, and the minor cases (metrics after a restart, a second Ctrl-C, prepare).

Every test drives the real code path: real checkpoint files with a flipped byte, two real processes for
the lock, a real tmpfs (through an unprivileged mount namespace, where the machine allows one) for a
full disk, and a patched writer that writes part of a file and then fails with ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fasterdit.cli import main
from fasterdit.errors import ConfigError
from fasterdit.run import checkpoint as ck
from fasterdit.run.config import load_config
from fasterdit.train.logging import read_metrics
from fasterdit.train.runlock import RunDirLocked, RunLock
from fasterdit.train.trainer import Trainer, TrainingAborted
from tiny_run import TINY_RUN, train_cli

BASE = [*TINY_RUN, "log.keep_last=2"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def cfg_for(steps: int, *extra: str):
    return load_config("demo", [*BASE, f"train.steps={steps}", *extra])


def trainer(run_dir: Path, steps: int, *extra: str, **kw) -> Trainer:
    return Trainer(cfg_for(steps, *extra), run_dir, install_signal_handlers=False, **kw)


def steps_on_disk(run_dir: Path) -> list[int]:
    return [ck.checkpoint_step(p) for p in ck.list_checkpoints(run_dir)]


def flip_byte(path: Path, offset_from_end: int = 100) -> None:
    """Flip one byte inside the data (not the header): the size stays, the content changes."""
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))


def rewrite_manifest(ckpt: Path, drop_checksums: bool = False) -> None:
    """Make meta.json describe the files as they are now (a file damaged before it was checksummed)."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {n: (ckpt / n).stat().st_size for n in meta["files"]}
    if drop_checksums:
        meta.pop("sha256")
    else:
        meta["sha256"] = {n: ck._sha256(ckpt / n) for n in meta["files"]}
    (ckpt / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (copied by the tests that damage it)."""
    d = tmp_path_factory.mktemp("four") / "run"
    trainer(d, 4, "log.ckpt_every=2").run()
    assert steps_on_disk(d) == [2, 4]
    return d


@pytest.fixture
def run_copy(four_steps, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(four_steps, d)
    return d


# ---------------------------------------------------------------------------------------------------
# 1. non-finite values and weights
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.lr=inf", "optim.lr"),
        ("optim.grad_clip=inf", "optim.grad_clip"),
        ("sample.cfg_scale=nan", "sample.cfg_scale"),
        ("recipe.loss.direction_weight=.inf", "recipe.loss.direction_weight"),
    ],
)
def test_non_finite_config_values_are_refused(override, field):
    with pytest.raises(ConfigError, match="finite") as info:
        load_config("demo", [override])
    assert info.value.field == field


def test_yaml_inf_learning_rate_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: .inf}\n")
    with pytest.raises(ConfigError, match=r"optim.lr: must be a finite number"):
        load_config(path)


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    tr = trainer(tmp_path, 6, "log.ckpt_every=2")

    def poison(t: Trainer, step: int) -> None:
        if step == 3:  # the loss stays finite (the EMA is not trained on), the EMA weights are NaN
            next(t.parts.ema.model.parameters()).data.fill_(float("nan"))

    tr.after_step_hook = poison
    with pytest.raises(TrainingAborted) as info:
        tr.run()
    msg = str(info.value)
    assert "step 4" in msg and "not saved" in msg and "ema." in msg
    assert "step-000000002" in msg and "intact" in msg
    assert steps_on_disk(tmp_path) == [2]
    assert not ck.nonfinite_names(ck.load_tensors(ck.latest_checkpoint(tmp_path), "ema"))


def test_a_non_finite_streak_never_prunes_the_last_good_checkpoint(tmp_path):
    tr = trainer(tmp_path, 6, "log.ckpt_every=2", "log.keep_last=1", "train.max_nonfinite=10")
    tr.loss_hook = lambda step, terms: dict(terms, loss=terms["loss"] * float("nan")) if step >= 4 else terms
    res = tr.run()  # steps 5 and 6 are skipped; the final save happens inside the streak
    assert res.step == 6 and res.skipped_steps == 2
    assert steps_on_disk(tmp_path) == [4, 6]  # keep_last=1, but step 4 (before the streak) is kept


def test_abort_message_does_not_call_a_damaged_checkpoint_intact(tmp_path):
    tr = trainer(tmp_path, 20, "log.ckpt_every=4", "train.max_nonfinite=3")

    def damage(t: Trainer, step: int) -> None:
        if step == 4:
            flip_byte(t.state.last_ckpt / "model.safetensors")

    tr.after_step_hook = damage
    tr.loss_hook = lambda step, terms: dict(terms, loss=terms["loss"] * float("inf")) if step >= 4 else terms
    with pytest.raises(TrainingAborted) as info:
        tr.run()
    msg = str(info.value)
    assert "step-000000004" in msg and "NOT intact" in msg and "SHA-256" in msg


# ---------------------------------------------------------------------------------------------------
# 2. one process per run directory
# ---------------------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from fasterdit.train.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_second_process_is_refused_naming_the_holder_and_kill_9_releases(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        cmd = [sys.executable, "-m", "fasterdit", "train", "--config", "demo", "--run-dir", str(run_dir)]
        for a in [*BASE, "train.steps=2"]:
            cmd += ["--set", a]
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"pid {holder.pid} on host {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
        # nothing in the run dir was touched by the refused process
        assert sorted(p.name for p in run_dir.iterdir()) == [".fasterdit.lock"]
        with pytest.raises(RunDirLocked):  # in-process too, before any setup
            trainer(run_dir, 2).run()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    RunLock(run_dir).acquire().release()  # the kernel dropped the dead holder's lock


# ---------------------------------------------------------------------------------------------------
# 3./4. corrupt and unreadable checkpoints
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "state.pt"])
def test_flipped_byte_falls_back_to_the_previous_intact_checkpoint(run_copy, name, capsys):
    bad = run_copy / "checkpoints" / "step-000000004"
    flip_byte(bad / name)
    assert ck.is_complete(bad)  # the size check alone does not see it
    with pytest.raises(ck.CheckpointError, match="SHA-256"):
        ck.verify_checkpoint(bad)
    res = trainer(run_copy, 6, "log.ckpt_every=2").run()
    out = capsys.readouterr()
    warning = out.out + out.err
    assert f"step-000000004/{name}" in warning and "falling back" in warning
    assert res.step == 6 and "resuming from" in warning and "step-000000002 (step 2)" in warning
    assert (run_copy / "checkpoints" / "corrupt-step-000000004").is_dir()  # kept aside, never used
    assert steps_on_disk(run_copy) == [4, 6]


def test_sample_and_eval_loading_verify_checksums(run_copy, capsys):
    from fasterdit.generate.loading import load_trained

    bad = run_copy / "checkpoints" / "step-000000004"
    flip_byte(bad / "ema.safetensors")
    lm = load_trained(run_copy)  # a run dir falls back, with a warning naming the file
    assert lm.step == 2 and "step-000000004/ema.safetensors" in capsys.readouterr().err
    with pytest.raises(ck.CheckpointError, match="SHA-256"):  # the checkpoint asked for: no fallback
        load_trained(bad)
    flip_byte(run_copy / "checkpoints" / "step-000000002" / "model.safetensors")
    with pytest.raises(ck.CheckpointError, match="no intact checkpoint"):
        load_trained(run_copy, ema=False)


def test_no_intact_checkpoint_fails_and_names_every_file(run_copy):
    for step in (2, 4):
        flip_byte(run_copy / "checkpoints" / f"step-{step:09d}" / "state.pt")
    with pytest.raises(ck.CheckpointError) as info:
        trainer(run_copy, 6, "log.ckpt_every=2").run()
    msg = str(info.value)
    assert (
        "no intact checkpoint" in msg
        and "step-000000002/state.pt" in msg
        and "step-000000004/state.pt" in msg
    )


def test_damaged_safetensors_header_falls_back(run_copy, capsys):
    bad = run_copy / "checkpoints" / "step-000000004"
    with open(bad / "model.safetensors", "r+b") as f:  # the 8-byte header length: absurd
        f.write(b"\xff" * 8)
    rewrite_manifest(bad, drop_checksums=True)  # a checkpoint of an older version: sizes only
    res = trainer(run_copy, 6, "log.ckpt_every=2").run()
    out = capsys.readouterr()
    assert "cannot read weights" in out.out + out.err and res.step == 6


def test_damaged_rng_state_falls_back_instead_of_a_traceback(run_copy, capsys):
    bad = run_copy / "checkpoints" / "step-000000004"
    state = torch.load(bad / "state.pt", weights_only=True)
    state["rng"][0]["python"] = [2**40] * 625  # random.setstate raises OverflowError on this
    torch.save(state, bad / "state.pt")
    rewrite_manifest(bad)  # valid checksums: the content itself is bad
    res = trainer(run_copy, 6, "log.ckpt_every=2").run()
    out = capsys.readouterr()
    assert "invalid training state" in out.out + out.err and res.step == 6


# ---------------------------------------------------------------------------------------------------
# 5. a full disk
# ---------------------------------------------------------------------------------------------------


def test_enospc_in_the_middle_of_a_file_is_one_clear_error(run_copy, monkeypatch):
    before = {p.name: p.read_bytes() for p in (run_copy / "checkpoints" / "step-000000004").iterdir()}
    real_save = torch.save

    def half_then_full(obj, f, *args, **kwargs):  # write part of state.pt, then the disk is full
        real_save(obj, f, *args, **kwargs)
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(ck.CheckpointError) as info:
        trainer(run_copy, 6, "log.ckpt_every=2").run()
    msg = str(info.value)
    assert "no space left on " in msg and "writing " in msg and "step-000000006" in msg
    assert " MB needed, " in msg and " MB free" in msg and "step-000000004 is intact" in msg
    assert "Traceback" not in msg and "enforce fail" not in msg
    root = run_copy / "checkpoints"
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert ck.checkpoint_step(ck.latest_checkpoint(run_copy)) == 4
    assert {p.name: p.read_bytes() for p in (root / "step-000000004").iterdir()} == before


def test_free_space_is_checked_against_the_last_checkpoint_before_writing(run_copy, monkeypatch):
    usage = shutil.disk_usage(run_copy)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: usage._replace(free=1_000_000))
    with pytest.raises(
        ck.CheckpointError, match=r"no space left on .* writing .*step-000000006: [\d.]+ MB needed"
    ):
        trainer(run_copy, 6, "log.ckpt_every=2").run()
    assert not (run_copy / "checkpoints" / "step-000000006").exists()
    assert not [p for p in (run_copy / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


TMPFS = textwrap.dedent(
    """
    import sys
    from fasterdit.run import checkpoint as ck
    from fasterdit.run.config import load_config
    from fasterdit.train.trainer import Trainer

    if sys.argv[2] == "no-precheck":  # let the real writers hit the full disk
        ck._check_space = lambda *a: None
    try:
        Trainer(load_config("demo", sys.argv[3:]), sys.argv[1], install_signal_handlers=False).run()
    except ck.CheckpointError as err:
        print("ERROR", err)
        sys.exit(3)
    """
)


@pytest.mark.parametrize("mode", ["precheck", "no-precheck"])
def test_real_full_tmpfs(tmp_path, mode):
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount for a private tmpfs")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unprivileged mount namespaces are not available here")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    script = tmp_path / "tmpfs.py"
    script.write_text(TMPFS)
    args = [*BASE, "train.steps=3", "log.ckpt_every=1", "log.keep_last=3"]
    inner = (
        f"mount -t tmpfs -o size=32m tmpfs {run_dir / 'checkpoints'} && "
        f"{sys.executable} {script} {run_dir} {mode} {' '.join(args)}; "
        f"rc=$?; ls -a {run_dir / 'checkpoints'}; exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", inner], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
    assert "no space left on tmpfs" in err and " MB needed, " in err and "step-000000001 is intact" in err
    listing = proc.stdout.split("ERROR")[-1]  # `ls -a` of the checkpoints after the run
    assert "step-000000001" in listing and ".tmp-" not in listing
    if mode == "no-precheck":
        assert "step-000000002/" in err  # the file whose write failed, by its name in the checkpoint


# ---------------------------------------------------------------------------------------------------
# 6. validation before any work or write
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        (["sample.sampler=eulr"], "sample.sampler", "unknown sampler"),
        (["eval.sampler=hune"], "eval.sampler", "unknown sampler"),
        (["eval.num_samples=1"], "eval.num_samples", ">= 2"),
        (["model.class_dropout_prob=0", "sample.cfg_scale=4"], "sample.cfg_scale", "label dropout"),
        (
            ["model.class_dropout_prob=0", "sample.cfg_scale=1", "eval.cfg_scale=2"],
            "eval.cfg_scale",
            "label dropout",
        ),
        (["train.compile=true", "train.compile_backend=nonesuch"], "train.compile_backend", "unknown"),
        (["train.batch_size=100000000"], "train.batch_size", "GiB"),
    ],
)
def test_late_failures_are_caught_before_the_run_dir_is_touched(tmp_path, overrides, field, words):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=words) as info:
        trainer(run_dir, 2, *overrides).run()
    assert info.value.field == field
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override, field", [("seed=1", "seed"), ("recipe.loss.direction_weight=0.5", "recipe")]
)
def test_resume_with_another_seed_or_recipe_needs_a_flag(run_copy, override, field):
    config_before = (run_copy / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="--allow-config-change") as info:
        trainer(run_copy, 6, "log.ckpt_every=2", override).run()
    assert info.value.field == field
    assert (run_copy / "config.yaml").read_text() == config_before
    res = trainer(run_copy, 5, "log.ckpt_every=2", override, allow_config_change=True).run()
    assert res.step == 5


# ---------------------------------------------------------------------------------------------------
# 7. pruning
# ---------------------------------------------------------------------------------------------------


class _Killed(BaseException):
    """Stands for a kill -9 in the middle of a prune."""


def test_interrupted_prune_leaves_no_half_checkpoint_and_is_swept(tmp_path, monkeypatch):
    real_rmtree = shutil.rmtree

    def dying_rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith(".trash-step-"):
            (path / "model.safetensors").unlink()  # half deleted, then the process dies
            raise _Killed
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ck.shutil, "rmtree", dying_rmtree)
    with pytest.raises(_Killed):
        trainer(tmp_path, 4, "log.ckpt_every=1", "log.keep_last=2").run()
    monkeypatch.setattr(ck.shutil, "rmtree", real_rmtree)
    root = tmp_path / "checkpoints"
    live = [p for p in root.iterdir() if p.name.startswith("step-")]
    assert all(ck.is_complete(p) for p in live)  # the half-deleted one is not under a checkpoint name
    assert [p for p in root.iterdir() if p.name.startswith(".trash-")]
    # an older version's half-deleted step dir, too
    legacy = root / "step-000000000"
    shutil.copytree(live[0], legacy)
    (legacy / "state.pt").unlink()
    trainer(tmp_path, 4, "log.ckpt_every=1", "log.keep_last=2").run()
    assert not [p for p in root.iterdir() if p.name.startswith(".trash-") or p == legacy]


# ---------------------------------------------------------------------------------------------------
# 8. stopping inside long grids and evaluations
# ---------------------------------------------------------------------------------------------------


def _signal_after_forwards(tr: Trainer, n: int) -> None:
    """Deliver the stop request (what the SIGTERM handler does) after the EMA model's n-th forward."""
    calls = {"n": 0}

    def count(_m, _a, _o):
        calls["n"] += 1
        if calls["n"] == n:
            tr.stop.request("SIGTERM")

    def install(step, terms):
        if step == 0:
            tr.parts.ema.model.register_forward_hook(count)
        return terms

    tr.loss_hook = install


@pytest.mark.parametrize(
    "extra",
    [
        ["log.sample_every=1", "sample.steps=20000"],  # a grid of 20,000 steps: minutes
        ["eval.every=1", "eval.num_samples=200", "eval.steps=20000"],  # an evaluation of the same length
    ],
    ids=["grid", "eval"],
)
def test_sigterm_is_honoured_inside_a_long_grid_or_evaluation(tmp_path, extra):
    tr = trainer(tmp_path, 50, "log.ckpt_every=0", *extra)
    _signal_after_forwards(tr, 3)
    t0 = time.time()
    res = tr.run()
    assert time.time() - t0 < 30
    assert res.stopped_by == "SIGTERM" and res.step == 1
    assert ck.checkpoint_step(ck.latest_checkpoint(tmp_path)) == 1
    assert not (tmp_path / "samples" / "step-000000001.png").exists()
    assert not read_metrics(tmp_path, "eval")


# ---------------------------------------------------------------------------------------------------
# 9. sample / eval command lines checked before the work
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--steps", "0"], "--steps"),
        (["--nrow", "0"], "--nrow"),
        (["--nrow", "-2"], "--nrow"),
        (["--cfg-scale", "-1"], "--cfg-scale"),
        (["--cfg-scale", "nan"], "--cfg-scale"),
    ],
)
def test_sample_rejects_bad_values_before_loading(tmp_path, capsys, args, flag):
    # the checkpoint does not even exist: the argument is rejected first
    code = main(["sample", "--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "g.png"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_sample_and_eval_check_output_paths_before_the_work(tmp_path, capsys, four_steps):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert (
        main(["sample", "--ckpt", str(four_steps), "--num-samples", "2", "--out", str(blocker / "g.png")])
        == 2
    )
    err = capsys.readouterr()
    assert "--out" in err.err and "samples" not in err.out  # failed before sampling anything
    for args, flag in (
        (["--out", str(blocker / "m.json")], "--out"),
        (["--save-samples", str(blocker / "s.npz")], "--save-samples"),
        (["--steps", "0"], "--steps"),
        (["--cfg-scale", "-2"], "--cfg-scale"),
    ):
        assert main(["eval", "--ckpt", str(four_steps), "--num-samples", "4", *args]) == 2
        cap = capsys.readouterr()
        assert flag in cap.err and "sampling" not in cap.out
    out = tmp_path / "new" / "deeper" / "g.png"  # a new folder is created
    assert (
        main(["sample", "--ckpt", str(four_steps), "--num-samples", "2", "--steps", "2", "--out", str(out)])
        == 0
    )
    assert out.is_file()


# ---------------------------------------------------------------------------------------------------
# 10. minor
# ---------------------------------------------------------------------------------------------------


def test_restart_without_a_checkpoint_logs_each_step_once(tmp_path):
    tr = trainer(tmp_path, 4, "log.ckpt_every=0")

    def crash(t, step):
        if step == 3:
            raise _Killed

    tr.after_step_hook = crash
    with pytest.raises(_Killed):
        tr.run()
    assert ck.latest_checkpoint(tmp_path) is None
    trainer(tmp_path, 4, "log.ckpt_every=0").run()
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3, 4]


CTRL_C = textwrap.dedent(
    """
    import sys, time
    from fasterdit.cli import main
    from fasterdit.run import checkpoint as ck

    real = ck.write_torch

    def slow(obj, path):  # the save after the first Ctrl-C takes a while: the second one lands in it
        time.sleep(5)
        return real(obj, path)

    ck.write_torch = slow
    sys.exit(main(sys.argv[1:]))
    """
)


def test_second_ctrl_c_aborts_without_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    script = tmp_path / "ctrlc.py"
    script.write_text(CTRL_C)
    cmd = train_cli([sys.executable, str(script)], run_dir, [*BASE, "train.steps=100000", "log.ckpt_every=0"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-2000:]
    assert "Traceback" not in out and "second Ctrl-C" in out
    assert ck.latest_checkpoint(run_dir) is None  # aborted without saving, as it said


def test_prepare_with_an_unwritable_out_is_a_clear_error(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "x.png")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["prepare", "--images", str(tmp_path / "images"), "--out", str(blocker / "out"),
                 "--resolution", "8", "--no-progress"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot create" in err and "Traceback" not in err
