"""Image folders: layout and labels, the ADM/DiT centre crop, colour modes, bad and small files."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fasterdit.data.folder import ImageFolder, center_crop, load_image, scan_folder
from fasterdit.errors import DataError

RES = 16


def _rand(rng, h, w, c=3):
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _reference_crop(img: Image.Image, res: int) -> np.ndarray:
    """Independent formulation of the ADM crop: count the halvings first, crop with PIL's box."""
    w, h = img.size
    halvings = 0
    while min(w >> halvings, h >> halvings) >= 2 * res:
        halvings += 1
    for _ in range(halvings):
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
    short = min(img.size)
    target = (int(np.floor(img.width * res / short + 0.5)), int(np.floor(img.height * res / short + 0.5)))
    if target != img.size:
        img = img.resize(target, Image.Resampling.BICUBIC)
    x0, y0 = (img.width - res) // 2, (img.height - res) // 2
    return np.asarray(img.crop((x0, y0, x0 + res, y0 + res)))


@pytest.mark.parametrize("size", [(200, 136), (136, 200), (33, 70), (16, 16), (64, 64), (11, 9), (300, 31)])
def test_center_crop_matches_independent_pil(size):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(_rand(rng, size[1], size[0]))
    got = np.asarray(center_crop(img, RES))
    assert got.shape == (RES, RES, 3)
    np.testing.assert_array_equal(got, _reference_crop(img, RES))


def test_center_crop_geometry_takes_the_middle():
    # Short side == target: no resampling at all, so the crop must be exactly the centre columns.
    cols = np.tile(np.arange(50, dtype=np.uint8)[None, :, None], (RES, 1, 3))
    got = np.asarray(center_crop(Image.fromarray(cols), RES))
    start = (50 - RES) // 2
    np.testing.assert_array_equal(got[0, :, 0], np.arange(start, start + RES))
    # Exactly 2x the target: one BOX halving = the mean of 2x2 blocks (up to PIL's rounding).
    rng = np.random.default_rng(0)
    big = _rand(rng, 2 * RES, 2 * RES).astype(np.float64)
    halved = big.reshape(RES, 2, RES, 2, 3).mean(axis=(1, 3))
    got = np.asarray(center_crop(Image.fromarray(big.astype(np.uint8)), RES)).astype(np.float64)
    assert np.abs(got - halved).max() <= 1.0


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for cls, n in (("zebra", 2), ("ant", 3), ("moth", 0)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_rand(rng, 20, 24)).save(root / cls / f"{i}.png")
    (root / "ant" / "nested").mkdir()
    Image.fromarray(_rand(rng, 20, 20)).save(root / "ant" / "nested" / "deep.jpg")
    (root / "ant" / "notes.txt").write_text("not an image")
    Image.fromarray(_rand(rng, 20, 20)).save(root / "ant" / ".hidden.png")
    Image.fromarray(_rand(rng, 20, 20)).save(root / "stray.png")
    return root


def test_class_tree_labels_from_sorted_folder_names(tree):
    ds = ImageFolder(tree, RES)
    assert ds.class_to_idx == {"ant": 0, "moth": 1, "zebra": 2}  # empty "moth" keeps its label
    assert ds.num_classes == 3
    rel = [ds.relpath(i) for i in range(len(ds))]
    assert rel == ["ant/0.png", "ant/1.png", "ant/2.png", "ant/nested/deep.jpg", "zebra/0.png", "zebra/1.png"]
    assert ds.labels == [0, 0, 0, 0, 2, 2]
    assert [p for p, _ in ds.skipped] == [str(tree / "stray.png")]
    x, y = ds[4]
    assert x.shape == (3, RES, RES) and x.dtype == torch.float32 and y == 2
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_flat_folder_is_unconditional(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(_rand(rng, 18, 18)).save(tmp_path / f"{i}.png")
    ds = ImageFolder(tmp_path, RES)
    assert ds.num_classes == 0 and ds.class_to_idx == {} and ds.labels == [0, 0, 0]
    x, _ = ds[1]
    expected = _reference_crop(Image.open(tmp_path / "1.png"), RES).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_empty_or_missing_folder_names_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        ImageFolder(tmp_path / "empty", RES)
    (tmp_path / "classes" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="classes"):
        ImageFolder(tmp_path / "classes", RES)
    with pytest.raises(DataError, match="nowhere"):
        scan_folder(tmp_path / "nowhere")


def test_non_rgb_images_become_rgb(tmp_path):
    rng = np.random.default_rng(3)
    gray = _rand(rng, RES, RES, 1)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgba = _rand(rng, RES, RES, 4)
    rgba[0, 0, 3] = 0  # fully transparent: composited over white
    rgba[1, 1, 3] = 255  # opaque: keeps its colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(_rand(rng, RES, RES)).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(_rand(rng, RES, RES)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    deep = (rng.integers(0, 65536, (RES, RES))).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep16.png")  # 16-bit grayscale PNG

    arr, _ = load_image(tmp_path / "gray.png", RES)
    assert arr.shape == (RES, RES, 3)
    np.testing.assert_array_equal(arr, np.repeat(gray[..., None], 3, axis=-1))
    arr, _ = load_image(tmp_path / "rgba.png", RES)
    np.testing.assert_array_equal(arr[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(arr[1, 1], rgba[1, 1, :3])
    alpha = rgba[..., 3:].astype(np.float64) / 255
    np.testing.assert_allclose(arr, rgba[..., :3] * alpha + 255 * (1 - alpha), atol=1.01)
    arr, _ = load_image(tmp_path / "deep16.png", RES)
    np.testing.assert_allclose(arr[..., 0], deep / 257.0, atol=0.51)  # rescaled, not clipped at 255
    for name in ("palette.png", "cmyk.jpg"):
        arr, _ = load_image(tmp_path / name, RES)
        assert arr.shape == (RES, RES, 3) and arr.dtype == np.uint8
    ds = ImageFolder(tmp_path, RES)
    assert all(ds[i][0].shape == (3, RES, RES) for i in range(len(ds)))


def test_corrupt_and_truncated_files(tmp_path):
    rng = np.random.default_rng(4)
    Image.fromarray(_rand(rng, 20, 20)).save(tmp_path / "a_good.png")
    (tmp_path / "b_corrupt.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    )
    buf = io.BytesIO()
    Image.fromarray(_rand(rng, 64, 64)).save(buf, "JPEG", quality=95)
    (tmp_path / "c_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.fromarray(_rand(rng, 20, 20)).save(tmp_path / "d_good.png")

    strict = ImageFolder(tmp_path, RES, on_error="raise")
    with pytest.raises(DataError, match=r"b_corrupt\.png"):
        strict[1]
    with pytest.raises(DataError, match=r"c_truncated\.jpg.*truncated"):
        strict[2]

    ds = ImageFolder(tmp_path, RES)
    x1, _ = ds[1]  # substitutes the next readable item
    x3, _ = ds[3]
    assert torch.equal(x1, x3)
    assert [p.split("/")[-1] for p, _ in ds.skipped] == ["b_corrupt.png", "c_truncated.jpg"]
    assert all(reason for _, reason in ds.skipped)
    arr, reason, warning = ds.try_load(2)
    assert arr is None and "truncated" in reason and warning is None


def test_small_images_upsampled_with_warning_or_skipped(tmp_path):
    rng = np.random.default_rng(5)
    Image.fromarray(_rand(rng, 10, 12)).save(tmp_path / "small.png")
    Image.fromarray(_rand(rng, 20, 20)).save(tmp_path / "ok.png")
    ds = ImageFolder(tmp_path, RES)
    x, _ = ds[1]
    assert x.shape == (3, RES, RES)
    expected = _reference_crop(Image.open(tmp_path / "small.png"), RES)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected / 127.5 - 1, atol=1e-6)
    assert len(ds.warnings) == 1 and "12x10" in ds.warnings[0][1]
    skip = ImageFolder(tmp_path, RES, small="skip", on_error="raise")
    with pytest.raises(DataError, match=r"small\.png.*smaller than the target"):
        skip[1]


def test_random_flip_is_seeded_and_mirrors(tmp_path):
    rng = np.random.default_rng(6)
    Image.fromarray(_rand(rng, 20, 20)).save(tmp_path / "a.png")
    plain = ImageFolder(tmp_path, RES)[0][0]
    runs = []
    for _ in range(2):
        ds = ImageFolder(tmp_path, RES, flip=True, seed=7)
        runs.append([ds[0][0] for _ in range(40)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    flipped = [torch.equal(x, plain.flip(-1)) for x in runs[0]]
    assert all(torch.equal(x, plain) or f for x, f in zip(runs[0], flipped))
    assert 5 < sum(flipped) < 35
