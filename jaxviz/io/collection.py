"""Image collections streamed in fixed-size batches: decoded ahead in a bounded background pool, so
memory stays bounded whatever the collection's size and the device does not wait on the disk.

A collection is named by a *spec*: a folder (searched recursively), a glob (``photos/**/*.jpg``), a
list of paths, a text file of paths (one per line), an ``.npy``/``.npz`` array (N x H x W [x C]),
``digits`` / ``fruits`` (:mod:`jaxviz.io.datasets`), ``sample:NAME`` (or ``samples`` for all the
photos shipped with installed packages), an array, or any Python iterable of pixel batches.
Every item has a global index (its position in :attr:`Collection.paths`); a process of several reads
its own contiguous share (``shard``) and may start part-way through it (``start``, for resuming).

A file that cannot be decoded (corrupt, wrong format, too large) is skipped: its row of the batch is
marked invalid, and it is listed in :attr:`Collection.failures`. More failures than ``max_failures``
(a share of the items) stop the run with one :class:`~jaxviz.errors.JaxvizError` line.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from jaxviz.nn.finite import require_finite
from jaxviz.errors import JaxvizError, show
from jaxviz.io.files import read_bytes
from jaxviz.io.images import IMAGE_EXTENSIONS, INTERPOLATIONS, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, SAMPLES, load_image

LIST_EXTENSIONS = (".txt", ".lst", ".list")
MAX_BATCH = 65536
GLOB_CHARS = "*?["


class Batch(NamedTuple):
    """One batch of a collection.

    Attributes:
      indices: int64 N, each row's index into :attr:`Collection.paths` (-1 for padding).
      pixels: float32 N x H x W x C, RGB (or grey) 0..255; zeros in invalid rows.
      valid: bool N, False for padding past the end of the share and for files that failed to decode.
    """

    indices: np.ndarray
    pixels: np.ndarray
    valid: np.ndarray


class Failure(NamedTuple):
    """An item that could not be decoded: its index, its name and why (one line)."""

    index: int
    path: str
    reason: str


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text if isinstance(e, JaxvizError) else f"{e.__class__.__name__}: {text}"


DECODE_MEMORY = 1 << 30  # bytes: what the decoding threads may hold at once (decoded pixels and their copies)


class _Budget:
    """A byte budget shared by the decoding threads: a decode takes its estimated bytes (at most the
    whole budget, so one huge image still runs, alone) and gives them back when its pixels are resized;
    decodes that would go over the budget wait. Memory is then bounded by the budget, not by the number
    of workers times the largest image."""

    def __init__(self, total: int):
        self.total, self.used, self.peak = max(1, int(total)), 0, 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def take(self, nbytes: int):
        n = min(max(int(nbytes), 0), self.total)
        with self._cond:
            while self.used and self.used + n > self.total:
                self._cond.wait()
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


_NO_BUDGET = _Budget(1 << 62)


def _decode_cost(width: int, height: int, bytes_per_pixel: int, file_bytes: int) -> int:
    """Bytes a decode holds at its peak: the file, the decoded pixels and two copies of them at 8-bit
    RGB or more (the colour conversion and the resize's input)."""
    return int(file_bytes) + int(width) * int(height) * (int(bytes_per_pixel) + 2 * 4)


def _header_cost(path: str) -> int:
    """:func:`_decode_cost` from an image's header (Pillow reads only the header here); 0 if it has none
    (the decode then fails, and says why)."""
    try:
        size = os.stat(path).st_size
        with Image.open(path) as im:
            bands = len(im.getbands())
            depth = 4 if im.mode in ("I", "F") else (2 if ";16" in im.mode else 1)
            return _decode_cost(im.width, im.height, bands * depth, size)
    except Exception:  # noqa: BLE001  (any unreadable header: load_image reports it)
        return 0


class _Source:
    """Random access to items by global index: ``names`` (list) and ``read(i) -> uint8/float H x W x C``."""

    names: list[str]

    def read(self, i: int, shape: tuple[int, int, int], interpolation: str, budget: _Budget = _NO_BUDGET) -> np.ndarray:
        raise NotImplementedError


class _Files(_Source):
    def __init__(self, names: list[str]):
        self.names = names

    def read(self, i, shape, interpolation, budget=_NO_BUDGET):
        h, w, c = shape
        name = self.names[i]
        if name.startswith("sample:"):
            return load_image(name, (h, w), channels=c, interpolation=interpolation)
        img = _read_png(name, c, (h, w), interpolation, budget)
        if img is not None:
            return img
        with budget.take(_header_cost(name) if budget is not _NO_BUDGET else 0):
            return load_image(name, (h, w), channels=c, interpolation=interpolation)


_PNG = b"\x89PNG\r\n\x1a\n"


def _read_png(path: str, channels: int, size: tuple[int, int], interpolation: str,
              budget: _Budget = _NO_BUDGET) -> np.ndarray | None:
    """An 8-bit PNG decoded by OpenCV, which releases the GIL while it decodes (Pillow's per-image work
    in Python is what limited the decoding threads): uint8 H x W x ``channels``, the same pixels as
    :func:`~jaxviz.io.images.load_image` (PNG is lossless; alpha dropped; RGB to grey with Pillow's
    integer formula, L = (19595 R + 38470 G + 7471 B + 32768) >> 16). None for anything else (other
    formats, 16-bit or palette PNGs, files OpenCV cannot decode), which :func:`load_image` then reads
    or refuses with its message. The file is read through the same opener, the same size and pixel caps;
    the decode and the resize to ``size`` (H, W) run within ``budget``."""
    import cv2

    try:
        data = read_bytes(path, "image", MAX_IMAGE_BYTES)
    except JaxvizError:
        return None  # load_image says why
    # IHDR: width, height, bit depth, colour type (0 grey, 2 RGB, 4 grey + alpha, 6 RGBA; 3 is a palette)
    if len(data) < 33 or data[:8] != _PNG or data[12:16] != b"IHDR" or data[24] != 8 or data[25] not in (0, 2, 4, 6):
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if width * height > MAX_IMAGE_PIXELS:
        return None
    with budget.take(_decode_cost(width, height, (1, 0, 3, 0, 2, 0, 4)[data[25]], len(data))):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        del data
        if img is None or img.dtype != np.uint8:
            return None
        img = _png_channels(img, channels)
        h, w = size
        if img.shape[:2] != (h, w):  # Keras's load_img resize, as load_image does it
            img = np.asarray(Image.fromarray(img[..., 0] if channels == 1 else img).resize(
                (w, h), INTERPOLATIONS[interpolation]), np.uint8).reshape(h, w, channels)
        return img


def _png_channels(img: np.ndarray, channels: int) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] in (1, 2):  # grey (and alpha)
        grey = img[..., :1]
        return grey if channels == 1 else np.repeat(grey, 3, -1)
    rgb = img[..., 2::-1]  # OpenCV's BGR(A) to RGB, alpha dropped
    if channels == 3:
        return np.ascontiguousarray(rgb)
    out = np.empty(rgb.shape[:2] + (1,), np.uint8)
    for top in range(0, len(rgb), 256):  # in bands of rows: the uint32 temporaries stay small
        r, g, b = (rgb[top:top + 256, :, k].astype(np.uint32) for k in range(3))
        out[top:top + 256, :, 0] = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
    return out


class _Array(_Source):
    def __init__(self, array: np.ndarray, label: str):
        a = array
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim != 4 or a.shape[-1] not in (1, 3, 4) or min(a.shape[1:3], default=0) < 1:
            raise JaxvizError(f"{label}: an image array must be N x H x W or N x H x W x C (C 1, 3 or 4), "
                              f"got shape {array.shape}")
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise JaxvizError(f"{label}: an image array must hold numbers, got dtype {a.dtype}")
        if len(a) == 0:
            raise JaxvizError(f"{label}: the image array holds no image (shape {array.shape})")
        self.array, self.names = a, [f"{label}[{i}]" for i in range(len(a))]

    def read(self, i, shape, interpolation, budget=_NO_BUDGET):  # items are in memory (or mapped) already
        item = np.asarray(self.array[i])
        if item.shape[:2] == tuple(shape[:2]) and item.shape[-1] == shape[-1]:
            out = item.astype(np.float32)
            require_finite(out, "image array contains NaN or Inf")
            return out  # pixels as given (0..255), no round trip through uint8
        if item.dtype != np.uint8:  # load_image would read floats <= 1 as 0..1; these are 0..255
            # NaN or Inf would become 0 or 255 when resized: skipped and counted like an unreadable file
            require_finite(item, "image array contains NaN or Inf")
            item = np.clip(np.nan_to_num(item.astype(np.float64)), 0, 255).round().astype(np.uint8)
        h, w, c = shape
        return load_image(item, (h, w), channels=c, interpolation=interpolation)


def _walk(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):  # does not follow links to folders: no cycles
        dirs.sort()
        out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def _text_list(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise JaxvizError(f"cannot read the list of images {path}: {_one_line(e)}") from None
    items = [l for l in lines if l and not l.startswith("#")]
    return [l if l.startswith("sample:") or os.path.isabs(l) else os.path.join(base, l) for l in items]


MAX_ARRAY_BYTES = 16 << 30  # an .npz member is read whole: its header's shape is checked against this first


def _npz_header(path: str, key: str) -> None:
    """The shape and dtype an ``.npz`` member declares, read from its header (never its data): a
    gigantic declared size or an object dtype (a pickle) is refused before anything is allocated."""
    import zipfile

    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    if dtype.hasobject:
        raise JaxvizError(f"image array {show(path)}: its member {show(key)} holds Python objects (a pickle); "
                          "jaxviz reads only numbers")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise JaxvizError(f"image array {show(path)}: its member {show(key)} declares shape {shape} ({size:,} bytes), "
                          f"more than {MAX_ARRAY_BYTES >> 30} GiB")


def _load_array(path: str) -> np.ndarray:
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "images" if "images" in keys else ("x" if "x" in keys else (keys[0] if len(keys) == 1 else None))
                if key is None:
                    raise JaxvizError(f"{show(path)} holds several arrays ({show(', '.join(keys))}); name the "
                                      "images 'images'")
                _npz_header(path, key)
                return z[key]
        return np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: read item by item
    except JaxvizError:
        raise
    except (OSError, ValueError, EOFError, KeyError, __import__("zipfile").BadZipFile) as e:
        raise JaxvizError(f"cannot read image array {show(path)}: {_one_line(e)}") from None


def _source(spec: Any) -> _Source | None:
    """The random-access source of ``spec``, or None for an iterable of batches."""
    if isinstance(spec, np.ndarray):
        return _Array(spec, "array")
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, str):
        if spec in ("digits", "fruits"):
            from jaxviz.io import datasets

            return _Array(datasets.load(spec)[0], spec)
        if spec == "samples":
            return _Files([f"sample:{s}" for s in SAMPLES])
        if spec.startswith("sample:"):
            return _Files([spec])
        if os.path.isdir(spec):
            files = _walk(spec)
            if not files:
                raise JaxvizError(f"folder {spec} holds no images ({', '.join(IMAGE_EXTENSIONS)}), even in subfolders")
            return _Files(files)
        low = spec.lower()
        if os.path.isfile(spec) and low.endswith((".npy", ".npz")):
            return _Array(_load_array(spec), os.path.basename(spec))
        if os.path.isfile(spec) and low.endswith(LIST_EXTENSIONS):
            files = _text_list(spec)
            if not files:
                raise JaxvizError(f"the list of images {spec} names no file")
            return _Files(files)
        if os.path.isfile(spec):
            return _Files([spec])
        if any(ch in spec for ch in GLOB_CHARS):
            files = sorted(f for f in globlib.glob(spec, recursive=True) if os.path.isfile(f))
            if not files:
                raise JaxvizError(f"no file matches {spec}")
            return _Files(files)
        raise JaxvizError(f"no image collection at {spec}: not a folder, glob, list file (.txt), .npy/.npz array, "
                          "digits, fruits, samples or sample:NAME")
    if isinstance(spec, (list, tuple)) and all(isinstance(s, (str, os.PathLike)) for s in spec):
        if not spec:
            raise JaxvizError("the list of images is empty")
        return _Files([os.fspath(s) for s in spec])
    if isinstance(spec, Iterable):
        return None
    raise JaxvizError(f"images must be a folder, glob, list of paths, array or iterable of batches, "
                      f"got {type(spec).__name__}")


class Collection:
    """An opened collection: iterate for :class:`Batch` es of this process's share (see
    :func:`open_collection`). ``paths`` names every item of the whole collection (for an iterable of
    batches: the items read so far); ``failures`` lists those of this share that could not be decoded."""

    def __init__(self, spec, shape, batch_size, start, shard, workers, prefetch, max_failures, interpolation,
                 decode_memory=DECODE_MEMORY):
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 3 or min(self.shape) < 1 or self.shape[-1] not in (1, 3):
            raise JaxvizError(f"shape must be (H, W, C) with C 1 or 3, got {tuple(shape)}")
        if not 1 <= int(batch_size) <= MAX_BATCH:
            raise JaxvizError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        index, count = (int(v) for v in shard)
        if not (count >= 1 and 0 <= index < count):
            raise JaxvizError(f"shard must be (index, count) with 0 <= index < count, got {tuple(shard)}")
        if not 0 <= float(max_failures) <= 1:
            raise JaxvizError(f"max_failures must be a share 0..1, got {max_failures}")
        self.batch_size, self.shard, self.max_failures = int(batch_size), (index, count), float(max_failures)
        self.interpolation = interpolation
        self.workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
        self.prefetch = max(1, int(prefetch))
        if not int(decode_memory) >= 1:
            raise JaxvizError(f"decode_memory must be a positive number of bytes, got {decode_memory}")
        self.budget = _Budget(int(decode_memory))
        self.failures: list[Failure] = []
        self._src = _source(spec)
        self._iterable = spec if self._src is None else None
        self._names: list[str] = [] if self._src is None else self._src.names
        n = len(self._names)
        lo, hi = (index * n) // count, ((index + 1) * n) // count  # this process's contiguous share
        self.share = (lo, hi)
        if start < 0 or (self._src is not None and start > hi - lo):
            raise JaxvizError(f"start {start} is outside this share of {hi - lo} items")
        self.start = int(start)

    @property
    def paths(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        """Items in the whole collection (an iterable of batches: read so far)."""
        return len(self._names)

    @property
    def share_size(self) -> int:
        """Items in this process's share (an iterable of batches: not known beforehand, -1)."""
        return self.share[1] - self.share[0] if self._src is not None else -1

    def read(self, index: int) -> np.ndarray:
        """Item ``index`` of the whole collection as float32 H x W x C pixels 0..255 (random access; a
        JaxvizError for an iterable of batches, whose items are not kept)."""
        if self._src is None:
            raise JaxvizError("an iterable of batches cannot be read by index; pass a folder, list or array")
        if not 0 <= int(index) < len(self._names):
            raise JaxvizError(f"index {index} is outside the collection of {len(self._names)} items")
        return np.asarray(self._src.read(int(index), self.shape, self.interpolation), np.float32)

    def __iter__(self) -> Iterator[Batch]:
        if self._src is None:
            yield from self._iter_batches()
            return
        lo, hi = self.share
        starts = range(lo + self.start, hi, self.batch_size)
        yield from _ahead(lambda s, pool: self._read_batch(s, min(s + self.batch_size, hi), pool), starts, self.prefetch,
                          self.workers)

    def _read_batch(self, a: int, b: int, pool: ThreadPoolExecutor) -> Batch:
        h, w, c = self.shape
        n = self.batch_size
        pixels = np.zeros((n, h, w, c), np.float32)
        valid = np.zeros(n, bool)
        indices = np.full(n, -1, np.int64)
        indices[: b - a] = np.arange(a, b)

        def one(i: int):
            try:
                return self._src.read(i, self.shape, self.interpolation, self.budget), None
            except Exception as e:  # noqa: BLE001  (any undecodable file is skipped and listed, never fatal by itself)
                return None, _one_line(e)

        # a few tasks per worker, not one per image: an executor task costs as much as decoding a small PNG
        step = max(1, -(-(b - a) // (4 * self.workers)))
        parts = pool.map(lambda lo: [one(i) for i in range(lo, min(lo + step, b))], range(a, b, step))
        for row, (img, err) in enumerate(r for part in parts for r in part):
            if err is None:
                pixels[row], valid[row] = img, True
            else:
                self._fail(a + row, err)
        return Batch(indices, pixels, valid)

    def _fail(self, i: int, reason: str) -> None:
        self.failures.append(Failure(i, self._names[i], reason))
        total = self.share_size if self.share_size >= 0 else len(self._names)
        if len(self.failures) > self.max_failures * max(total, 1):
            f = self.failures[0]
            raise JaxvizError(
                f"{len(self.failures)} of {total} images could not be read, more than max_failures="
                f"{self.max_failures:g} of them; the first: {f.path}: {f.reason}")

    def _iter_batches(self) -> Iterator[Batch]:
        """An iterable of pixel batches (N x H x W [x C], 0..255), re-cut into batches of
        ``batch_size``; with ``shard=(p, P)``, this process takes the source's batches p, p+P, ..."""
        h, w, c = self.shape
        p, count = self.shard
        buf: list[tuple[int, np.ndarray]] = []
        seen = 0
        for b, raw in enumerate(self._iterable):
            arr = np.asarray(raw)
            if arr.ndim == 3:
                arr = arr[..., None]
            if arr.ndim != 4 or arr.shape[1:] != (h, w, c):
                raise JaxvizError(f"batch {b} of the images has shape {arr.shape}; expected N x {h} x {w} x {c}")
            first = len(self._names)
            self._names += [f"item{first + i}" for i in range(len(arr))]
            if b % count != p:
                continue
            for i in range(len(arr)):
                if seen >= self.start:
                    buf.append((first + i, arr[i]))
                seen += 1
            while len(buf) >= self.batch_size:
                yield self._stack(buf[: self.batch_size])
                buf = buf[self.batch_size:]
        if buf:
            yield self._stack(buf)

    def _stack(self, items: list[tuple[int, np.ndarray]]) -> Batch:
        n = self.batch_size
        pixels = np.zeros((n,) + self.shape, np.float32)
        pixels[: len(items)] = np.stack([a for _, a in items]).astype(np.float32)
        indices = np.full(n, -1, np.int64)
        indices[: len(items)] = [i for i, _ in items]
        valid = np.arange(n) < len(items)
        return Batch(indices, pixels, valid)


def _ahead(read, starts: Sequence[int], prefetch: int, workers: int) -> Iterator[Batch]:
    """``read(start, pool)`` for each start, run ahead by a background thread at most ``prefetch``
    batches (a bounded queue: memory stays bounded); an exception in the reader is raised here."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="jaxviz-decode") as pool:
                for s in starts:
                    if stop.is_set():
                        return
                    item = read(s, pool)
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised there)
            _put(q, e, stop)
            return
        _put(q, done, stop)

    t = threading.Thread(target=produce, name="jaxviz-collection", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def open_collection(
    spec: Any,
    shape: Sequence[int],
    *,
    batch_size: int = 32,
    start: int = 0,
    shard: tuple[int, int] = (0, 1),
    workers: int | None = None,
    prefetch: int = 2,
    max_failures: float = 0.05,
    interpolation: str = "nearest",
    decode_memory: int = DECODE_MEMORY,
) -> Collection:
    """Open an image collection for streaming (see the module docstring for what ``spec`` may be).

    Args:
      shape: (H, W, C) every image is resized to (Keras's ``load_img``, ``interpolation``), C 1 or 3.
      batch_size: rows per :class:`Batch`; the last batch of a share is padded (``valid`` False).
      start: items of this share already done (resuming): iteration begins after them.
      shard: ``(index, count)``: this process's share of ``count`` contiguous shares (an iterable of
        batches: every ``count``-th batch of the source).
      workers: decoding threads (default: the CPU count, at most 8).
      prefetch: batches decoded ahead (memory: ``prefetch + 1`` batches).
      max_failures: the share of undecodable items above which reading stops with a JaxvizError.
      decode_memory: bytes the decoding threads may hold at once (default :data:`DECODE_MEMORY`, 1 GiB):
        a decode takes its cost from the image's header (the file, the decoded pixels, two 8-bit RGBA
        copies) and waits while the others hold the rest; one image over the budget is decoded alone.
        Memory is then about ``decode_memory`` plus ``prefetch + 1`` batches, whatever ``workers``.

    Returns a :class:`Collection`: iterate it for batches; ``paths`` and ``failures`` describe it.
    """
    return Collection(spec, shape, batch_size, start, shard, workers, prefetch, max_failures, interpolation,
                      decode_memory)
