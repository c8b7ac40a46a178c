"""Offline evaluation (FID / precision / recall / class accuracy on the embedded data), the standard
Inception metrics with a small random TorchScript network standing in for Inception, and `fasterdit eval`."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats
import torch
from torch import nn
from torch.nn import functional as F

from fasterdit.cli import main
from fasterdit.data import load_embedded
from fasterdit.errors import ConfigError
from fasterdit.eval import evaluate, evaluate_samples
from fasterdit.eval.evaluate import embedded_split
from fasterdit.eval.metrics import class_accuracy, inception_score, precision_recall
from fasterdit.eval.standard import (
    TorchScriptInception,
    load_inception,
    standard_metrics,
    write_reference_batch,
)
from fasterdit.generate.job import SampleSettings, sample_shared
from fasterdit.runtime.distributed import DistInfo

# --- the metric on real data -------------------------------------------------------------------------


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :]) / 16.0
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k[None, None])


def test_real_images_score_much_lower_fid_than_blur_or_noise():
    x, y = embedded_split("mnist", "train")
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:500]
    x, y = x[pick], y[pick]
    real = evaluate_samples(x, y, "mnist", "heldout")
    blurred = evaluate_samples(_blur(x), y, "mnist", "heldout")
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noisy = evaluate_samples(noise, y, "mnist", "heldout")
    assert real["num_samples"] == 500 and real["reference"] == "mnist/heldout" and real["reference_n"] == 500
    assert real["fid"] < blurred["fid"] / 5 < noisy["fid"] / 50
    # the floor reported for this N is the FID of other real images: the same order as ours
    assert real["fid"] < 2 * real["fid_real_at_n"] + 0.5
    assert real["class_accuracy"] > 0.97 and noisy["class_accuracy"] < 0.3
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert noisy["precision"] == 0.0 and noisy["recall"] == 0.0
    assert 9.0 < real["classifier_score"] <= 10.0
    for key in ("num_samples", "reference", "reference_n"):
        assert str(real[key]) in real["summary"]


def test_identical_sets_are_perfect():
    x, y = load_embedded("digits", "heldout")
    res = evaluate_samples(x, y, "digits", "heldout", real_floor=False)
    assert res["fid"] == pytest.approx(0.0, abs=1e-6)
    assert res["precision"] == 1.0 and res["recall"] == 1.0


def test_reference_cache_file_is_reused_only_for_the_same_classifier(tmp_path):
    import importlib

    from fasterdit.eval.frechet import load_stats

    ev = importlib.import_module("fasterdit.eval.evaluate")  # the module (the package exports the function)
    x, y = load_embedded("digits", "train")
    cache = tmp_path / "ref.npz"
    a = evaluate_samples(x[:200], y[:200], "digits", cache_file=cache, real_floor=False)
    st = load_stats(cache)
    assert st.n == 176 and st.meta["split"] == "heldout" and st.meta["dataset"] == "digits"
    # a cache written for other weights is recomputed and overwritten
    np.savez(cache, mu=st.mu, sigma=st.sigma, features=np.zeros((176, st.mu.shape[0])),
             meta_dataset="digits", meta_split="heldout", meta_classifier_sha="0" * 16)  # fmt: skip
    ev._REFERENCES.clear()
    b = evaluate_samples(x[:200], y[:200], "digits", cache_file=cache, real_floor=False)
    assert b["fid"] == pytest.approx(a["fid"], rel=1e-9)
    assert load_stats(cache).meta["classifier_sha"] != "0" * 16


# --- precision / recall, IS, accuracy against independent implementations ---------------------------


def _brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. written directly with scipy distances (Euclidean, not squared)."""
    drr = scipy.spatial.distance.cdist(real, real)
    dff = scipy.spatial.distance.cdist(fake, fake)
    rad_r = np.sort(drr, axis=1)[:, k]
    rad_f = np.sort(dff, axis=1)[:, k]
    dfr = scipy.spatial.distance.cdist(fake, real)
    precision = np.mean([(dfr[i] <= rad_r).any() for i in range(len(fake))])
    recall = np.mean([(dfr[:, j] <= rad_f).any() for j in range(len(real))])
    return float(precision), float(recall)


def test_precision_recall_matches_brute_force_and_extremes():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((120, 5))
    fake = rng.standard_normal((90, 5)) * 1.6 + 0.4
    pr = precision_recall(real, fake, k=3, chunk=37)  # chunking must not change anything
    p, r = _brute_force_pr(real, fake, 3)
    assert pr["precision"] == pytest.approx(p) and pr["recall"] == pytest.approx(r)
    assert 0.2 < p < 1.0 and 0.2 < r < 1.0
    same = precision_recall(real, real, k=3)
    assert same == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_inception_score_closed_forms_and_scipy():
    k = 10
    confident = torch.full((50, k), -1e4)
    confident[torch.arange(50), torch.arange(50) % k] = 0.0
    assert inception_score(confident)[0] == pytest.approx(k, rel=1e-9)  # confident + balanced -> K
    assert inception_score(torch.zeros(30, k))[0] == pytest.approx(1.0)  # uninformative -> 1
    logits = torch.randn(60, k, generator=torch.Generator().manual_seed(0)) * 2
    p = scipy.special.softmax(logits.double().numpy(), axis=1)
    scores = []
    for part in np.array_split(p, 3):
        marginal = part.mean(0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(row, marginal) for row in part])))
    mean, std = inception_score(logits, splits=3)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10) and std == pytest.approx(
        np.std(scores), rel=1e-8
    )
    # probabilities in, same answer
    assert inception_score(torch.from_numpy(p), splits=3, probabilities=True)[0] == pytest.approx(
        mean, rel=1e-10
    )


def test_class_accuracy_per_class():
    logits = torch.eye(3)[[0, 1, 2, 2, 1]]
    acc = class_accuracy(logits, torch.tensor([0, 1, 2, 1, 0]))
    assert acc["accuracy"] == pytest.approx(3 / 5)
    assert acc["per_class"] == [0.5, 0.5, 1.0]


# --- evaluate(): sampling + metrics with a tiny untrained DiT -----------------------------------------


@pytest.fixture(scope="module")
def tiny_model_and_recipe():
    from fasterdit.diffusion.recipe import get_preset
    from fasterdit.models import create_model

    torch.manual_seed(0)
    model = create_model("DiT-Mi/2", input_size=8, in_channels=1, num_classes=10, class_dropout_prob=0.1)
    x, _ = load_embedded("digits", "train")
    return model, get_preset("fasterdit").resolve(x)


def _settings(seed: int = 0, num: int = 40, steps: int = 2) -> SampleSettings:
    return SampleSettings(num, seed, "euler", steps, 1.0, label_mode="balanced")


def test_evaluate_tiny_dit_is_reproducible_and_balanced(tiny_model_and_recipe):
    model, recipe = tiny_model_and_recipe
    a = evaluate(model, recipe, _settings(0), dataset="digits", batch_size=20, return_samples=True)
    b = evaluate(model, recipe, _settings(0), dataset="digits", batch_size=20)
    c = evaluate(model, recipe, _settings(1), dataset="digits", batch_size=20)
    assert a is not None and b is not None and c is not None
    assert a["fid"] == b["fid"] and a["fid"] != c["fid"]
    assert np.bincount(a["labels"]).tolist() == [4] * 10
    assert a["samples"].shape == (40, 8, 8, 1) and a["samples"].dtype == np.uint8  # as an .npz holds them
    assert a["nfe"] == 2 and a["steps"] == 2 and a["sampler"] == "euler" and a["world_size"] == 1
    assert a["num_samples"] == 40 and a["reference"] == "digits/heldout"
    assert a["eval_seconds"] >= a["sample_seconds"] > 0
    # the trainer logs the scalar entries: the headline numbers must be plain floats
    for key in ("fid", "precision", "recall", "class_accuracy", "classifier_score"):
        assert isinstance(a[key], float)


def test_evaluate_scores_the_samples_of_the_sampling_job(tiny_model_and_recipe):
    """The one path: evaluate() scores exactly the images a sampling job draws for the same settings."""
    model, recipe = tiny_model_and_recipe
    res = evaluate(model, recipe, _settings(3, num=30), dataset="digits", batch_size=7, return_samples=True)
    images, labels, _ = sample_shared(model, recipe, _settings(3, num=30), batch_size=7, dist=DistInfo())
    assert res is not None and np.array_equal(res["samples"], images)
    assert np.array_equal(res["labels"], labels)
    assert res["fid"] == evaluate_samples(images, labels, "digits")["fid"]


def test_evaluate_rejects_mismatches_before_sampling(tiny_model_and_recipe):
    from fasterdit.diffusion.recipe import get_preset

    model, recipe = tiny_model_and_recipe
    with pytest.raises(ConfigError, match="mnist"):
        evaluate(model, recipe, _settings(num=10, steps=1), dataset="mnist")
    with pytest.raises(ConfigError, match="dataset"):
        evaluate(model, recipe, _settings(num=10, steps=1), dataset="imagenet")
    with pytest.raises(ConfigError, match="resolve"):  # data-std scaling never measured
        evaluate(model, get_preset("fasterdit"), _settings(num=10, steps=1), dataset="digits")


# --- standard metrics with a stand-in for Inception ---------------------------------------------------


class _StandIn(nn.Module):
    """Same interface and structure as the StyleGAN2-ADA Inception TorchScript (``layers`` with a
    ``mixed_6`` block, ``output`` linear, ``forward(img, return_features, no_output_bias)``), tiny."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.layers = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 8, 5, stride=4, padding=2), act=nn.ReLU(),
            conv_1=nn.Conv2d(8, 16, 3, stride=2, padding=1), pool0=nn.AdaptiveAvgPool2d(5),
            mixed_6=nn.Conv2d(16, 12, 1), act_1=nn.ReLU(), pool2=nn.AdaptiveAvgPool2d(1),
        ))  # fmt: skip
        self.output = nn.Linear(12, 20)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        x = F.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
        feats = self.layers((x - 128.0) / 128.0).reshape(img.shape[0], -1)
        if return_features:
            return feats
        logits = feats @ self.output.weight.T if no_output_bias else self.output(feats)
        return F.softmax(logits, dim=1)


@pytest.fixture(scope="module")
def standin_path(tmp_path_factory):
    import warnings

    path = tmp_path_factory.mktemp("inc") / "standin.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch, but it is the file format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_StandIn().eval()).save(str(path))
    return path


def _images(seed: int, n: int, bright: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    base = g.integers(0, 200, size=(n, 16, 16, 3))
    return np.clip(base + bright, 0, 255).astype(np.uint8)


def test_standard_metrics_with_a_stand_in_network(standin_path, tmp_path, no_network):
    inc = load_inception(standin_path)
    assert isinstance(inc, TorchScriptInception) and inc.blockwise
    ref_imgs = _images(0, 48)
    ref = write_reference_batch(tmp_path / "ref.npz", ref_imgs, inc, batch_size=20)
    with np.load(ref) as z:
        assert set(z.files) == {"arr_0", "mu", "sigma", "mu_s", "sigma_s"}
        assert z["mu"].shape == (12,) and z["mu_s"].shape == (7 * 5 * 5,)
    same = standard_metrics(ref_imgs, ref, inc, batch_size=20)
    assert same["fid"] == pytest.approx(0.0, abs=1e-8) and same["sfid"] == pytest.approx(0.0, abs=1e-8)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    other = _images(1, 40, bright=60)
    res = standard_metrics(other, ref, inc, batch_size=20)
    assert res["fid"] > 1e-3 and res["sfid"] > 1e-3 and res["num_samples"] == 40
    assert res["reference_images"] == 48 and res["fid_reference_stats"].startswith("stored")
    # IS from the network's own (bias-free) softmax, computed independently
    net = inc.net
    probs = net(torch.from_numpy(other).permute(0, 3, 1, 2), no_output_bias=True).detach().double().numpy()
    scores = []
    for part in np.array_split(probs, res["is_splits"]):
        marginal = part.mean(0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(row, marginal) for row in part])))
    assert res["inception_score"] == pytest.approx(np.mean(scores), rel=1e-5)
    # the fallback through forward() gives the same pool features (so the same FID), but no sFID
    fallback = TorchScriptInception(standin_path)
    fallback.blockwise = False
    res_fb = standard_metrics(other, ref, fallback, batch_size=20)
    assert res_fb["fid"] == pytest.approx(res["fid"], rel=1e-4)
    assert res_fb["sfid"] is None and res_fb["inception_score"] == pytest.approx(
        res["inception_score"], rel=1e-5
    )


def test_missing_inception_is_a_clear_error(tmp_path, no_network):
    from fasterdit.errors import UserError

    with pytest.raises(UserError, match="not found"):
        load_inception(tmp_path / "nope.pt")


# --- `fasterdit eval` ----------------------------------------------------------------------------------


SETS = ["data.source=digits", "model.name=DiT-Mi/2", "train.steps=2", "train.batch_size=8", "train.threads=1",
        "log.log_every=1", "log.ckpt_every=2", "log.sample_every=0", "sample.steps=2", "sample.per_class=1",
        "log.tensorboard=false"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcli") / "run"
    args = ["train", "--config", "demo", "--run-dir", str(d), "--no-progress"]
    for s in SETS:
        args += ["--set", s]
    assert main(args) == 0
    return d


def _strict_json(path) -> dict:
    def bad(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(path.read_text(), parse_constant=bad)


def test_cli_eval_checkpoint_writes_valid_json(run_dir, tmp_path, no_network, capsys):
    out = tmp_path / "m.json"
    assert main(["eval", "--ckpt", str(run_dir), "--num-samples", "20", "--steps", "2", "--batch-size", "10",
                 "--out", str(out), "--save-samples", str(tmp_path / "s.npz")]) == 0  # fmt: skip
    res = _strict_json(out)
    assert res["num_samples"] == 20 and res["reference"] == "digits/heldout" and res["reference_n"] == 176
    assert res["steps"] == 2 and res["nfe"] == 2 and res["step"] == 2
    for key in ("fid", "class_accuracy", "classifier_score", "sample_seconds"):
        assert isinstance(res[key], float)
    assert "FID" in capsys.readouterr().out
    # the saved samples evaluate to the same numbers through --samples-npz
    out2 = tmp_path / "m2.json"
    assert (
        main(["eval", "--samples-npz", str(tmp_path / "s.npz"), "--dataset", "digits", "--out", str(out2)])
        == 0
    )
    res2 = _strict_json(out2)
    # float32 features: same up to round-off, which a rank-deficient covariance (20 samples) amplifies
    assert res2["fid"] == pytest.approx(res["fid"], rel=1e-4)
    assert res2["class_accuracy"] == res["class_accuracy"]


def test_cli_eval_samples_npz_with_standard_metrics(standin_path, tmp_path, no_network):
    x, y = load_embedded("digits", "heldout")
    x, y = x[:60], y[:60]
    u8 = x.add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "s.npz", arr_0=u8, arr_1=y.numpy())
    inc = load_inception(standin_path)
    write_reference_batch(tmp_path / "ref.npz", u8, inc)
    out = tmp_path / "m.json"
    assert main(["eval", "--samples-npz", str(tmp_path / "s.npz"), "--dataset", "digits",
                 "--reference-npz", str(tmp_path / "ref.npz"), "--inception", str(standin_path),
                 "--out", str(out)]) == 0  # fmt: skip
    res = _strict_json(out)
    assert res["reference_n"] == 176 and res["precision"] == 1.0  # a subset of the reference
    assert res["class_accuracy"] > 0.97
    assert res["standard"]["fid"] == pytest.approx(0.0, abs=1e-6) and res["standard"]["sfid"] is not None


def test_cli_eval_bad_input(tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path / "m.json")]) == 2
    assert "--ckpt" in capsys.readouterr().err
    assert main(["eval", "--samples-npz", str(tmp_path / "none.npz")]) == 2
    assert "not found" in capsys.readouterr().err
