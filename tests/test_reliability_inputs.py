"""Reliability, round two (issue 27, items 4-8): bad inputs fail as one line, at check time, never as a
traceback, an OOM kill or a wrong answer.

Every test goes through the real CLI (``fasterdit.cli.main`` or ``python -m fasterdit`` in a real
process): a class folder named with a newline and a file name that is not UTF-8 prepared for real, values
past their bounds and a "billion laughs" YAML refused before any work, damaged ``.npz``/``.npy`` files, a
real SIGINT during start-up, and two real ``sample`` processes on one ``--out``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from fasterdit.cli import main
from fasterdit.data.prepare.outdir import read_files_list
from fasterdit.generate.job import lock_path, work_dir
from tiny_run import TINY_RUN

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _error_line(capsys) -> str:
    """The CLI's stderr, checked to be one line without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 255 - value, value // 2)).save(path)


def _prepare(images: Path, out: Path) -> int:
    return main(["prepare", "--images", str(images), "--out", str(out), "--resolution", "8", "--no-progress",
                 "--workers", "0"])  # fmt: skip


def _items(out: Path) -> dict[str, np.ndarray]:
    """Every stored item, from the shard files themselves (safetensors' own reader)."""
    m = json.loads((out / "manifest.json").read_text())
    parts = [load_file(str(out / s["file"])) for s in m["shards"]]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _check_indices(images: Path, out: Path, names: list[str]) -> None:
    """files.txt maps every stored index to the file whose pixels the item holds."""
    files = read_files_list(out)
    assert sorted(files) == sorted(names)
    assert len((out / "files.txt").read_text(encoding="utf-8").splitlines()) == len(names)  # one line each
    items = _items(out)
    for index, pixels in zip(items["index"], items["pixels"], strict=True):
        with Image.open(images / files[index]) as img:
            np.testing.assert_array_equal(np.asarray(img.convert("RGB")).transpose(2, 0, 1), pixels)


# ---------------------------------------------------------------------------------------------------
# 4. files.txt and names with a line break
# ---------------------------------------------------------------------------------------------------


def test_files_txt_maps_every_index_to_its_file_despite_a_newline_in_a_folder_name(tmp_path):
    images = tmp_path / "images"
    names = ["a/0.png", "a/1.png", "new\nline/0.png", "new\nline/1.png", "back\\slash/0.png", "z/0.png"]
    for i, name in enumerate(names):
        _png(images / name, 40 * i)  # every file its own colour
    assert _prepare(images, tmp_path / "out") == 0
    _check_indices(images, tmp_path / "out", names)
    lines = (tmp_path / "out" / "files.txt").read_text(encoding="utf-8").splitlines()
    assert "new\\u000aline/0.png" in lines and "back\\\\slash/0.png" in lines  # the documented escape
    labels = _items(tmp_path / "out")["label"].tolist()
    assert sorted(labels) == [0, 0, 1, 2, 2, 3]  # a, back\slash, new\nline, z: four classes


# ---------------------------------------------------------------------------------------------------
# 5. unbounded values: refused at check time, with a bounded message
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, field",
    [
        ("sample.steps=1e9", "sample.steps"),
        ("eval.steps=1000000", "eval.steps"),
        ("train.threads=100000", "train.threads"),
        ("sample.per_class=1000000", "sample.per_class"),
        ("eval.num_samples=1e12", "eval.num_samples"),
    ],
)
def test_unbounded_config_values_are_refused_before_the_run_dir_exists(tmp_path, capsys, override, field):
    run_dir = tmp_path / "run"
    code = main(["train", "--config", "demo", "--run-dir", str(run_dir), "--set", override])
    assert code == 2
    assert field in _error_line(capsys) and not run_dir.exists()


def test_sample_steps_flag_is_bounded_before_loading(tmp_path, capsys):
    code = main(["sample", "--ckpt", str(tmp_path / "none"), "--steps", "1000000000", "--out",
                 str(tmp_path / "s.npz")])  # fmt: skip
    assert code == 2
    err = _error_line(capsys)
    assert "--steps" in err and "100000" in err  # the bound, not "no checkpoint"


def test_png_grid_size_is_bounded_before_loading(tmp_path, capsys):
    code = main(["sample", "--ckpt", str(tmp_path / "none"), "--num-samples", "100000000", "--out",
                 str(tmp_path / "g.png")])  # fmt: skip
    assert code == 2 and "--num-samples" in _error_line(capsys)


@pytest.mark.parametrize(
    "args, field",
    [(["--resolution", "100000"], "resolution"), (["--workers", "-1"], "workers"),
     (["--workers", "100000"], "workers"), (["--batch-size", "100000000"], "batch_size")],
)  # fmt: skip
def test_prepare_values_are_bounded_before_any_work(tmp_path, capsys, args, field):
    _png(tmp_path / "images" / "a" / "0.png", 0)
    code = main(["prepare", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                 "--no-progress", *args])  # fmt: skip
    assert code == 2 and field in _error_line(capsys) and not (tmp_path / "out").exists()


def test_snr_monte_carlo_draws_are_bounded(capsys):
    assert main(["snr", "--mc", "1000000000000"]) == 2
    assert "--mc" in _error_line(capsys)


def _laughs(levels: int = 9) -> str:
    """A "billion laughs" document: each level is nine aliases of the one before (9^levels values)."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["top", "recipe_overrides"])
def test_billion_laughs_yaml_is_refused_quickly_with_a_short_message(tmp_path, capsys, where):
    text = _laughs() if where == "top" else "recipe_overrides:\n" + textwrap.indent(_laughs(), "  ")
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t0 = time.time()
    assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = _error_line(capsys)
    assert time.time() - t0 < 20 and len(err) < 500
    assert str(path) in err and "aliases" in err


def test_ordinary_anchors_still_work(tmp_path):
    from fasterdit.run.config import load_config

    path = tmp_path / "anchors.yaml"
    path.write_text("sample: {steps: &steps 7, per_class: 2}\neval: {steps: *steps}\n")
    cfg = load_config(path)
    assert cfg.sample.steps == 7 and cfg.eval.steps == 7


def test_a_huge_value_is_never_printed_in_full(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(f"train:\n  device: {'x' * 1_000_000}\n")
    assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = _error_line(capsys)
    assert "train.device" in err and len(err) < 500


@pytest.mark.parametrize(
    "text, words", [("[" * 5000, "nested"), ("train: {threads: " + "9" * 5000 + "}", "read")]
)
def test_deep_nesting_and_giant_integers_are_one_line(tmp_path, capsys, text, words):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert words in _error_line(capsys)


# ---------------------------------------------------------------------------------------------------
# 6. bad files: one line naming the file and the problem
# ---------------------------------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_prepared_and_listed(tmp_path):
    images = tmp_path / "images"
    _png(images / "a" / "0.png", 10)
    odd = os.fsdecode(os.path.join(os.fsencode(images / "a"), b"caf\xe9.png"))  # Latin-1, not UTF-8
    try:
        _png(Path(odd), 200)
    except OSError:
        pytest.skip("this filesystem does not take file names that are not UTF-8")
    assert _prepare(images, tmp_path / "out") == 0
    _check_indices(images, tmp_path / "out", ["a/0.png", "a/caf\udce9.png"])
    assert "a/caf\\udce9.png" in (tmp_path / "out" / "files.txt").read_text(encoding="utf-8")


def test_a_config_that_is_not_utf8_names_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train: {device: caf\u00e9}\n".encode("latin-1"))
    assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = _error_line(capsys)
    assert str(path) in err and "not UTF-8" in err


@pytest.fixture
def damaged(tmp_path) -> dict[str, Path]:
    """A truncated .npz (its zip directory cut off), one with a damaged member, a NaN .npy, a truncated
    .npy and text files named .npz/.npy."""
    good = tmp_path / "good.npz"
    np.savez(good, np.zeros((20, 8, 8, 3), np.uint8), np.zeros(20, np.int64))
    blob = good.read_bytes()
    files = {"truncated.npz": blob[: len(blob) // 2], "text.npz": b"not numbers\n", "text.npy": b"hello\n"}
    flipped = bytearray(blob)
    flipped[200] ^= 0xFF  # inside arr_0's data: the zip's CRC no longer matches
    files["flipped.npz"] = bytes(flipped)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    nan = np.zeros((10, 3, 4, 4), np.float32)
    nan[7, 1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    npy = (tmp_path / "nan.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(npy[: len(npy) // 2])
    return {p.name: p for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    "name, words",
    [
        ("truncated.npz", "truncated or damaged"),
        ("flipped.npz", "truncated or damaged"),
        ("text.npz", "not an .npz file"),
    ],
)
def test_damaged_npz_to_eval_is_one_line(damaged, capsys, name, words):
    out = damaged["good.npz"].parent / "m.json"
    assert main(["eval", "--samples-npz", str(damaged[name]), "--out", str(out), "--no-progress"]) == 2
    err = _error_line(capsys)
    assert str(damaged[name]) in err and words in err and "pickled" not in err


@pytest.mark.parametrize(
    "name, words",
    [
        ("truncated.npz", "truncated or damaged"),
        ("flipped.npz", "truncated or damaged"),
        ("text.npz", "not an .npz file"),
        ("truncated.npy", "truncated or damaged"),
        ("text.npy", "not an .npy file"),
        ("nan.npy", "item 7 holds NaN"),
    ],
)
def test_damaged_data_to_snr_is_one_line(damaged, capsys, name, words):
    assert main(["snr", "--data", str(damaged[name]), "--mc", "0"]) == 2
    err = _error_line(capsys)
    assert str(damaged[name]) in err and words in err


STARTUP = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from fasterdit.cli import main
    import fasterdit.run.config as config

    def slow_load(*args, **kwargs):  # start-up that takes a while: the Ctrl-C lands in it
        Path(sys.argv[1]).touch()
        time.sleep(60)

    config.load_config = slow_load
    sys.exit(main(sys.argv[2:]))
    """
)


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    script, ready = tmp_path / "startup.py", tmp_path / "ready"
    script.write_text(STARTUP)
    train = ["train", "--config", "demo", "--run-dir", str(tmp_path / "r")]
    cmd = [sys.executable, str(script), str(ready), *train]
    # a runner started in the background (`cmd &` in a script, nohup) ignores SIGINT, and an ignored signal
    # stays ignored across exec, so Python would not turn Ctrl-C into KeyboardInterrupt: the child starts
    # with the default disposition, as a command typed in a terminal does
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 120
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip() == "fasterdit train: interrupted (Ctrl-C)"


# ---------------------------------------------------------------------------------------------------
# 7. two sample jobs on one --out
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs") / "run"
    args = ["train", "--config", "demo", "--run-dir", str(d), "--no-progress"]
    for s in [*TINY_RUN, "train.steps=2", "log.ckpt_every=2"]:
        args += ["--set", s]
    assert main(args) == 0
    return d


HELD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from fasterdit.cli import main
    from fasterdit.generate import job

    real = job.sample_range

    def held(*args, **kwargs):  # the first batch waits until the test lets it go
        Path(sys.argv[1]).touch()
        while not Path(sys.argv[2]).exists():
            time.sleep(0.05)
        return real(*args, **kwargs)

    job.sample_range = held
    sys.exit(main(sys.argv[3:]))
    """
)


def _sample_args(run_dir: Path, out: Path) -> list[str]:
    return ["sample", "--ckpt", str(run_dir), "--num-samples", "4", "--steps", "2", "--batch-size", "2",
            "--no-progress", "--out", str(out)]  # fmt: skip


def _held_job(tmp_path: Path, run_dir: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    """A real `fasterdit sample` process that has taken its lock and waits in its first batch until the
    returned file exists."""
    script, started, go = tmp_path / "held.py", tmp_path / f"{out.name}.started", tmp_path / f"{out.name}.go"
    script.write_text(HELD)
    cmd = [sys.executable, str(script), str(started), str(go), *_sample_args(run_dir, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert started.exists(), proc.communicate()
    return proc, go


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fasterdit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def test_a_second_sample_job_on_the_same_out_is_refused_and_never_crashes_the_first(run_dir, tmp_path):
    out = tmp_path / "s.npz"
    first, go = _held_job(tmp_path, run_dir, out)
    second = _cli(*_sample_args(run_dir, out))
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr and second.stderr.count("\n") == 1
    assert f"pid {first.pid}" in second.stderr and str(out) in second.stderr
    go.touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert out.is_file() and not work_dir(out).exists() and not lock_path(out).exists()
    again = _cli(*_sample_args(run_dir, out))  # the same command now finds the finished file
    assert again.returncode == 0 and "already complete" in again.stdout


def test_a_killed_job_does_not_block_the_next(run_dir, tmp_path):
    out = tmp_path / "k.npz"
    first, _ = _held_job(tmp_path, run_dir, out)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert lock_path(out).exists()  # left behind by the kill, but no longer locked
    second = _cli(*_sample_args(run_dir, out))
    assert second.returncode == 0, second.stderr[-2000:]
    assert out.is_file() and not lock_path(out).exists()


# ---------------------------------------------------------------------------------------------------
# 8. clear messages
# ---------------------------------------------------------------------------------------------------


def test_eval_refuses_labels_that_are_not_one_per_image(tmp_path, capsys):
    path = tmp_path / "s.npz"
    np.savez(path, np.zeros((200, 28, 28, 1), np.uint8), np.zeros(100, np.int64))
    assert main(["eval", "--samples-npz", str(path), "--out", str(tmp_path / "m.json"), "--no-progress"]) == 2
    err = _error_line(capsys)
    assert str(path) in err and "100 labels" in err and "200 images" in err
    out = tmp_path / "m.json"
    assert main(["eval", "--samples-npz", str(path), "--out", str(out), "--no-labels", "--no-progress"]) == 0
    assert out.is_file()  # --no-labels: the labels are not read, the images are scored
