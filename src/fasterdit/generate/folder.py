"""``fasterdit sample --out DIR/``: one PNG per sample and ``labels.csv``, the layout image-folder FID tools
(torch-fidelity, clean-fid) read.

Why from the ``.npz``: the folder is written from the samples file the sampling job leaves in it
(``DIR/samples.npz`` with its provenance sidecar), so its PNGs are exactly the 8-bit images an ``.npz``
evaluation would score, and an interrupted job resumes as any ``.npz`` job does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fasterdit.errors import DataError
from fasterdit.runtime.files import atomic_write_text

__all__ = ["LABELS_CSV", "write_image_folder"]

LABELS_CSV = "labels.csv"


def write_image_folder(npz: Path, out: Path) -> int:
    """``out/000000.png`` ... from the uint8 NHWC images of ``npz`` (``arr_0``) and ``out/labels.csv``
    (``filename,label``; the label is empty when the file holds none). Returns the number of images."""
    with np.load(npz) as f:
        if "arr_0" not in f.files:
            raise DataError(f"{npz}: no arr_0 (images)")
        images = f["arr_0"]
        labels = f["arr_1"] if "arr_1" in f.files else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{npz}: arr_0 is not uint8 (N, H, W, 1|3) images, got {images.dtype} {images.shape}")
    out.mkdir(parents=True, exist_ok=True)
    rows = ["filename,label"]
    for i, img in enumerate(images):
        name = f"{i:06d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out / name)
        rows.append(f"{name},{'' if labels is None else int(labels[i])}")
    atomic_write_text(out / LABELS_CSV, "\n".join(rows) + "\n")
    return len(images)
