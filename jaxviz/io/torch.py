"""Read PyTorch ``.pth`` state dicts into numpy arrays without torch and without running pickle code.

A ``.pth`` file is a pickle whose tensors point at raw storages: in the zip format (PyTorch >= 1.6)
the storages are archive members ``<root>/data/<key>``; in the legacy format (magic number, protocol,
system info, the pickle, the list of storage keys, then each storage as an int64 element count and
its bytes) they follow the pickle. The unpickler here resolves exactly the globals a state dict
needs -- ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``
and the ``torch.*Storage`` type markers -- to local functions that build numpy arrays. Any other
global (``os.system``, ``builtins.eval``, a model class...) is refused before anything is called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.nn import Sequential

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_DTYPES[name])


class _Tensor:
    """A tensor not yet materialised: its storage key, offset, size and stride (in elements)."""

    def __init__(self, storage: tuple, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, stream: io.BufferedIOBase, path: str):
        super().__init__(stream)
        self.path = path
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise JaxvizError(
                f"refusing {self.path}: its pickle asks for {module}.{name}, which is not part of a plain state "
                "dict (tensors in ordered dicts); jaxviz never runs code from weight files"
            ) from None

    def persistent_load(self, pid: Any) -> tuple:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise JaxvizError(f"refusing {self.path}: unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid[:5]
        self.storages[str(key)] = (stype.dtype, int(numel))
        return (str(key), stype.dtype)


def _load_pickle(stream: io.BufferedIOBase, path: str, what: str) -> tuple[Any, dict[str, tuple[np.dtype, int]]]:
    """The next pickle in ``stream`` and the storages it referred to."""
    u = _Unpickler(stream, path)
    try:
        return u.load(), u.storages
    except JaxvizError:
        raise
    except Exception as e:  # truncated, or not a pickle at all
        raise JaxvizError(f"cannot read {path}: its {what} is not a readable pickle ({type(e).__name__}: {e})") from None


def _materialise(obj: Any, buffers: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(obj, _Tensor):
        key, dtype = obj.storage
        buf = buffers[key]
        size = int(np.prod(obj.size)) if obj.size else 1
        end = obj.offset + (sum((s - 1) * st for s, st in zip(obj.size, obj.stride)) + 1 if size else 0)
        if end > buf.size:
            raise JaxvizError(f"{path}: a tensor reaches past the end of its storage; the file is damaged")
        strides = tuple(st * buf.itemsize for st in obj.stride)
        view = np.lib.stride_tricks.as_strided(buf[obj.offset:], obj.size, strides) if size else np.zeros(obj.size, dtype)
        return np.array(view)  # a contiguous copy
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, buffers, path)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, buffers, path) for v in obj)
    return obj


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as z:
        pkls = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkls:
            raise JaxvizError(f"{path}: zip archive without data.pkl; not a PyTorch file")
        root = pkls[0][: -len("data.pkl")]
        obj, storages = _load_pickle(io.BytesIO(z.read(pkls[0])), path, "data.pkl")
        order = z.read(root + "byteorder").decode().strip() if root + "byteorder" in z.namelist() else "little"
        buffers = {}
        for key, (dtype, numel) in storages.items():
            raw = z.read(f"{root}data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise JaxvizError(f"{path}: storage {key} is truncated; the file is damaged")
            buffers[key] = np.frombuffer(raw, dtype.newbyteorder("<" if order == "little" else ">"), numel)
    return _materialise(obj, buffers, path)


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as fh:
        stream = io.BytesIO(fh.read())

    def next_pickle(what: str) -> tuple[Any, dict]:
        return _load_pickle(stream, path, what)

    magic, _ = next_pickle("header")
    if magic != LEGACY_MAGIC:
        raise JaxvizError(f"cannot read {path}: not a PyTorch file (no zip archive, no legacy magic number)")
    next_pickle("protocol version")
    sys_info, _ = next_pickle("system information")
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    obj, storages = next_pickle("state dict")
    keys, _ = next_pickle("storage list")
    buffers = {}
    for key in keys:
        if str(key) not in storages:
            raise JaxvizError(f"{path}: storage {key} is listed but never used; the file is damaged")
        dtype, numel = storages[str(key)]
        head = stream.read(8)
        if len(head) < 8:
            raise JaxvizError(f"{path}: the file ends before storage {key}; it is truncated")
        (count,) = struct.unpack("<q" if little else ">q", head)
        raw = stream.read(count * dtype.itemsize)
        if count != numel or len(raw) != count * dtype.itemsize:
            raise JaxvizError(f"{path}: storage {key} is truncated or damaged")
        buffers[str(key)] = np.frombuffer(raw, dtype.newbyteorder("<" if little else ">"), count)
    return _materialise(obj, buffers, path)


def is_torch_file(path: "str | os.PathLike") -> bool:
    """Whether ``path`` looks like a PyTorch file: a zip with a ``data.pkl`` or a legacy pickle."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80" or path.endswith((".pth", ".pt"))


def read_state_dict(path: "str | os.PathLike") -> "collections.OrderedDict[str, np.ndarray]":
    """``{name: numpy array}`` from a PyTorch ``.pth``/``.pt`` state dict (zip or legacy format).

    No torch needed and no code from the file run: a pickle that refers to anything but tensors and
    ordered dicts is refused with a :class:`JaxvizError` naming what it asked for."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise JaxvizError(f"weights file not found: {path}")
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a training checkpoint wrapping the state dict
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise JaxvizError(f"{path}: not a state dict of tensors (found {type(obj).__name__})")
    return obj


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


def torch_to_params(model: Sequential, sd: "collections.OrderedDict[str, np.ndarray]", path: str = "state dict"
                    ) -> dict[str, dict[str, np.ndarray]]:
    """Map a PyTorch state dict onto ``model`` module by module, in order (the state dict lists its
    modules in the order they were built, which for a port is the architecture's order). Every shape
    is checked; the first misfit names both layers."""
    from jaxviz.nn import layers as L
    from jaxviz.io.keras import describe_shapes

    modules = _modules(sd)
    spec = model.param_shapes()
    if len(modules) != len(spec):
        raise JaxvizError(f"{path} does not fit {model.name}: {len(modules)} weighted modules, the model has "
                          f"{len(spec)} weighted layers")
    params: dict[str, dict[str, np.ndarray]] = {}
    for (module, tensors), (name, shapes) in zip(modules, spec.items()):
        layer = model.layer(name)
        kind = {L.BatchNormalization: "batchnorm", L.DepthwiseConv2D: "depthwise"}.get(type(layer), "conv")
        arrays = _convert(kind, tensors)
        found = [tuple(a.shape) for a in arrays]
        if found != [tuple(s) for s in shapes.values()]:
            raise JaxvizError(
                f"{path} does not fit {model.name}: layer {name!r} expects {describe_shapes(shapes)}; "
                f"module {module!r} gives {found}")
        for (p, _), a in zip(shapes.items(), arrays):
            a = np.asarray(a, np.float32)
            if not np.all(np.isfinite(a)):
                raise JaxvizError(f"{path}: module {module!r} contains NaN or Inf; the weights are unusable")
            params.setdefault(name, {})[p] = a
    return params


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
            return name, torch_to_params(get_model(name), sd, path)
        except JaxvizError:
            continue
    raise JaxvizError(f"{path}: no registered architecture fits this state dict "
                      f"({len(_modules(sd))} weighted modules); pass --arch")
