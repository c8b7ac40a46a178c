"""Image folders: a class-per-subfolder tree (ImageNet layout) or a flat folder of images.

Why a module of our own rather than ``torchvision.datasets.ImageFolder``: torchvision is not a
dependency, and a real-data pipeline over a million user files needs what torchvision does not do:
a deterministic file order that every rank of a distributed job agrees on, bad files skipped and
*recorded* (with the reason) instead of crashing an hours-long preparation, and the exact ADM/DiT
centre crop so that latents match the ones the published DiT/FasterDiT numbers were trained on.

Layout rules:

* ``root/<class>/**/<image>``: one class per sub-folder of ``root``; labels are the indices of the
  sorted folder names (``class_to_idx``), the convention of torchvision and of the official DiT
  (so ImageNet's ``n01440764`` is label 0). Files directly in ``root`` next to class folders are
  skipped and recorded (they have no class). An empty class folder keeps its label, so labels never
  shift because a folder happens to be empty.
* ``root/<image>`` with no sub-folders: an unconditional dataset, every label 0, ``num_classes = 0``.
* Hidden files and folders (``.name``) are ignored, other non-image files too (by extension).

Image handling (:func:`load_image`):

* EXIF orientation is applied first, so phone photos are upright (ImageNet JPEGs rarely carry it).
* Non-RGB modes are converted to RGB: grayscale is replicated, CMYK goes through Pillow's
  conversion, 16-bit grayscale is rescaled to 8 bits (Pillow's plain convert would clip it white),
  and images with transparency (RGBA, LA, palette with a transparent index) are composited over a
  white background, because the colour under a fully transparent pixel is arbitrary (often black).
* Images whose shorter side is below the target resolution are upsampled by the same bicubic
  resize (and a warning is recorded in ``.warnings``), skipped when ``small="skip"``, or, with
  ``small="pad"``, centred unscaled on a black canvas (what digits need: 28x28 MNIST meets an
  autoencoder that wants a multiple of 8 without being resampled; see :func:`pad_center`).
* Unreadable files (not an image, corrupt, truncated) raise :class:`DataError` naming the file with
  ``on_error="raise"``, or are recorded in ``.skipped`` as ``(path, reason)`` with ``"skip"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from fasterdit.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
ON_ERROR = ("skip", "raise")
SMALL = ("upsample", "skip", "pad")
#: the largest target side: 4096² RGB is 50 MB per image as uint8 and 200 MB as float32 (``--resolution
#: 100000`` used to try to upsample every image to 30 GB)
MAX_RESOLUTION = 4096


def check_resolution(resolution: int, name: str = "resolution") -> int:
    """``resolution`` as an int in [1, MAX_RESOLUTION], or ConfigError(name, ...)."""
    if not 1 <= int(resolution) <= MAX_RESOLUTION:
        raise ConfigError(name, f"must be a number of pixels in [1, {MAX_RESOLUTION}], got {resolution}")
    return int(resolution)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursively), hidden entries ignored, sorted for determinism."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if _is_image(f))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def scan_folder(root: str | Path) -> tuple[list[Path], list[int], dict[str, int], list[tuple[str, str]]]:
    """Find the images of ``root``: returns ``(files, labels, class_to_idx, stray)``.

    ``files`` are sorted by path relative to ``root`` (plain code-point order, independent of the
    locale and of the file system's listing order) so that every rank of a distributed job and every
    resumed run sees the same list. ``class_to_idx`` is empty for a flat folder. ``stray`` lists
    ``(path, reason)`` for images outside any class folder of a class tree.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (give the folder that holds the images)")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    top_images = [root / e.name for e in entries if e.is_file() and _is_image(e.name)]
    files: list[Path] = []
    labels: list[int] = []
    stray: list[tuple[str, str]] = []
    if subdirs:
        class_to_idx = {name: i for i, name in enumerate(subdirs)}
        for name in subdirs:
            imgs = _walk_images(root / name)
            files.extend(imgs)
            labels.extend([class_to_idx[name]] * len(imgs))
        stray = [(str(p), "image outside the class folders (no label); ignored") for p in top_images]
    else:
        class_to_idx = {}
        files = top_images
        labels = [0] * len(files)
    if not files:
        where = f"{root} (and its {len(subdirs)} class folders)" if subdirs else str(root)
        raise DataError(
            f"no images found in {where}; expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
            "directly in the folder or in one sub-folder per class"
        )
    return files, labels, class_to_idx, stray


def _to_rgb(img):  # PIL.Image -> PIL.Image in mode RGB

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data (I;16*, or I holding 16-bit values) -> 8 bits; Pillow's convert would clip at 255.
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) <= 1.0:  # float images are conventionally in [0, 1]
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "RGBa", "La", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def center_crop(img, resolution: int):
    """The ADM/DiT centre crop of a PIL image to ``resolution × resolution``.

    Why this exact recipe: it is what guided-diffusion and the official DiT ``train.py`` apply to
    ImageNet, and the FID numbers to compare against depend on it. Halve with a BOX filter while the
    shorter side is at least twice the target (cheap, alias-free anti-aliasing), then one BICUBIC
    resize so the shorter side equals the target, then cut the centre square (offsets rounded down).
    An image smaller than the target is upsampled by the same bicubic resize.
    """
    while min(img.size) >= 2 * resolution:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.Resampling.BOX)
    factor = resolution / min(img.size)
    new_size = (round(img.size[0] * factor), round(img.size[1] * factor))
    if new_size != img.size:
        img = img.resize(new_size, resample=Image.Resampling.BICUBIC)
    left = (img.size[0] - resolution) // 2
    top = (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def pad_center(img, resolution: int):
    """``img`` centred on a black ``resolution × resolution`` canvas, without resampling; a side longer
    than ``resolution`` is centre-cropped. Offsets round down, as :func:`fasterdit.data.embedded.pad_images`
    places tensors, so decoded images crop back exactly."""
    w, h = img.size
    left, top = max(0, (w - resolution) // 2), max(0, (h - resolution) // 2)
    img = img.crop((left, top, left + min(w, resolution), top + min(h, resolution)))
    canvas = Image.new("RGB", (resolution, resolution), (0, 0, 0))
    canvas.paste(img, ((resolution - img.size[0]) // 2, (resolution - img.size[1]) // 2))
    return canvas


class BadImage(Exception):
    """Why one file cannot be used (the message has no path; callers add it)."""


def _decode(path: Path, resolution: int, small: str) -> tuple[np.ndarray, str | None]:
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) on some broken files; we want those to count as broken.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now: a truncated file fails here, not later inside a worker
                img = ImageOps.exif_transpose(img)
                img = _to_rgb(img)
    except UnidentifiedImageError:
        raise BadImage("not a readable image (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as err:
        raise BadImage(f"cannot decode image ({type(err).__name__}: {err})") from None
    warning = None
    w, h = img.size
    if min(w, h) < resolution:
        if small == "skip":
            raise BadImage(f"image is {w}x{h}, smaller than the target {resolution}")
        if small == "pad":
            warning = f"image is {w}x{h}, smaller than the target {resolution}; padded (black)"
            return np.array(pad_center(img, resolution), dtype=np.uint8), warning
        warning = f"image is {w}x{h}, smaller than the target {resolution}; upsampled (bicubic)"
    return np.array(center_crop(img, resolution), dtype=np.uint8), warning


def load_image(path: str | Path, resolution: int, small: str = "upsample") -> tuple[np.ndarray, str | None]:
    """Read one image file as a centre-cropped RGB uint8 array ``(resolution, resolution, 3)``.

    Returns ``(array, warning)``; ``warning`` is a message when the image had to be upsampled.
    Raises :class:`DataError` naming the file when it cannot be decoded (corrupt, truncated, not an
    image) or, with ``small="skip"``, when it is smaller than the target.
    """
    try:
        return _decode(Path(path), int(resolution), small)
    except BadImage as err:
        raise DataError(f"{path}: {err}") from None


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` (or ``(N, H, W, 3)``) -> float32 ``(3, H, W)`` (``(N, 3, H, W)``) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).movedim(-1, -3)
    return t.float().div(127.5).sub(1.0)


class ImageFolder(Dataset):
    """Images of a folder, centre-cropped to ``resolution``: items ``(x (3,H,W) float32 in [-1,1], label)``.

    ``on_error="skip"`` (default): an unreadable file is recorded in ``.skipped`` as
    ``(path, reason)`` and ``dataset[i]`` returns the next readable item instead (a Dataset cannot
    shrink on the fly). ``on_error="raise"``: it raises :class:`DataError` naming the file.
    :meth:`try_load` never substitutes; it is what ``fasterdit prepare`` uses. In DataLoader worker
    processes ``.skipped`` / ``.warnings`` are per-worker copies.

    ``small="upsample"`` (default) upsamples images below the target and records a warning in
    ``.warnings``; ``small="skip"`` treats them as bad files. ``flip=True`` mirrors each returned
    item with probability 1/2, drawn from a ``torch.Generator`` seeded with ``seed``.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        flip: bool = False,
        on_error: str = "skip",
        small: str = "upsample",
        seed: int = 0,
    ):
        check_resolution(resolution)
        if on_error not in ON_ERROR:
            raise ConfigError("on_error", f"must be one of {ON_ERROR}, got {on_error!r}")
        if small not in SMALL:
            raise ConfigError("small", f"must be one of {SMALL}, got {small!r}")
        self.root = Path(root).expanduser()
        self.resolution = int(resolution)
        self.flip = bool(flip)
        self.on_error = on_error
        self.small = small
        self.files, self.labels, self.class_to_idx, stray = scan_folder(self.root)
        self.num_classes = len(self.class_to_idx)
        self.classes = list(self.class_to_idx)
        self.skipped: list[tuple[str, str]] = list(stray)
        self.warnings: list[tuple[str, str]] = []
        self._generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.files)

    def relpath(self, i: int) -> str:
        """Path of item ``i`` relative to the root, with ``/`` separators (what reports and shards store)."""
        return self.files[i].relative_to(self.root).as_posix()

    def try_load(self, i: int) -> tuple[np.ndarray | None, str | None, str | None]:
        """``(uint8 (H,W,3) or None, skip reason or None, warning or None)`` for item ``i``; never raises
        for a bad file (whatever ``on_error`` says) and records nothing: the caller decides."""
        try:
            arr, warning = _decode(self.files[i], self.resolution, self.small)
        except BadImage as err:
            return None, str(err), None
        return arr, None, warning

    def _record(self, store: list[tuple[str, str]], i: int, msg: str) -> None:
        entry = (str(self.files[i]), msg)
        if entry not in store:
            store.append(entry)

    def load(self, i: int, flip: bool = False) -> tuple[torch.Tensor, int]:
        """Item ``i`` as ``(tensor, label)``, mirrored if ``flip``; a bad file raises DataError."""
        arr, warning = load_image(self.files[i], self.resolution, self.small)
        if warning is not None:
            self._record(self.warnings, i, warning)
        x = to_tensor(arr)
        if flip:
            x = x.flip(-1)
        return x, self.labels[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        flip = self.flip and bool(torch.rand((), generator=self._generator) < 0.5)
        for k in range(n):
            j = (int(i) + k) % n
            try:
                return self.load(j, flip)
            except DataError as err:
                if self.on_error == "raise":
                    raise
                self._record(self.skipped, j, str(err))
        raise DataError(f"no readable image in {self.root}: all {n} files failed (see .skipped)")


def relative_paths(files: Sequence[Path], root: Path) -> list[str]:
    """Posix paths of ``files`` relative to ``root``."""
    return [Path(f).relative_to(root).as_posix() for f in files]
