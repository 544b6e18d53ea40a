"""Read PyTorch ``.pth`` state dicts into numpy arrays without torch and without running pickle code.

A ``.pth`` file is a pickle whose tensors point at raw storages: in the zip format (PyTorch >= 1.6)
the storages are archive members ``<root>/data/<key>``; in the legacy format (magic number, protocol,
system info, the pickle, the list of storage keys, then each storage as an int64 element count and
its bytes) they follow the pickle. The unpickler here resolves exactly the globals a state dict
needs -- ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``
and the ``torch.*Storage`` type markers -- to local functions that build numpy arrays. Any other
global (``os.system``, ``builtins.eval``, a model class...) is refused before anything is called.

Why one module of ~500 lines: the restricted unpickler, the storage bounds and both file layouts are
one security boundary; reviewing it whole is the point (issue 19).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import warnings
import zipfile
from typing import Any

import numpy as np

from jaxviz.errors import JaxvizError, show
from jaxviz.nn.finite import require_finite
from jaxviz.io.files import check_regular
from jaxviz.nn import Sequential

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_BYTES = 4 << 30  # the most one file may make us read into storages, and again build into tensors
MAX_PICKLE_BYTES = 256 << 20  # the most read of a zip's data.pkl (real ones are kilobytes)
MAX_NDIM = 32
_INT64 = 2**63  # torch's sizes, strides, offsets and counts are int64; a larger number is damage
_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _line(e: BaseException) -> str:
    """``Type: message`` of ``e`` on one short line."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


class _Frozen:
    """What the unpickler hands out. A pickle's BUILD opcode sets attributes on the object on top of
    the stack; refusing them means a file cannot rewrite the reader's markers, storages or tensors."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def _init(self, **fields: Any) -> None:
        for k, v in fields.items():
            object.__setattr__(self, k, v)


class _StorageType(_Frozen):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self._init(name=name, dtype=np.dtype(_DTYPES[name]))


class _Storage(_Frozen):
    """A storage a tensor refers to: its key, element type and declared element count."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self._init(key=key, dtype=dtype, numel=numel)


class _Tensor(_Frozen):
    """A tensor not yet materialised, exactly as the pickle gave it: storage, offset, size and stride
    (in elements). Nothing is trusted until :func:`_layout` has checked it against its storage."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        self._init(storage=storage, offset=offset, size=size, stride=stride)


class _Call(_Frozen):
    __slots__ = ("fn",)

    def __init__(self, fn: Any):
        self._init(fn=fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _allowed() -> dict[tuple[str, str], Any]:
    """The globals a state dict may name, as fresh read-only objects for each file."""
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor"): _Call(_rebuild_tensor),
        ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
        **{("torch", name): _StorageType(name) for name in _DTYPES},
    }


class _Unpickler(pickle.Unpickler):
    def __init__(self, stream: io.BufferedIOBase, path: str, max_bytes: int):
        super().__init__(stream)
        self.path, self.max_bytes = path, max_bytes
        self.allowed = _allowed()
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            pass
        if module == "torch" and name.endswith("Storage"):
            raise JaxvizError(f"{self.path}: tensors of type torch.{name} are not supported; supported storages: "
                              f"{', '.join(_DTYPES)}")
        raise JaxvizError(
            f"refusing {self.path}: its pickle asks for {module}.{name}, which is not part of a plain state "
            "dict (tensors in ordered dicts); jaxviz never runs code from weight files"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        bad = f"{self.path}: unexpected persistent id ({type(pid).__name__}) in its pickle; the file is damaged"
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage":
            raise JaxvizError(bad)
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, _StorageType) or type(key) is not str or type(numel) is not int \
                or not 0 <= numel < _INT64:
            raise JaxvizError(bad)
        if len(pid) == 6 and pid[5] is not None:  # legacy view metadata: pre-1.0 storage views
            raise JaxvizError(f"{self.path}: storage {key[:80]} is a view of another storage (PyTorch < 1.0); "
                              "re-save the state dict with a current PyTorch")
        if numel * stype.dtype.itemsize > self.max_bytes:
            raise JaxvizError(f"{self.path}: storage {key[:80]} claims {numel:,} elements, more than the "
                              f"{self.max_bytes:,} bytes a weight file may hold; the file is damaged")
        storage = _Storage(key, stype.dtype, numel)
        seen = self.storages.setdefault(key, storage)
        if (seen.dtype, seen.numel) != (storage.dtype, storage.numel):
            raise JaxvizError(f"{self.path}: storage {key[:80]} is declared both as {seen.numel} x {seen.dtype} and as "
                              f"{numel} x {stype.dtype}; the file is damaged")
        return seen


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def _load_pickle(stream: io.BytesIO, path: str, what: str, max_bytes: int) -> tuple[Any, dict[str, _Storage]]:
    """The next pickle in ``stream`` and the storages it referred to.

    The opcodes are scanned first, without running any: a memo index is an array index for the
    C unpickler, so a ten-byte pickle storing to index 2**31 would make it allocate 16 GiB. An index
    above the opcode count is refused (a pickler numbers memo entries 0, 1, 2, ...)."""
    start = stream.tell()
    with warnings.catch_warnings():  # a damaged STRING opcode makes the escape decoder warn: the error says it
        warnings.simplefilter("ignore")
        try:
            for n, (op, arg, _) in enumerate(pickletools.genops(stream)):
                if op.name in _MEMO_PUTS and arg > n:
                    slot = f"{arg:,}" if arg < _INT64 else "beyond 2**63"
                    raise JaxvizError(f"cannot read {path}: its {what} stores to memo slot {slot} after {n} "
                                      "opcodes; the file is damaged or hostile")
            stream.seek(start)
            u = _Unpickler(stream, path, max_bytes)
            return u.load(), u.storages
        except JaxvizError:
            raise
        except Exception as e:  # truncated, unknown opcodes, wrong argument counts, read-only objects ...
            raise JaxvizError(f"cannot read {path}: its {what} is not a readable pickle ({_line(e)})") from None


def _state_dict(obj: Any, path: str) -> "dict[str, _Tensor]":
    """The ``{name: tensor}`` mapping of an unpickled file (unwrapping a training checkpoint's
    ``state_dict``), every key a string and every value a tensor."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint wrapping the state dict
    if not isinstance(obj, dict):
        raise JaxvizError(f"{path}: not a state dict of tensors (found {type(obj).__name__})")
    for k, v in obj.items():
        if type(k) is not str:
            raise JaxvizError(f"{path}: not a state dict of tensors (a key is of type {type(k).__name__}, not str)")
        if not isinstance(v, _Tensor):
            raise JaxvizError(f"{path}: not a state dict of tensors ({k[:80]!r} is a {type(v).__name__})")
    return obj


def _layout(t: _Tensor, name: str, path: str, max_bytes: int) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """``(size, stride, offset, last)`` of ``t`` once proven to lie inside its storage: every element
    index ``offset + sum(i_k * stride_k)`` (``0 <= i_k < size_k``) is in ``[offset, last]`` and
    ``last < numel``; ``last`` is ``offset - 1`` for an empty tensor. Python integers: no overflow."""
    def bad(why: str) -> JaxvizError:
        return JaxvizError(f"{path}: tensor {name[:80]!r} {why}; the file is damaged or hostile")

    st = t.storage
    if not isinstance(st, _Storage):
        raise bad(f"refers to a {type(st).__name__} instead of a storage")
    if not isinstance(t.size, (tuple, list)) or not isinstance(t.stride, (tuple, list)):
        raise bad("has a size or stride that is not a list of integers")
    if len(t.size) != len(t.stride) or len(t.size) > MAX_NDIM:
        raise bad(f"has {len(t.size)} sizes and {len(t.stride)} strides (at most {MAX_NDIM}, equally many)")
    if not all(type(v) is int for v in (t.offset, *t.size, *t.stride)):
        raise bad("has an offset, size or stride that is not an integer")
    if not all(-_INT64 <= v < _INT64 for v in (t.offset, *t.size, *t.stride)):  # (before any is printed)
        raise bad("has an offset, size or stride beyond 64-bit integers")
    size, stride, offset = tuple(t.size), tuple(t.stride), t.offset
    if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise bad(f"has a negative offset, size or stride (offset {offset}, size {size}, stride {stride})")
    # Bound the element count with empty dimensions counted as 1, so that neither numpy's shape
    # arithmetic nor a (0, 2**62) shape can overflow; stop multiplying as soon as the cap is passed.
    limit, count = max_bytes // st.dtype.itemsize, 1
    for n in size:
        count *= max(n, 1)
        if count > limit:
            raise bad(f"claims shape {size}, more than the {max_bytes:,} bytes a weight file may hold")
    if 0 in size:
        if offset > st.numel:
            raise bad(f"starts at {offset}, past the end of its storage of {st.numel} elements")
        return size, stride, offset, offset - 1
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= st.numel:
        raise bad(f"reaches element {last} of a storage of {st.numel} elements")
    return size, stride, offset, last


def _materialise(sd: "dict[str, _Tensor]", buffers: dict[str, np.ndarray], path: str, max_bytes: int
                 ) -> "collections.OrderedDict[str, np.ndarray]":
    """Copy every tensor out of its storage, at most ``max_bytes`` in all."""
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    total = 0
    for name, t in sd.items():
        size, stride, offset, last = _layout(t, name, path, max_bytes)
        buf = buffers[t.storage.key]
        native = buf.dtype.newbyteorder("=")
        total += math.prod(size) * buf.itemsize
        if total > max_bytes:
            raise JaxvizError(f"{path}: its tensors add up to more than {max_bytes:,} bytes, the most a weight "
                              "file may hold; the file is damaged or not a convnet's weights")
        if last < offset:
            out[name] = np.zeros(size, native)
            continue
        # Safe by _layout: the view lies inside buf[offset:last + 1]. A dimension of size 1 gets
        # stride 0, so an absurd stride there cannot overflow numpy's byte strides.
        strides = tuple(s * buf.itemsize if n > 1 else 0 for n, s in zip(size, stride))
        view = np.lib.stride_tricks.as_strided(buf[offset:last + 1], size, strides, writeable=False)
        out[name] = np.array(view, dtype=native, order="C")
    return out


def _needed(sd: "dict[str, _Tensor]", storages: dict[str, _Storage]) -> list[_Storage]:
    """The storages the state dict's tensors use, in first-use order."""
    keys = dict.fromkeys(t.storage.key for t in sd.values() if isinstance(t.storage, _Storage))
    return [storages[k] for k in keys]


def _array(raw: "bytes | memoryview", st: _Storage, little: bool, offset: int = 0) -> np.ndarray:
    if st.dtype == np.bool_:  # any nonzero byte is True; numpy bools must be 0 or 1
        return np.frombuffer(raw, np.uint8, st.numel, offset) != 0
    return np.frombuffer(raw, st.dtype.newbyteorder("<" if little else ">"), st.numel, offset)


def _member(z: zipfile.ZipFile, name: str, limit: int, path: str) -> bytes:
    """At most ``limit + 1`` bytes of archive member ``name`` (so a compression bomb is never inflated)."""
    try:
        with z.open(name) as f:
            return f.read(limit + 1)
    except Exception as e:  # zipfile raises many types for damaged members
        raise JaxvizError(f"cannot read {path}: damaged zip member {name[:80]} ({_line(e)})") from None


def _read_zip(path: str, max_bytes: int) -> "collections.OrderedDict[str, np.ndarray]":
    try:
        z = zipfile.ZipFile(path)
        names = z.namelist()
    except Exception as e:
        raise JaxvizError(f"cannot read {path}: damaged zip archive ({_line(e)})") from None
    with z:
        pkls = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkls:
            raise JaxvizError(f"{path}: zip archive without data.pkl; not a PyTorch file")
        root = pkls[0][: -len("data.pkl")]
        data = _member(z, pkls[0], MAX_PICKLE_BYTES, path)
        if len(data) > MAX_PICKLE_BYTES:
            raise JaxvizError(f"{path}: its data.pkl is larger than {MAX_PICKLE_BYTES:,} bytes; not a state dict")
        obj, storages = _load_pickle(io.BytesIO(data), path, "data.pkl", max_bytes)
        little = True
        if root + "byteorder" in names:
            order = _member(z, root + "byteorder", 16, path).strip()
            if order not in (b"little", b"big"):
                raise JaxvizError(f"{path}: its byteorder says {order[:16]!r}, not 'little' or 'big'; the file is damaged")
            little = order == b"little"
        sd = _state_dict(obj, path)
        buffers, total = {}, 0
        for st in _needed(sd, storages):
            name, nbytes = f"{root}data/{st.key}", st.numel * st.dtype.itemsize
            total += nbytes
            if total > max_bytes:
                raise JaxvizError(f"{path}: its storages add up to more than {max_bytes:,} bytes, the most a weight "
                                  "file may hold; the file is damaged or not a convnet's weights")
            if name not in names:
                raise JaxvizError(f"{path}: storage {st.key[:80]} has no data in the archive; the file is damaged")
            raw = _member(z, name, nbytes, path)[:nbytes]
            if len(raw) < nbytes:
                raise JaxvizError(f"{path}: storage {st.key[:80]} is truncated ({len(raw)} of {nbytes} bytes); "
                                  "the file is damaged")
            buffers[st.key] = _array(raw, st, little)
    return _materialise(sd, buffers, path, max_bytes)


def _read_legacy(path: str, max_bytes: int) -> "collections.OrderedDict[str, np.ndarray]":
    if os.path.getsize(path) > max_bytes + MAX_PICKLE_BYTES:
        raise JaxvizError(f"{path}: larger than {max_bytes + MAX_PICKLE_BYTES:,} bytes, the most a weight file may be")
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] == b"PK":
        raise JaxvizError(f"cannot read {path}: damaged or truncated zip archive")
    stream = io.BytesIO(data)

    def next_pickle(what: str) -> tuple[Any, dict[str, _Storage]]:
        return _load_pickle(stream, path, what, max_bytes)

    magic, _ = next_pickle("header")
    if magic != LEGACY_MAGIC:
        raise JaxvizError(f"cannot read {path}: not a PyTorch file (no zip archive, no legacy magic number)")
    next_pickle("protocol version")
    sys_info, _ = next_pickle("system information")
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    if type(little) is not bool:
        raise JaxvizError(f"{path}: its system information is damaged (little_endian is not true or false)")
    obj, storages = next_pickle("state dict")
    keys, _ = next_pickle("storage list")
    if type(keys) is not list or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
        raise JaxvizError(f"{path}: its storage list is not a list of distinct names; the file is damaged")
    sd = _state_dict(obj, path)
    buffers = {}
    for key in keys:  # the storages follow in this order, each as an int64 element count and its bytes
        st = storages.get(key)
        if st is None:
            raise JaxvizError(f"{path}: storage {key[:80]} is listed but never used; the file is damaged")
        head = stream.read(8)
        if len(head) < 8:
            raise JaxvizError(f"{path}: the file ends before storage {key[:80]}; it is truncated")
        (count,) = struct.unpack("<q" if little else ">q", head)
        pos, nbytes = stream.tell(), st.numel * st.dtype.itemsize
        if count != st.numel or pos + nbytes > len(data):
            raise JaxvizError(f"{path}: storage {key[:80]} is truncated or damaged")
        buffers[key] = _array(data, st, little, pos)
        stream.seek(pos + nbytes)
    missing = [st.key for st in _needed(sd, storages) if st.key not in buffers]
    if missing:
        raise JaxvizError(f"{path}: storage {missing[0][:80]} is used but its data is missing; the file is damaged")
    return _materialise(sd, buffers, path, max_bytes)


def is_torch_file(path: "str | os.PathLike") -> bool:
    """Whether ``path`` looks like a PyTorch file: a zip with a ``data.pkl`` or a legacy pickle (a
    damaged zip named ``.pth``/``.pt`` counts, so that the error comes from the PyTorch reader)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    named = path.endswith((".pth", ".pt"))
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
        except Exception:  # damaged in any of the ways zipfile reports
            return named
    try:
        with open(path, "rb") as fh:
            return fh.read(1) == b"\x80" or named
    except OSError:
        return named


def read_state_dict(path: "str | os.PathLike", *, max_bytes: int = MAX_BYTES) -> "collections.OrderedDict[str, np.ndarray]":
    """``{name: numpy array}`` from a PyTorch ``.pth``/``.pt`` state dict (zip or legacy format).

    No torch needed and no code from the file run: a pickle that refers to anything but tensors and
    ordered dicts is refused with a :class:`JaxvizError` naming what it asked for. Every tensor's
    offset, sizes and strides are checked against its storage before anything is copied, and at most
    ``max_bytes`` are read into storages and at most ``max_bytes`` built into tensors."""
    path = os.fspath(path)
    check_regular(path, "weights file", max_bytes + MAX_PICKLE_BYTES + (64 << 20))  # a FIFO or device never blocks
    try:
        return _read_zip(path, max_bytes) if zipfile.is_zipfile(path) else _read_legacy(path, max_bytes)
    except OSError as e:
        raise JaxvizError(f"cannot read {path}: {e.strerror or _line(e)}") from None


# ---------------------------------------------------------------------------------------------
# State dict -> jaxviz params

_BN = ("weight", "bias", "running_mean", "running_var")


def _modules(sd: "collections.OrderedDict[str, np.ndarray]") -> list[tuple[str, dict[str, np.ndarray]]]:
    """``[(module, {param: array})]`` in state-dict order (``num_batches_tracked`` dropped)."""
    out: collections.OrderedDict[str, dict[str, np.ndarray]] = collections.OrderedDict()
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if param != "num_batches_tracked":
            out.setdefault(module, {})[param] = value
    return list(out.items())


def _convert(kind: str, module: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A PyTorch module's tensors as the Keras-ordered arrays of a jaxviz layer of ``kind``."""
    if kind == "batchnorm":
        return [module[p] for p in _BN if p in module]
    w = module.get("weight")
    if w is None:
        return []
    if w.ndim == 4:  # conv OIHW -> HWIO; a depthwise conv (C, 1, k, k) -> (k, k, C, 1)
        w = w.transpose(2, 3, 0, 1) if kind == "depthwise" else w.transpose(2, 3, 1, 0)
    elif w.ndim == 2:  # Linear (out, in) -> Dense (in, out)
        w = w.T
    return [w] + ([module["bias"]] if "bias" in module else [])


def _map(model: Sequential, sd: "collections.OrderedDict[str, np.ndarray]", path: str
         ) -> dict[str, dict[str, tuple[str, np.ndarray]]]:
    """``{layer: {param: (module, float32 array)}}``: the state dict laid onto ``model``, every shape checked."""
    from jaxviz.nn import layers as L
    from jaxviz.io.keras import describe_shapes

    modules = _modules(sd)
    spec = model.param_shapes()
    if len(modules) != len(spec):
        raise JaxvizError(f"{path} does not fit {model.name}: {len(modules)} weighted modules, the model has "
                          f"{len(spec)} weighted layers")
    out: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for (module, tensors), (name, shapes) in zip(modules, spec.items()):
        layer = model.layer(name)
        kind = {L.BatchNormalization: "batchnorm", L.DepthwiseConv2D: "depthwise"}.get(type(layer), "conv")
        arrays = _convert(kind, tensors)
        found = [tuple(a.shape) for a in arrays]
        if found != [tuple(s) for s in shapes.values()]:
            raise JaxvizError(
                f"{path} does not fit {model.name}: layer {name!r} expects {describe_shapes(shapes)}; "
                f"module {module!r} gives {found}")
        out[name] = {p: (module, np.asarray(a, np.float32)) for (p, _), a in zip(shapes.items(), arrays)}
    return out


def _finite(mapped: dict[str, dict[str, tuple[str, np.ndarray]]], path: str) -> dict[str, dict[str, np.ndarray]]:
    """The params of :func:`_map`, once every value is known to be finite (a float64 beyond float32's
    range has become Inf, and is refused too)."""
    for ps in mapped.values():
        for module, a in ps.values():
            require_finite(a, f"{path}: module {module!r} contains NaN or Inf; the weights are unusable")
    return {name: {p: a for p, (_, a) in ps.items()} for name, ps in mapped.items()}


def torch_to_params(model: Sequential, sd: "collections.OrderedDict[str, np.ndarray]", path: str = "state dict"
                    ) -> dict[str, dict[str, np.ndarray]]:
    """Map a PyTorch state dict onto ``model`` module by module, in order (the state dict lists its
    modules in the order they were built, which for a port is the architecture's order). Every shape
    is checked; the first misfit names both layers. NaN or Inf is refused, naming the module."""
    return _finite(_map(model, sd, path), path)


def load_torch_weights(path: "str | os.PathLike", arch: str | None = None) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """``(architecture, params)`` from a ``.pth`` state dict; ``arch`` defaults to the registered
    architecture the state dict fits."""
    from jaxviz.nn import MODELS, get_model

    sd = read_state_dict(path)
    path = os.fspath(path)
    if arch is not None:
        return arch, torch_to_params(get_model(arch), sd, path)
    for name in MODELS:
        try:
            mapped = _map(get_model(name), sd, path)
        except JaxvizError:
            continue
        return name, _finite(mapped, path)  # NaN in the one that fits is reported, not "nothing fits"
    modules = _modules(sd)
    first = f", first {show(repr(modules[0][0]), 80)}" if modules else ""
    raise JaxvizError(f"{path}: no registered architecture fits this state dict ({len(modules)} weighted modules"
                      f"{first}); jaxviz maps a .pth onto a registered architecture: {', '.join(MODELS)} (pass arch=NAME "
                      "to map it onto one of them and see the first layer that differs)")
