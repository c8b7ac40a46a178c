"""Every evaluation JSON records how its images were resized for the feature network, and the record is
what the code did: the features are recomputed here with ``torch.nn.functional.interpolate`` called with
the recorded settings (Inception path) or on the images as they are (digit classifier path, "none")."""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.nn import functional as F

from fasterdit.cli import main
from fasterdit.data import load_embedded
from fasterdit.errors import DataError
from fasterdit.eval import evaluate_samples
from fasterdit.eval.classifier import load_classifier
from fasterdit.eval.standard import (
    compute_activations,
    load_inception,
    standard_metrics,
    write_reference_batch,
)
from fasterdit.train.logging import read_metrics


class _Net(nn.Module):
    """The StyleGAN2-ADA Inception TorchScript's structure (``layers`` with ``mixed_6``, ``output``,
    ``forward(img, return_features, no_output_bias)``), tiny and random."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.layers = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 6, 7, stride=6, padding=3), act=nn.Tanh(), pool0=nn.AdaptiveAvgPool2d(6),
            mixed_6=nn.Conv2d(6, 8, 1), act_1=nn.Tanh(), pool2=nn.AdaptiveAvgPool2d(1),
        ))  # fmt: skip
        self.output = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        x = F.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
        feats = self.layers((x - 128.0) / 128.0).reshape(img.shape[0], -1)
        if return_features:
            return feats
        return F.softmax(feats @ self.output.weight.T if no_output_bias else self.output(feats), dim=1)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inc") / "net.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch; it is the file format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_Net().eval()).save(str(path))
    return path


def _images(seed: int, n: int, side: int) -> np.ndarray:
    """Smooth random RGB images (uint8 NHWC): a resize filter changes their features measurably."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 255
    x = F.interpolate(low, size=(side, side), mode="bicubic", align_corners=False)
    x = x + torch.randint(0, 60, x.shape, generator=g)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pool_from_record(net, images: np.ndarray, rec: dict) -> torch.Tensor:
    """The pool features of ``images`` resized exactly as ``rec`` says, through the network's layers."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if rec["filter"] != "none":
        x = F.interpolate(x, size=(rec["to"], rec["to"]), mode=rec["filter"], antialias=rec["antialias"],
                          align_corners=rec["align_corners"])  # fmt: skip
    with torch.no_grad():
        return net.layers((x - 128.0) / 128.0).reshape(len(x), -1).double()


def test_inception_record_is_the_resize_the_features_went_through(inception, tmp_path, no_network):
    inc = load_inception(inception)
    ref_images, samples = _images(0, 30, 24), _images(1, 20, 24)
    ref = write_reference_batch(tmp_path / "ref.npz", ref_images, inc, batch_size=16)
    res = standard_metrics(samples, ref, inc, batch_size=16)
    rec = res["resize"]
    assert rec == {
        "from": [24, 24],
        "to": 299,
        "filter": "bilinear",
        "antialias": False,
        "align_corners": False,
    }
    assert res["reference_resize"] == rec
    got = torch.from_numpy(compute_activations(samples, inc, batch_size=16)["pool"])
    again = _pool_from_record(inc.net, samples, rec)
    assert torch.allclose(got, again, rtol=1e-5, atol=1e-6)
    # the check has teeth: other settings give other features (antialias acts only when shrinking)
    for change in ({"align_corners": True}, {"filter": "bicubic"}):
        other = _pool_from_record(inc.net, samples, {**rec, **change})
        assert float((other - again).abs().max()) > 1e3 * float((got - again).abs().max()) + 1e-4, change
    # and the FID from the recomputed features (scipy's sqrtm) is the reported one
    with np.load(ref) as z:
        mu_r, sig_r = z["mu"], z["sigma"]
    f = again.numpy()
    mu, sig = f.mean(0), np.cov(f, rowvar=False)
    covmean = scipy.linalg.sqrtm(sig @ sig_r).real
    fid = float(((mu - mu_r) ** 2).sum() + np.trace(sig + sig_r - 2 * covmean))
    assert res["fid"] == pytest.approx(fid, rel=1e-4, abs=1e-6)


def test_inception_at_299_is_fed_as_it_is(inception, no_network):
    inc = load_inception(inception)
    images = _images(2, 3, 299)
    rec = inc.resize.record(299, 299)
    assert rec == {"from": [299, 299], "to": 299, "filter": "none"}
    got = torch.from_numpy(compute_activations(images, inc)["pool"])
    assert torch.allclose(got, _pool_from_record(inc.net, images, rec), rtol=1e-5, atol=1e-6)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * scipy.linalg.sqrtm(sa @ sb).real))


def test_classifier_path_records_no_resize_and_refuses_other_sizes():
    x, y = load_embedded("digits", "train")
    x, y = x[:300], y[:300]
    res = evaluate_samples(x, y, "digits", "heldout", real_floor=False)
    assert res["resize"] == {"from": [8, 8], "to": 8, "filter": "none"}
    # the FID of the classifier's features of the images as they are (8-bit, no resize), with scipy
    clf, _ = load_classifier("digits")
    ref, _ = load_embedded("digits", "heldout")
    with torch.no_grad():
        q = lambda t: t.clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1)  # noqa: E731 - a PNG's levels
        fa, fb = clf.features(q(x)).double().numpy(), clf.features(q(ref)).double().numpy()
    assert res["fid"] == pytest.approx(_frechet(fa, fb), rel=1e-4)
    with pytest.raises(DataError, match="expects 8x8"):  # never resized: refused
        evaluate_samples(F.interpolate(x[:20], size=(12, 12), mode="bilinear"), None, "digits")


def test_eval_json_and_eval_every_record_the_resize(inception, tmp_path, no_network):
    x, y = load_embedded("digits", "heldout")
    u8 = x[:40].add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "s.npz", arr_0=u8, arr_1=y[:40].numpy())
    write_reference_batch(tmp_path / "ref.npz", u8, load_inception(inception))
    out = tmp_path / "m.json"
    assert main(["eval", "--samples-npz", str(tmp_path / "s.npz"), "--dataset", "digits",
                 "--reference-npz", str(tmp_path / "ref.npz"), "--inception", str(inception),
                 "--out", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["resize"] == {"from": [8, 8], "to": 8, "filter": "none"}  # the digit classifier
    assert res["standard"]["resize"]["filter"] == "bilinear" and res["standard"]["resize"]["to"] == 299
    # eval.every writes the same record into metrics.jsonl
    run = tmp_path / "run"
    sets = ["data.source=digits", "model.name=DiT-Mi/2", "train.steps=2", "train.batch_size=8",
            "train.threads=1", "log.ckpt_every=2", "log.sample_every=0", "log.tensorboard=false",
            "eval.every=2", "eval.num_samples=20", "sample.steps=2"]  # fmt: skip
    args = ["train", "--config", "demo", "--run-dir", str(run), "--no-progress"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    (ev,) = read_metrics(run, "eval")
    assert ev["resize"] == {"from": [8, 8], "to": 8, "filter": "none"}
