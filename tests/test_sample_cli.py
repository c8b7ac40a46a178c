"""CLI smoke, offline: a few training steps, then `fasterdit sample` to PNG and to an ADM-style .npz;
`load_model` on an official-format DiT checkpoint gives the same network as the weights it was saved from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fasterdit.cli import main
from fasterdit.generate import load_model
from fasterdit.models import create_model

SETS = [
    "data.source=digits",
    "model.name=DiT-Mi/2",
    "train.steps=3",
    "train.batch_size=8",
    "train.threads=1",
    "log.log_every=1",
    "log.ckpt_every=2",
    "log.sample_every=2",
    "sample.steps=2",
    "sample.per_class=2",
    "log.tensorboard=false",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    args = ["train", "--config", "demo", "--run-dir", str(d), "--no-progress"]
    for s in SETS:
        args += ["--set", s]
    assert main(args) == 0
    return d


def test_train_writes_the_run_dir(run_dir):
    for name in (
        "config.yaml",
        "recipe.yaml",
        "metrics.jsonl",
        "loss.png",
        "snr_pdf.png",
        "samples.png",
        "samples/step-000000002.png",
        "checkpoints/latest",
    ):
        assert (run_dir / name).is_file(), name
    grid = np.asarray(Image.open(run_dir / "samples.png"))
    # 10 class rows x 2 samples of 8x8, scaled up 4x with 2 px padding (scaled as well)
    assert grid.shape == ((10 * 10 + 2) * 4, (2 * 10 + 2) * 4)


def test_train_again_resumes_and_is_done(run_dir, capsys):
    assert main(["train", "--run-dir", str(run_dir), "--no-progress"]) == 0  # config from the run dir
    err = capsys.readouterr().err
    assert "resuming from" in err and "nothing to do" in err


def test_sample_png_and_npz(run_dir, tmp_path, no_network):
    png = tmp_path / "grid.png"
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(run_dir),
                "--num-samples",
                "6",
                "--labels",
                "3,7",
                "--steps",
                "2",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    img = np.asarray(Image.open(png))
    assert img.ndim == 2 and img.shape[0] > 0
    npz, npz2 = tmp_path / "s.npz", tmp_path / "s2.npz"

    def heun_npz(ckpt, out) -> int:
        args = [
            "--num-samples",
            "5",
            "--sampler",
            "heun",
            "--steps",
            "2",
            "--cfg-scale",
            "1.5",
            "--seed",
            "3",
        ]
        return main(["sample", "--ckpt", str(ckpt), *args, "--out", str(out)])

    assert heun_npz(run_dir / "checkpoints", npz) == 0
    with np.load(npz) as f:
        assert set(f.files) == {"arr_0", "arr_1"}
        assert f["arr_0"].shape == (5, 8, 8, 1) and f["arr_0"].dtype == np.uint8
        assert f["arr_1"].shape == (5,) and f["arr_1"].min() >= 0 and f["arr_1"].max() < 10
    # same seed -> same samples (the run directory or its checkpoints folder: the same checkpoint)
    heun_npz(run_dir, npz2)
    with np.load(npz) as a, np.load(npz2) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])


def test_sample_bad_input_is_a_clear_error(run_dir, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(run_dir), "--labels", "3,99", "--out", str(tmp_path / "g.png")]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "g.png")]) == 2
    assert main(["sample", "--ckpt", str(run_dir), "--out", str(tmp_path / "g.jpg")]) == 2


def test_load_model_matches_training_ema(run_dir):
    from fasterdit.run import checkpoint as ck

    model, recipe, cfg = load_model(run_dir)
    ema = ck.load_tensors(ck.latest_checkpoint(run_dir), "ema")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())
    assert cfg.model.name == "DiT-Mi/2" and recipe.name == "fasterdit" and recipe.scaling.is_resolved
    assert not model.training


@pytest.mark.parametrize("layout", ["raw", "train"])
def test_load_model_on_an_official_checkpoint(tmp_path, layout):
    torch.manual_seed(0)
    ref = create_model("DiT-Mi/2", input_size=8, in_channels=4, num_classes=10, learn_sigma=True).eval()
    with torch.no_grad():  # non-zero output layers so the comparison is not 0 == 0
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = ref.state_dict()
    path = tmp_path / "DiT-Mi-2-official.pt"
    if layout == "raw":
        torch.save(state, path)
    else:  # what the official train.py writes: the EMA is what should be loaded
        torch.save(
            {"model": {k: torch.zeros_like(v) for k, v in state.items()}, "ema": state, "opt": {}}, path
        )
    model, recipe, cfg = load_model(path)
    assert recipe.name == "dit" and recipe.learn_sigma and cfg.model.name == "DiT-Mi/2"
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([1.0, 500.0, 999.0]), torch.tensor([0, 5, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), ref(x, t, y), rtol=0, atol=0)
