"""Loading images from paths, arrays and built-in samples, resized like Keras ``load_img``.

Resizing uses Pillow (already a dependency of matplotlib and scikit-image) because Keras's
``load_img`` does: nearest and bilinear resizes then match Keras pixel for pixel.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxviz.nn.finite import require_finite
from jaxviz.errors import JaxvizError, show, unknown
from jaxviz.io.files import buffer

# Photos that ship inside installed packages (no download): scikit-image and scikit-learn.
SKIMAGE_SAMPLES = (
    "astronaut", "camera", "cat", "chelsea", "coffee", "coins", "horse", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "rocket", "text",
)
SKLEARN_SAMPLES = ("china", "flower")
SAMPLES = tuple(sorted(SKIMAGE_SAMPLES + SKLEARN_SAMPLES))
INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

ImageSource = "str | os.PathLike | np.ndarray"


def sample_image(name: str) -> np.ndarray:
    """A photo shipped by an installed package, as uint8 H x W x 3 (or H x W for grayscale)."""
    if name in SKIMAGE_SAMPLES:
        import skimage.data

        return np.asarray(getattr(skimage.data, name)())
    if name in SKLEARN_SAMPLES:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(f"{name}.jpg"))
    raise unknown("sample image", name, SAMPLES)


def _to_pil(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise JaxvizError(f"an image array must be H x W, H x W x 1, 3 or 4; got shape {arr.shape}")
    if min(arr.shape[:2]) < 1:
        raise JaxvizError(f"empty image of shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.asarray(arr, np.float64)
        require_finite(arr, "image array contains NaN or Inf")
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0  # floats in [0, 1], as skimage returns them
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


# Bounds on what an image file may cost before a single pixel is decoded: a 400 KB PNG can declare
# 20000 x 20000 pixels (1.2 GB once decoded). 64 Mpx is a 9000 x 7000 photo; nothing jaxviz draws needs more.
MAX_IMAGE_PIXELS = 64_000_000
MAX_IMAGE_BYTES = 256 * 2**20
# The formats Pillow may open: the common photo formats only. Others (EPS runs Ghostscript, ...) are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")


def _unreadable(path: str, e: BaseException) -> JaxvizError:
    return JaxvizError(f"cannot read image {path}: not a readable image file ({', '.join(IMAGE_FORMATS)}; "
                       f"{e.__class__.__name__})")


def _open(path: str) -> Image.Image:
    data = buffer(path, "image", MAX_IMAGE_BYTES)  # a regular file only: a FIFO or device never blocks
    path = show(path)
    too_big = f"more than the {MAX_IMAGE_PIXELS // 10**6} Mpx jaxviz decodes; resize it first"
    try:
        with warnings.catch_warnings():  # Pillow's own, higher bomb limit: an error here too, never a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(data, formats=IMAGE_FORMATS)  # reads the header only
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise JaxvizError(f"image {path} declares {too_big}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise _unreadable(path, e) from None
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:  # checked before decoding: a decompression bomb never expands
        img.close()
        raise JaxvizError(f"image {path} declares {w}x{h} pixels, {too_big}")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit (or 32-bit integer) grayscale: keep the top 8 bits rather than clipping at 255.
        arr = np.asarray(img).astype(np.int64)
        shift = 8 if arr.max(initial=0) < 65536 else 24
        return Image.fromarray(np.clip(arr >> shift, 0, 255).astype(np.uint8))
    return img


def load_image(
    source: "str | os.PathLike | np.ndarray",
    target_size: Sequence[int] | None = None,
    *,
    interpolation: str = "nearest",
    channels: int = 3,
) -> np.ndarray:
    """Load an image as uint8 ``H x W x channels`` (channels 3 = RGB, 1 = grayscale).

    ``source``: a PNG/JPEG path (grayscale, RGBA and 16-bit are handled; alpha is dropped as Keras
    does), ``sample:NAME`` for a photo shipped in an installed package (see :data:`SAMPLES`), or an
    array. ``target_size`` is ``(height, width)``; resizing is Keras's ``load_img`` (nearest by default).
    """
    if isinstance(source, np.ndarray):
        img = _to_pil(source)
    else:
        source = os.fspath(source)
        if source.startswith("sample:"):
            img = _to_pil(sample_image(source[len("sample:"):]))
        else:
            img = _open(source)
    mode = {3: "RGB", 1: "L"}.get(channels)
    if mode is None:
        raise JaxvizError(f"channels must be 1 or 3, got {channels}")
    if img.mode != mode:
        img = img.convert(mode)
    if target_size is not None:
        h, w = (int(v) for v in target_size)
        if h < 1 or w < 1:
            raise JaxvizError(f"target size must be positive, got {h}x{w}")
        if interpolation not in INTERPOLATIONS:
            raise unknown("interpolation", interpolation, list(INTERPOLATIONS))
        if img.size != (w, h):
            img = img.resize((w, h), INTERPOLATIONS[interpolation])
    arr = np.asarray(img, np.uint8)
    return arr[..., None] if channels == 1 else arr


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def expand_sources(sources: Sequence[str]) -> list[str]:
    """Image sources with each folder replaced by its image files (sorted by name, not recursive)."""
    out: list[str] = []
    for src in sources:
        if not src.startswith("sample:") and os.path.isdir(src):
            files = sorted(f for f in os.listdir(src) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise JaxvizError(f"folder {src} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += [os.path.join(src, f) for f in files]
        else:
            out.append(src)
    return out


def image_stem(source: "str | os.PathLike | np.ndarray", index: int = 0) -> str:
    """A file-name stem for an image source: ``cat`` for ``photos/cat.jpg``, ``chelsea`` for ``sample:chelsea``."""
    if isinstance(source, np.ndarray):
        return f"image{index}"
    s = os.fspath(source)
    if s.startswith("sample:"):
        return s[len("sample:"):]
    return os.path.splitext(os.path.basename(s))[0] or f"image{index}"
