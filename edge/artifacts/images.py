"""The one image decoder: a JPEG/PNG/BMP/GIF file -> uint8 (H, W, C) pixels at a model's size and channels.

The workstation's dataset loader (converters.data.images), the bundle builder and the board all call
``load_image`` with the same ``ImagePrep``, so the board prepares a file exactly as training saw it.
Pillow is imported inside the functions: ``import edge`` works without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from edge.core.errors import UsageError

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # Keras' image_dataset_from_directory list
# What Pillow calls the formats we read by content (MPO: a camera JPEG with extra pictures; frame 0 is the JPEG).
IMAGE_FORMATS = ("BMP", "GIF", "JPEG", "MPO", "PNG")
RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos", "area")
# Modes Pillow converts to L and RGB meaningfully. "I" (32-bit) and "F" (float) would be clipped to 0..255.
GRAY_MODES = ("1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N")
COLOR_MODES = ("P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
FIX = "replace it with a valid JPEG, PNG, BMP or GIF file, or remove it"


class ImageDecodeError(UsageError):
    """A file that is not a readable JPEG/PNG/BMP/GIF image in a supported mode; the message names it."""

    def __init__(self, path: str, reason: str, hint: str = FIX):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}; {hint}")


@dataclass(frozen=True)
class ImagePrep:
    """How a file becomes a model input: resized to ``size`` (height, width) with ``resize``, ``channels`` 1 or 3.

    Recorded in a run (run.json "images") and in a bundle's manifest (extra "images").
    """

    size: tuple[int, int]
    channels: int
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        h, w = self.size
        if int(h) < 1 or int(w) < 1:
            raise UsageError(f"image size must be positive, got {h}x{w}")
        if self.channels not in (1, 3):
            raise UsageError(f"image channels must be 1 (gray) or 3 (rgb), got {self.channels}")
        resample(self.resize)  # a bad name fails here, not at the first image

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.size[0]), int(self.size[1]), int(self.channels))

    def to_dict(self) -> dict[str, Any]:
        return {"resize": self.resize, "size": [int(self.size[0]), int(self.size[1])], "channels": int(self.channels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImagePrep:
        try:
            h, w = (int(v) for v in d["size"])
            return cls(size=(h, w), channels=int(d["channels"]), resize=str(d.get("resize", "bilinear")))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"bad image record {dict(d)!r} (needs size [H, W], channels, resize): {exc}") from None

    def load(self, source: str | os.PathLike | bytes | BinaryIO, out: np.ndarray | None = None,
             name: str | None = None) -> np.ndarray:
        return load_image(source, self.size, self.channels, self.resize, out=out, name=name)


_FILTERS: dict[str, int] = {}


def resample(method: str) -> int:
    """Pillow's resampling filter for a method name (``area`` is Pillow's BOX: the mean over each output pixel)."""
    if not _FILTERS:
        from PIL import Image

        _FILTERS.update({"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                         "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                         "area": Image.Resampling.BOX})
    try:
        return int(_FILTERS[method])
    except KeyError:
        raise UsageError(f"unknown resize method {method!r}; available: {list(RESIZE_METHODS)}") from None


def _label(source: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or "<image bytes>"


def _open(source: str | os.PathLike | bytes | BinaryIO, label: str):
    import io

    from PIL import Image

    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        return Image.open(fp)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(label, "not an image Pillow can identify (not JPEG, PNG, BMP or GIF)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(label, f"refused as too large ({exc})") from None
    except Exception as exc:  # a broken header: Pillow's plugins raise OSError, SyntaxError, ValueError...
        raise ImageDecodeError(label, f"cannot read the image header ({type(exc).__name__}: {exc})") from None


def _check(im, label: str) -> None:
    if im.format not in IMAGE_FORMATS:
        raise ImageDecodeError(label, f"a {im.format} image; edgekit reads JPEG, PNG, BMP and GIF")
    if im.mode not in GRAY_MODES and im.mode not in COLOR_MODES:
        raise ImageDecodeError(label, f"unsupported pixel mode {im.mode!r} (8-bit gray, palette or colour, "
                                      "or 16-bit gray, are read)")


def _gray16_to_8(im):
    from PIL import Image

    a = np.asarray(im)
    return Image.fromarray((a.astype(np.uint16) >> 8).astype(np.uint8))  # 2-D uint8: mode L


def image_header(source: str | os.PathLike | bytes | BinaryIO, name: str | None = None) -> tuple[int, int, bool]:
    """(height, width, gray) from the file's header, without decoding its pixels."""
    label = _label(source, name)
    with _open(source, label) as im:
        _check(im, label)
        w, h = im.size
        return int(h), int(w), im.mode in GRAY_MODES


def load_image(source: str | os.PathLike | bytes | BinaryIO, size: tuple[int, int] | None, channels: int,
               resize: str = "bilinear", *, out: np.ndarray | None = None, name: str | None = None) -> np.ndarray:
    """Decode one image file into uint8 pixels (H, W, ``channels``): the one decode + colour + resize.

    - GIF (and MPO): the first frame.
    - Colour: ``channels`` 1 is Pillow's ``convert("L")`` (ITU-R 601-2 luma from colour), 3 is
      ``convert("RGB")`` (gray replicated). An alpha channel (RGBA, LA, PA, a transparent palette) is
      dropped, not composited onto a background: the colour values under it are kept. 16-bit gray
      (I;16, a 16-bit PNG) keeps its top 8 bits (value >> 8, as OpenCV does); Pillow's own convert
      would clip every value above 255 to white.
    - Size: resized to ``size`` (height, width) with ``resize`` (nearest, bilinear, bicubic, lanczos,
      area = Pillow's BOX) after the colour conversion; an image already at ``size`` is not resized.
      ``size`` None keeps the file's size.
    - ``out``: a preallocated uint8 (H, W, C) array (a row of a batch) to decode into; it is returned.
    - A truncated or undecodable file, another format, or an unsupported mode raises ImageDecodeError
      naming the file (``name`` overrides the label used in messages). Truncated files are never padded.
    """
    if channels not in (1, 3):
        raise UsageError(f"image channels must be 1 (gray) or 3 (rgb), got {channels}")
    label = _label(source, name)
    mode = "L" if channels == 1 else "RGB"
    flt = resample(resize)
    with _open(source, label) as im:
        _check(im, label)
        try:
            im.load()  # the first frame; truncated data raises here (LOAD_TRUNCATED_IMAGES is never set)
            if im.mode.startswith("I;16"):
                im = _gray16_to_8(im)
            if im.mode != mode:  # the same pixels as convert() would copy
                im = im.convert(mode)
        except Exception as exc:
            raise ImageDecodeError(label, f"cannot be decoded ({type(exc).__name__}: {exc})") from None
        if size is not None and im.size != (int(size[1]), int(size[0])):
            im = im.resize((int(size[1]), int(size[0])), resample=flt)
        w, h = im.size
        pixels = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(h, w, channels)
    if out is None:
        return pixels.copy()  # frombuffer's array is read-only
    if out.shape != pixels.shape or out.dtype != np.uint8:
        raise UsageError(f"{label}: decoded to {pixels.shape}, but the output array is {out.dtype}{out.shape}")
    out[...] = pixels
    return out


# OpenCV's interpolation for each method name of resize_pixels; "auto" is area averaging when shrinking
# (OpenCV's advice for decimation: no aliasing) and bilinear when enlarging.
CV_METHODS = ("auto", "nearest", "bilinear", "bicubic", "lanczos", "area")


_CV: list = []  # [cv2, {method: interpolation}], filled on the first resize (import edge works without OpenCV)
_U8 = np.dtype(np.uint8)
_AREA = _LINEAR = -1  # OpenCV's flags for "auto", set with _CV


def _cv():
    global _AREA, _LINEAR
    if not _CV:
        import cv2

        _CV[:] = [cv2, {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                        "lanczos": cv2.INTER_LANCZOS4, "area": cv2.INTER_AREA}]
        _AREA, _LINEAR = cv2.INTER_AREA, cv2.INTER_LINEAR
    return _CV[0], _CV[1]


def _cv_interpolation(method: str, shrink: bool) -> int:
    cv2, table = _cv()
    if method == "auto":
        return cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    try:
        return table[method]
    except KeyError:
        raise UsageError(f"unknown resize method {method!r}; available: {list(CV_METHODS)}") from None


def resize_pixels(images: np.ndarray, size: tuple[int, int], method: str = "auto",
                  out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixels (H, W, C) or (N, H, W, C) -> the same at ``size`` (height, width): the one resize between a
    run's or a bundle's images (at the dataset's size) and a variant that takes another input size.

    OpenCV's ``cv2.resize``, one image at a time: with ``method`` "auto" (the default) area averaging when
    the image shrinks and bilinear when it grows. Training, conversion, the canary, the benchmark and serving
    all resize through it, so a variant sees at serving exactly the pixels it was trained and measured on.
    OpenCV rather than Pillow (which decodes the files): on this project's 2-core VM a 28x28 gray image took
    Pillow 17-43 us to resize and OpenCV 4-8 us, against CNNs that run in a few microseconds.
    Images already at ``size`` are returned as they are (copied into ``out`` when one is given).

    ``out``: a preallocated uint8 array of the result's shape to resize into, returned. Serving keeps one per
    variant (``edge.runtime.scheduler.InputPreparer``): OpenCV then writes into it and allocates nothing,
    which on one 28x28 image is faster than the bare allocating call. A wrong shape or dtype is an error.
    """
    x = images
    if type(x) is np.ndarray and x.ndim == 3 and x.dtype is _U8 and method == "auto":
        # One image, the serving path, in as few Python steps as the checks allow (each is a tenth of OpenCV's time).
        h, w = size
        ih, iw, c = x.shape
        if out is not None:
            return resizer(x.shape, size, out)(x)  # into out: the resize serving prepares once per shape
        if h > 0 and w > 0 and (ih != h or iw != w):
            cv2 = _CV[0] if _CV else _cv()[0]
            # Positional arguments (dst, fx, fy, interpolation): OpenCV parses them 0.36 us faster than keywords.
            r = cv2.resize(x, (w, h), None, 0, 0, _AREA if h * w < ih * iw else _LINEAR)
            return r.reshape(h, w, 1) if c == 1 else r  # OpenCV drops a single channel's axis
    result = _resize_any(x, size, method)
    if out is None:
        return result
    if not isinstance(out, np.ndarray) or out.shape != result.shape or out.dtype != np.uint8:
        raise UsageError(f"resize_pixels: out must be uint8 {result.shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)}{getattr(out, 'shape', '')}")
    out[...] = result
    return out


def resizer(source_hwc: tuple[int, int, int], size: tuple[int, int], out: np.ndarray | None = None
            ) -> Callable[[np.ndarray], np.ndarray]:
    """``resize_pixels(image, size, out=out)`` prepared once for one image shape: a function of one uint8
    ``source_hwc`` image that resizes it into ``out`` (allocated here when None) and returns ``out``.

    Serving (``edge.runtime.scheduler.InputPreparer``) resizes every request of a variant from the same
    shape to the same size, so the checks and the choice of interpolation are made here, once, and each
    request pays one ``cv2.resize`` call: the caller has checked the image is uint8 of ``source_hwc``.
    The same pixels as resize_pixels (test).
    """
    ih, iw, c = (int(v) for v in source_hwc)
    h, w = int(size[0]), int(size[1])
    if min(ih, iw, h, w) < 1 or c < 1:
        raise UsageError(f"cannot resize {ih}x{iw}x{c} images to {h}x{w}")
    buf = np.empty((h, w, c), np.uint8) if out is None else out
    if not isinstance(buf, np.ndarray) or buf.shape != (h, w, c) or buf.dtype != np.uint8:
        raise UsageError(f"resizer: out must be uint8 {(h, w, c)}, got "
                         f"{getattr(buf, 'dtype', type(buf).__name__)}{getattr(buf, 'shape', '')}")
    resize, wh, flag = (_CV[0] if _CV else _cv()[0]).resize, (w, h), _AREA if h * w < ih * iw else _LINEAR
    if (ih, iw) == (h, w):
        def copy(image: np.ndarray) -> np.ndarray:
            buf[...] = image
            return buf
        return copy

    def run(image: np.ndarray) -> np.ndarray:
        resize(image, wh, buf, 0, 0, flag)  # positional; OpenCV writes into buf (a uint8 array of its shape)
        return buf
    return run


def resize_matrices(source_hw: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows (H, h), cols (W, w)) float32: resize_pixels's resize from ``source_hw`` (h, w) to ``size`` (H, W) as the
    linear map it is, ``rows @ image @ cols.T`` per channel, for a graph that has to resize inside itself (an
    ensemble whose members take other sizes than its input: ``converters.family.layers.Resample``).

    OpenCV's area averaging and bilinear interpolation are separable, so the two matrices are what it does to
    images constant along one axis, taken with the interpolation resize_pixels chooses for this pair of sizes
    (by total pixels). The map matches OpenCV's float resize to 1e-4 and its uint8 resize (which rounds, in
    fixed point) to within one gray level (test). Each row sums to one."""
    ih, iw = int(source_hw[0]), int(source_hw[1])
    h, w = int(size[0]), int(size[1])
    if min(ih, iw, h, w) < 1:
        raise UsageError(f"cannot resize {ih}x{iw} images to {h}x{w}")
    cv2 = _CV[0] if _CV else _cv()[0]
    flag = _AREA if h * w < ih * iw else _LINEAR

    def along(axis: int) -> np.ndarray:  # column k: the resize of the image that is 1 on line k of this axis
        n = (ih, iw)[axis]
        out = np.empty(((h, w)[axis], n), np.float32)
        for k in range(n):
            basis = np.zeros((ih, iw), np.float32)
            basis[(k, slice(None)) if axis == 0 else (slice(None), k)] = 1.0
            r = cv2.resize(basis, (w, h), None, 0, 0, flag)
            out[:, k] = r[:, 0] if axis == 0 else r[0, :]
        return out

    return along(0), along(1)


def _resize_any(images: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """resize_pixels for any input it takes, checked: one image or a batch, any method."""
    x = images if isinstance(images, np.ndarray) else np.asarray(images)
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise UsageError(f"resize_pixels needs uint8 pixels (H, W, C) or (N, H, W, C), got {x.dtype}{x.shape}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise UsageError(f"cannot resize to {h}x{w}")
    ih, iw, c = x.shape[-3:]
    if ih == h and iw == w:
        return x
    cv2, table = _CV if _CV else _cv()
    if method == "auto":
        flag = table["area"] if h * w < ih * iw else table["bilinear"]
    else:
        flag = _cv_interpolation(method, shrink=h * w < ih * iw)
    if x.ndim == 3 or x.shape[0] == 1:  # one image (a request: the serving path), no copy beyond OpenCV's
        # OpenCV takes an (H, W, 1) image as it is and drops the channel axis of the result
        r = cv2.resize(x if x.ndim == 3 else x[0], (w, h), interpolation=flag)
        r = r[:, :, None] if c == 1 else r.reshape(h, w, c)
        return r if x.ndim == 3 else r[None]
    n = x.shape[0]
    out = np.empty((n, h, w, c), np.uint8)
    for i in range(n):
        if c == 1:
            out[i, :, :, 0] = cv2.resize(x[i, :, :, 0], (w, h), interpolation=flag)
        else:
            out[i] = cv2.resize(x[i], (w, h), interpolation=flag).reshape(h, w, c)
    return out


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a file name ends in one of IMAGE_SUFFIXES (case-insensitive), as Keras decides."""
    return Path(path).name.lower().endswith(IMAGE_SUFFIXES)
