"""Tests for edge/artifacts/images.py: the one decode + colour + resize of an image file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.artifacts.images import (
    RESIZE_METHODS,
    ImageDecodeError,
    ImagePrep,
    _check,
    image_header,
    is_image_file,
    load_image,
)
from edge.core.errors import UsageError


def _rgb(h: int = 12, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray, fmt: str | None = None, **kw) -> Path:
    Image.fromarray(arr).save(path, fmt, **kw)
    return path


def test_png_round_trip_exact_and_no_resize_at_own_size(tmp_path):
    a = _rgb()
    p = _save(tmp_path / "a.png", a)
    np.testing.assert_array_equal(load_image(p, (12, 10), 3), a)
    np.testing.assert_array_equal(load_image(p, None, 3), a)  # None: the file's size
    assert load_image(p, (12, 10), 3).dtype == np.uint8


def test_gray_from_rgb_and_rgb_from_gray_are_pillows_conversions(tmp_path):
    a = _rgb()
    p = _save(tmp_path / "c.png", a)
    gray = load_image(p, None, 1)
    assert gray.shape == (12, 10, 1)
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(a).convert("L")))
    g = a[..., 0]
    q = _save(tmp_path / "g.png", g)
    rgb = load_image(q, None, 3)
    assert rgb.shape == (12, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], g)


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_resize_is_pillows_filter_by_name(tmp_path, method):
    a = _rgb(20, 30)
    p = _save(tmp_path / "r.png", a)
    got = load_image(p, (8, 9), 3, method)
    assert got.shape == (8, 9, 3)
    filt = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "area": Image.Resampling.BOX}[method]
    np.testing.assert_array_equal(got, np.asarray(Image.fromarray(a).resize((9, 8), resample=filt)))


def test_methods_differ_so_the_name_matters(tmp_path):
    p = _save(tmp_path / "r.png", _rgb(40, 40))
    outs = {m: load_image(p, (7, 7), 3, m) for m in RESIZE_METHODS}
    assert not np.array_equal(outs["nearest"], outs["bilinear"])
    assert not np.array_equal(outs["bilinear"], outs["area"])


def test_unknown_resize_method_names_the_choices(tmp_path):
    p = _save(tmp_path / "r.png", _rgb())
    with pytest.raises(UsageError, match="unknown resize method 'cubic'.*bilinear"):
        load_image(p, (4, 4), 3, "cubic")
    with pytest.raises(UsageError, match="unknown resize method"):
        ImagePrep(size=(4, 4), channels=3, resize="cubic")


def test_out_array_is_filled_in_place(tmp_path):
    a = _rgb()
    p = _save(tmp_path / "a.bmp", a)
    batch = np.zeros((2, 6, 5, 3), np.uint8)
    r = load_image(p, (6, 5), 3, out=batch[1])
    assert r is batch[1] or np.shares_memory(r, batch)
    np.testing.assert_array_equal(batch[1], np.asarray(Image.fromarray(a).resize((5, 6), Image.Resampling.BILINEAR)))
    assert not batch[0].any()
    with pytest.raises(UsageError, match="output array"):
        load_image(p, (6, 5), 1, out=batch[0])


def test_gif_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=10, loop=0)
    got = load_image(p, None, 1)
    assert abs(int(got.mean()) - 10) <= 2


def test_alpha_is_dropped_not_composited(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200  # red under a fully transparent alpha
    p = _save(tmp_path / "t.png", a)
    got = load_image(p, None, 3)
    assert (got[..., 0] == 200).all() and not got[..., 1:].any()


def test_palette_cmyk_and_1bit(tmp_path):
    a = _rgb(8, 8)
    pal = Image.fromarray(a).convert("P")
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png", None, 3), np.asarray(pal.convert("RGB")))
    cmyk = Image.fromarray(a).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg", None, 3).shape == (8, 8, 3)
    Image.fromarray(a).convert("1").save(tmp_path / "b.png")
    got = load_image(tmp_path / "b.png", None, 1)
    assert set(np.unique(got)) <= {0, 255}


def test_16bit_gray_png_keeps_its_top_byte(tmp_path):
    a = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096 + 255)
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I;16")
    np.testing.assert_array_equal(load_image(p, None, 1)[..., 0], (a >> 8).astype(np.uint8))
    assert image_header(p) == (4, 4, True)


def test_bytes_source_and_header(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb(5, 7)).save(buf, "PNG")
    assert load_image(buf.getvalue(), (3, 3), 3).shape == (3, 3, 3)
    assert image_header(buf.getvalue()) == (5, 7, False)


def test_truncated_jpeg_fails_naming_the_file(tmp_path):
    p = _save(tmp_path / "cut.jpg", _rgb(64, 64), quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as ei:
        load_image(p, (8, 8), 3)
    msg = str(ei.value)
    assert str(p) in msg and "truncated" in msg and "replace it with a valid JPEG" in msg
    assert ei.value.path == str(p)


def test_text_file_named_png_fails_naming_the_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("not an image\n")
    with pytest.raises(ImageDecodeError, match=r"notes\.png: not an image Pillow can identify.*replace it"):
        load_image(p, (8, 8), 1)
    with pytest.raises(ImageDecodeError, match="notes.png"):
        image_header(p)


def test_other_formats_are_refused_by_content(tmp_path):
    p = tmp_path / "really-a-tiff.png"
    Image.fromarray(_rgb()).save(p, "TIFF")
    with pytest.raises(ImageDecodeError, match=r"really-a-tiff\.png: a TIFF image; edgekit reads JPEG, PNG, BMP and GIF"):
        load_image(p, (8, 8), 3)


def test_unsupported_mode_is_refused_naming_the_file():
    # No JPEG/PNG/BMP/GIF file opens in such a mode with Pillow 10+; the guard covers plugins that might.
    im = Image.new("F", (2, 2))
    im.format = "PNG"
    with pytest.raises(ImageDecodeError, match=r"x\.png: unsupported pixel mode 'F'"):
        _check(im, "x.png")


def test_missing_file_is_filenotfound(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png", (4, 4), 1)


def test_prep_record_round_trip_and_validation():
    prep = ImagePrep(size=(24, 32), channels=3, resize="area")
    assert ImagePrep.from_dict(prep.to_dict()) == prep
    assert prep.to_dict() == {"resize": "area", "size": [24, 32], "channels": 3}
    assert prep.shape == (24, 32, 3)
    with pytest.raises(UsageError, match="channels"):
        ImagePrep(size=(4, 4), channels=2)
    with pytest.raises(UsageError, match="bad image record"):
        ImagePrep.from_dict({"size": [4]})


def test_suffixes_as_keras():
    assert is_image_file("a/B.JPG") and is_image_file("x.jpeg") and is_image_file("y.gif")
    assert not is_image_file("z.webp") and not is_image_file("notes.txt") and not is_image_file("png")


# ---------------------------------------------------------------------------------------------- resize_pixels


@pytest.mark.parametrize("c", [1, 2, 3])
@pytest.mark.parametrize("size", [(20, 20), (36, 40)])
def test_resize_pixels_is_an_opencv_resize_per_image(c, size):
    import cv2

    from edge.artifacts.images import resize_pixels

    x = np.random.default_rng(c).integers(0, 256, (3, 28, 28, c), dtype=np.uint8)
    out = resize_pixels(x, size)
    assert out.shape == (3, *size, c) and out.dtype == np.uint8
    h, w = size
    flag = cv2.INTER_AREA if h * w < 28 * 28 else cv2.INTER_LINEAR  # "auto": area when shrinking
    for i in range(3):
        want = cv2.resize(x[i], (w, h), interpolation=flag).reshape(h, w, c)
        np.testing.assert_array_equal(out[i], want)
    np.testing.assert_array_equal(resize_pixels(x[1], size), out[1])  # one HWC image the same
    assert resize_pixels(x, (28, 28)) is x  # at its own size: untouched
    assert not np.array_equal(resize_pixels(x, size, "nearest"), out)


@pytest.mark.parametrize("size", [(20, 20), (36, 40), (14, 14), (20, 36), (96, 96)])
def test_resize_matrices_are_resize_pixels_as_a_linear_map(size):
    """What an ensemble's in-graph Resample applies: the same resize, up to resize_pixels' rounding to uint8."""
    import cv2

    from edge.artifacts.images import resize_matrices, resize_pixels

    rows, cols = resize_matrices((28, 28), size)
    assert rows.shape == (size[0], 28) and cols.shape == (size[1], 28) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cols.sum(1), 1.0, atol=1e-5)
    x = np.random.default_rng(size[0]).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    want = resize_pixels(x, size).astype(np.float32)
    got = np.einsum("ph,nhwc,qw->npqc", rows, x.astype(np.float32), cols)
    assert np.abs(got - want).max() <= 1.0  # OpenCV's uint8 path rounds (fixed point); the map does not
    flag = cv2.INTER_AREA if size[0] * size[1] < 28 * 28 else cv2.INTER_LINEAR
    exact = cv2.resize(x[0, :, :, 0].astype(np.float32), (size[1], size[0]), interpolation=flag)
    np.testing.assert_allclose(rows @ x[0, :, :, 0].astype(np.float32) @ cols.T, exact, rtol=0, atol=1e-3)
    with pytest.raises(UsageError, match="cannot resize 28x28 images to 0x5"):
        resize_matrices((28, 28), (0, 5))


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [(20, 20), (36, 40), (28, 28)])
def test_resize_pixels_into_out_and_the_prepared_resizer_give_the_same_pixels(c, size):
    from edge.artifacts.images import resize_pixels, resizer

    x = np.random.default_rng(c).integers(0, 256, (3, 28, 28, c), dtype=np.uint8)
    want = resize_pixels(x, size)
    out = np.zeros((*size, c), np.uint8)
    for i in range(3):
        assert resize_pixels(x[i], size, out=out) is out
        np.testing.assert_array_equal(out, want[i])
    batch_out = np.zeros((3, *size, c), np.uint8)
    assert resize_pixels(x, size, out=batch_out) is batch_out  # a batch (the general path) into out as well
    np.testing.assert_array_equal(batch_out, want)
    resize = resizer((28, 28, c), size)
    first = resize(x[0])
    np.testing.assert_array_equal(first, want[0])
    assert resize(x[1]) is first  # into one buffer, every call
    np.testing.assert_array_equal(first, want[1])
    mine = np.zeros((*size, c), np.uint8)
    assert resizer((28, 28, c), size, out=mine)(x[2]) is mine
    np.testing.assert_array_equal(mine, want[2])


def test_resize_into_a_wrong_buffer_is_refused():
    from edge.artifacts.images import resize_pixels, resizer

    x = np.zeros((28, 28, 1), np.uint8)
    with pytest.raises(UsageError, match=r"out must be uint8 \(20, 20, 1\), got uint8\(20, 21, 1\)"):
        resize_pixels(x, (20, 20), out=np.zeros((20, 21, 1), np.uint8))
    with pytest.raises(UsageError, match=r"out must be uint8 \(20, 20, 1\), got float32"):
        resize_pixels(x, (20, 20), out=np.zeros((20, 20, 1), np.float32))
    with pytest.raises(UsageError, match=r"out must be uint8 \(3, 20, 20, 1\)"):
        resize_pixels(np.zeros((3, 28, 28, 1), np.uint8), (20, 20), out=np.zeros((20, 20, 1), np.uint8))
    with pytest.raises(UsageError, match=r"resizer: out must be uint8 \(20, 20, 1\)"):
        resizer((28, 28, 1), (20, 20), out=np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(UsageError, match="cannot resize 28x28x1 images to 0x20"):
        resizer((28, 28, 1), (0, 20))


def test_resize_pixels_refuses_what_is_not_pixels():
    from edge.artifacts.images import resize_pixels

    with pytest.raises(UsageError, match=r"uint8 pixels .* got float32\(2, 8, 8, 1\)"):
        resize_pixels(np.zeros((2, 8, 8, 1), np.float32), (4, 4))
    with pytest.raises(UsageError, match="cannot resize to 0x4"):
        resize_pixels(np.zeros((8, 8, 1), np.uint8), (0, 4))
    with pytest.raises(UsageError, match="unknown resize method 'cubic'"):
        resize_pixels(np.zeros((8, 8, 1), np.uint8), (4, 4), "cubic")
