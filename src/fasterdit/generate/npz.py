"""Write an ADM-format samples ``.npz`` (``arr_0`` uint8 N×H×W×C, ``arr_1`` int64 labels) by streaming.

Why not ``np.savez``: it stamps every member with the current time, so two runs that produce the same
arrays still write different bytes; and it needs the whole array in memory (50,000 ImageNet-256
samples are 9.8 GB). Here each member has a fixed timestamp and ``arr_0`` is written part by part
(zip64, stored, as ``np.savez`` does), then the file is renamed into place atomically. ``np.load``
and ADM's evaluator (which streams ``arr_0``) read it like any ``.npz``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: a constant, not the clock


def _member(zf: zipfile.ZipFile, name: str):
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    return zf.open(info, "w", force_zip64=True)


def _write_header(fp, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(fp, header)


def write_samples_npz(
    path: str | Path, shape: tuple[int, int, int, int], parts: Iterable[np.ndarray], labels: np.ndarray
) -> Path:
    """Write ``arr_0`` (uint8, ``shape`` = (N, H, W, C)) from ``parts`` in order, and ``arr_1``.

    ``parts`` must hold exactly N images of shape (H, W, C) in total; anything else is an error and
    leaves no file behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape != (shape[0],):
        raise ValueError(f"{labels.shape[0]} labels for {shape[0]} images")
    try:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with _member(zf, "arr_0.npy") as fp:
                _write_header(fp, np.dtype(np.uint8), tuple(shape))
                count = 0
                for part in parts:
                    if part.dtype != np.uint8 or part.shape[1:] != tuple(shape[1:]):
                        raise ValueError(f"part {part.dtype} {part.shape} does not fit {shape}")
                    fp.write(np.ascontiguousarray(part).tobytes())
                    count += part.shape[0]
                if count != shape[0]:
                    raise ValueError(f"parts hold {count} images, expected {shape[0]}")
            with _member(zf, "arr_1.npy") as fp:
                _write_header(fp, labels.dtype, labels.shape)
                fp.write(labels.tobytes())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
