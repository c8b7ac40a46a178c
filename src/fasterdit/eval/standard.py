"""Standard image metrics for real image datasets (ImageNet): FID, sFID, Inception Score, precision, recall.

Why not torch-fidelity or clean-fid: both import torchvision at package import (datasets, model
zoo), and torchvision cannot be imported beside every torch build (it cannot here). The field's
standard protocol is simple enough to state exactly, so it is implemented here on top of two
de-facto standard files:

* **Reference batches** in the format of OpenAI's ADM evaluator (``guided-diffusion/evaluations``;
  e.g. ``VIRTUAL_imagenet256_labeled.npz``): ``arr_0`` uint8 (N, H, W, 3) reference images, and
  ``mu``/``sigma`` (pool features, 2048-d) and ``mu_s``/``sigma_s`` (spatial features, 2023-d)
  precomputed over the reference distribution. FID/sFID use the stored statistics; precision/recall
  need the reference images' features, computed from ``arr_0``. :func:`write_reference_batch`
  writes the same format for your own data.
* **Inception-v3** as the TorchScript ``inception-2015-12-05.pt`` of StyleGAN2-ADA / clean-fid
  (a port of the TF graph that FID was defined with), loaded from a local path
  (:func:`load_inception`), or downloaded when online and explicitly asked.

Definitions (all statistics in float64):

* FID: Fréchet distance of the pool-3 (2048-d) Gaussians (:mod:`fasterdit.eval.frechet`).
* sFID (Nash et al. 2021): the same on "spatial" features, the first 7 channels of the 17x17
  ``mixed_6/conv`` map flattened in (H, W, C) order (7·17·17 = 2023-d), as ADM does.
* Inception Score: ``exp(E KL(p(y|x) ‖ p(y)))`` from the 1008-way softmax *without* the output bias
  (as the original TF code and ADM), mean over consecutive chunks of 5,000 samples (ADM's rule: 10
  splits at N = 50,000).
* Precision / recall: Kynkäänniemi et al. 2019, k = 3, on pool features (reference: ``arr_0``).

Caveat: ADM's own numbers come from the TF graph; this PyTorch port of the same weights resizes
with PyTorch's bilinear filter, so FIDs against ADM's precomputed ``mu``/``sigma`` can differ from
ADM's evaluator in the first decimal. ``recompute_reference=True`` recomputes the reference
statistics from ``arr_0`` with the same network as the samples (consistent, but ``arr_0`` is a
10k subset). Report which you used.

A feature extractor is anything with the interface ``extractor(images) -> dict``, images uint8
(N, 3, H, W) on the extractor's device, returning float tensors ``"pool"`` (N, D) and optionally
``"spatial"`` (N, D_s) and ``"logits"`` (N, K) — the tests plug in a small random network.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fasterdit.data.measure import npz_array, npz_keys
from fasterdit.errors import DataError, UserError
from fasterdit.eval.adm import IS_SPLIT_SIZE, adm_metrics
from fasterdit.eval.frechet import FeatureStats, fit_gaussian, load_stats_keys
from fasterdit.eval.resize import INCEPTION_RESIZE, Resize

INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
INCEPTION_FILENAME = "inception-2015-12-05.pt"
SPATIAL_BLOCK, SPATIAL_CHANNELS = "mixed_6", 7

Extractor = Callable[[torch.Tensor], dict[str, torch.Tensor]]
_REF_ACTS: dict[str, tuple[tuple, Any, dict[str, np.ndarray]]] = {}


class TorchScriptInception:
    """The StyleGAN2-ADA / clean-fid TorchScript Inception-v3, returning pool, spatial and logits.

    Runs the network's ``layers`` one block at a time so the spatial (sFID) map is captured in the
    same pass, and applies the ``output`` layer without bias for IS. If the file does not have that
    structure, falls back to its documented ``forward(img, return_features=True)`` (pool features)
    and ``forward(img, no_output_bias=True)`` (probabilities); sFID is then unavailable.

    Both paths get the images already resized by ``resize`` (:data:`INCEPTION_RESIZE`, which evaluation
    JSONs record), so the network's own resize, if it has one, sees 299 x 299 and does nothing.
    """

    resize: Resize = INCEPTION_RESIZE

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"Inception weights not found: {path}")
        try:
            with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the file is one
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as err:
            raise DataError(
                f"{path} is not a TorchScript Inception (e.g. {INCEPTION_FILENAME}): {err}"
            ) from err
        self.device = torch.device(device)
        self.name = f"inception-torchscript:{path.name}"
        self.blockwise = hasattr(self.net, "layers") and hasattr(self.net, "output")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.resize.apply(images.to(self.device, torch.float32))
        if self.blockwise:
            try:
                return self._blockwise(x)
            except (AttributeError, RuntimeError) as err:
                self.blockwise = False
                print(f"note: Inception block-wise pass failed ({err}); using its forward(), no sFID")
        pool = self.net(x, return_features=True)
        probs = self.net(x, no_output_bias=True)
        return {"pool": pool.reshape(len(x), -1), "probs": probs}

    def _blockwise(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = (x - 128.0) / 128.0
        spatial = None
        for name, block in self.net.layers.named_children():
            h = block(h)
            if name == SPATIAL_BLOCK:
                spatial = h[:, :SPATIAL_CHANNELS]
        pool = h.reshape(len(x), -1)
        logits = pool @ self.net.output.weight.T  # no bias: the IS convention of the TF code
        out = {"pool": pool, "logits": logits}
        if spatial is not None:
            out["spatial"] = spatial.permute(0, 2, 3, 1).reshape(len(x), -1)  # (H, W, C) order as ADM
        return out


def default_inception_path() -> Path:
    """``$FASTERDIT_INCEPTION`` or ``~/.cache/fasterdit/inception-2015-12-05.pt``."""
    env = os.environ.get("FASTERDIT_INCEPTION")
    return Path(env) if env else Path.home() / ".cache" / "fasterdit" / INCEPTION_FILENAME


def load_inception(
    path: str | Path | None = None, device: str | torch.device = "cpu", download: bool = False
) -> TorchScriptInception:
    """The Inception feature extractor from a local file; ``download=True`` fetches it when missing.

    Never downloads unless asked, so offline runs fail fast with instructions instead of hanging.
    """
    p = Path(path) if path is not None else default_inception_path()
    if not p.is_file():
        if not download:
            raise UserError(
                f"Inception weights not found at {p}. Download {INCEPTION_URL} (about 100 MB) and pass "
                f"its path (--inception PATH), set FASTERDIT_INCEPTION, or allow the download."
            )
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".part")
        torch.hub.download_url_to_file(INCEPTION_URL, str(tmp), progress=True)
        tmp.replace(p)
    return TorchScriptInception(p, device)


def to_uint8_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images -> uint8 (N, 3, H, W) as the Inception network takes them.

    Accepts uint8 (N, H, W, C) (``arr_0`` of an ADM .npz), uint8 (N, C, H, W), or float (N, C, H, W)
    in [-1, 1] (clamped and rounded like a PNG writer); C is 1 (replicated to RGB) or 3.
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim == 4 and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        elif x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"uint8 images must be (N, H, W, 1|3) as in an ADM .npz, got {tuple(x.shape)}")
    else:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"float images must be (N, 1|3, H, W) in [-1, 1], got {tuple(x.shape)}")
        x = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def compute_activations(
    images: torch.Tensor | np.ndarray,
    extractor: Extractor,
    batch_size: int = 100,
    device: str | torch.device | None = None,
    progress: str | None = None,
) -> dict[str, np.ndarray]:
    """Run the extractor over all images in batches; float64 numpy arrays per output key.

    ``progress``: a label for a progress bar (50,000 Inception passes take minutes), or None for none."""
    x = to_uint8_nchw(images)
    if device is None:
        device = getattr(extractor, "device", "cpu")
    parts: dict[str, list[np.ndarray]] = {}
    starts = range(0, len(x), batch_size)
    for i in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
        with torch.no_grad():
            out = extractor(x[i : i + batch_size].to(device))
        if "pool" not in out:
            raise DataError("the feature extractor must return a 'pool' feature array")
        for key, value in out.items():
            parts.setdefault(key, []).append(
                value.detach().double().reshape(value.shape[0], -1).cpu().numpy()
            )
    return {k: np.concatenate(v) for k, v in parts.items()}


def _npz_images(path: Path) -> np.ndarray:
    """``arr_0`` of an ADM-style .npz; a file that is not one (not a zip, truncated) is a DataError."""
    keys = npz_keys(path)
    if "arr_0" not in keys:
        raise DataError(f"{path}: no 'arr_0' images (found {keys}); expected an ADM-style .npz")
    images = npz_array(path, "arr_0")
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{path}: 'arr_0' must be uint8 (N, H, W[, C]), got {images.dtype} {images.shape}")
    return images


def load_samples_npz(path: str | Path, labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (``arr_0``, uint8 NHWC) and labels (``arr_1`` if present and ``labels``) of a samples
    ``.npz``. Labels that are not one per image are an error naming both counts (they used to be dropped
    silently, and the class metrics with them)."""
    path = Path(path)
    images = _npz_images(path)
    if not labels or "arr_1" not in npz_keys(path):
        return images, None
    y = npz_array(path, "arr_1")
    if y.shape != (len(images),):
        raise DataError(
            f"{path}: 'arr_1' holds {y.size} labels (shape {tuple(y.shape)}) for {len(images)} images in "
            "'arr_0'; it must hold one label per image (--no-labels ignores it)"
        )
    return images, y.astype(np.int64)


def write_reference_batch(
    path: str | Path, images: torch.Tensor | np.ndarray, extractor: Extractor, batch_size: int = 100
) -> Path:
    """Write an ADM-format reference batch: ``arr_0`` + ``mu``/``sigma`` (+ ``mu_s``/``sigma_s``)."""
    x = to_uint8_nchw(images)
    acts = compute_activations(x, extractor, batch_size)
    arrays: dict[str, np.ndarray] = {"arr_0": x.permute(0, 2, 3, 1).numpy()}
    arrays["mu"], arrays["sigma"] = fit_gaussian(acts["pool"])
    if "spatial" in acts:
        arrays["mu_s"], arrays["sigma_s"] = fit_gaussian(acts["spatial"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def _resize_record(extractor: Extractor, shape: torch.Size) -> dict[str, Any]:
    """How images of ``shape`` (N, C, H, W) were resized for ``extractor``: the Inception port's
    :class:`Resize`; another extractor (a test's stand-in) resizes as it likes, unrecorded."""
    if isinstance(extractor, TorchScriptInception):
        return extractor.resize.record(int(shape[-2]), int(shape[-1]))
    return {"from": [int(shape[-2]), int(shape[-1])], "filter": f"unrecorded ({type(extractor).__name__})"}


def standard_metrics(
    samples: torch.Tensor | np.ndarray | str | Path,
    reference_npz: str | Path,
    extractor: Extractor,
    *,
    batch_size: int = 100,
    k: int = 3,
    is_split_size: int = IS_SPLIT_SIZE,
    recompute_reference: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """FID, sFID, IS, precision and recall of samples against an ADM-format reference batch.

    The metrics follow ADM's evaluator (:func:`fasterdit.eval.adm.adm_metrics`): IS over chunks of
    ``is_split_size`` = 5,000 samples (10 splits at N = 50,000), precision/recall with k = 3.
    ``samples``: uint8 (N, H, W, 3) / float (N, C, H, W) in [-1, 1], or the path of a samples ``.npz``.
    Missing ingredients give ``None`` with a reason in ``notes`` rather than an error (e.g. no spatial
    features from the extractor → no sFID).
    """
    t0 = time.time()
    if isinstance(samples, (str, Path)):
        samples = load_samples_npz(samples, labels=False)[0]
    reference_npz = Path(reference_npz)
    ref_images = _npz_images(reference_npz)
    sample_acts = compute_activations(
        samples, extractor, batch_size, device, progress="Inception: samples" if progress else None
    )
    # The 10k reference images are the expensive part: once per process, per file and extractor (the
    # entry holds the extractor itself, so a new object can never be mistaken for a collected one).
    ref_key = (str(reference_npz.resolve()), reference_npz.stat().st_mtime)
    cached = _REF_ACTS.get("entry")
    if cached is None or cached[0] != ref_key or cached[1] is not extractor:
        label = "Inception: reference" if progress else None
        acts = compute_activations(ref_images, extractor, batch_size, device, progress=label)
        _REF_ACTS["entry"] = (ref_key, extractor, acts)
    ref_acts = _REF_ACTS["entry"][2]
    n = len(sample_acts["pool"])
    notes: list[str] = []
    with np.load(reference_npz, allow_pickle=False) as z:
        keys = set(z.files)

    def ref_stats(feature: str, mu_key: str, sigma_key: str) -> tuple[FeatureStats | None, str]:
        if feature not in ref_acts:
            return None, "none"
        dim = ref_acts[feature].shape[1]
        if not recompute_reference and {mu_key, sigma_key} <= keys:
            st = load_stats_keys(reference_npz, mu_key, sigma_key)
            if st.mu.shape[0] == dim:
                return st, f"stored {mu_key}/{sigma_key}"
            notes.append(
                f"stored {mu_key} is {st.mu.shape[0]}-d but the extractor gives {dim}-d: "
                "recomputed from arr_0"
            )
        return FeatureStats.from_features(ref_acts[feature]), f"recomputed from arr_0 (N={len(ref_images)})"

    out: dict[str, Any] = {
        "num_samples": n,
        "reference": str(reference_npz.name),
        "reference_images": len(ref_images),
        "resize": _resize_record(extractor, to_uint8_nchw(samples[:1]).shape),  # one image: its size
        "reference_resize": _resize_record(extractor, to_uint8_nchw(ref_images[:1]).shape),
    }
    pool_ref, out["fid_reference_stats"] = ref_stats("pool", "mu", "sigma")
    assert pool_ref is not None
    sp_ref = None
    if "spatial" in sample_acts:
        sp_ref, out["sfid_reference_stats"] = ref_stats("spatial", "mu_s", "sigma_s")
    else:
        notes.append("the feature extractor gives no spatial features: no sFID")
    if "logits" not in sample_acts and "probs" not in sample_acts:
        notes.append("the feature extractor gives no class outputs: no Inception Score")
    if not (n > k and len(ref_images) > k):
        notes.append(f"precision/recall need more than k={k} samples and reference images")
    out.update(
        adm_metrics(
            sample_acts, ref_acts, pool_ref, sp_ref, k=k, split_size=is_split_size, device=device or "cpu"
        )
    )
    out["feature_network"] = getattr(extractor, "name", type(extractor).__name__)
    out["notes"] = notes
    out["metric_seconds"] = round(time.time() - t0, 3)

    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    out["summary"] = (
        f"FID {fmt(out['fid'])} | sFID {fmt(out['sfid'])} | IS {fmt(out['inception_score'])} | "
        f"P {fmt(out.get('precision'))} R {fmt(out.get('recall'))} | N={n} vs {out['reference']} "
        f"({len(ref_images)} images; FID stats {out['fid_reference_stats']}), {out['feature_network']}"
    )
    return out
