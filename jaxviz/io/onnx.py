"""Read an ONNX file into an ``onnx.ModelProto`` that reaches nothing outside its own bytes.

:func:`read_onnx` never calls ``onnx.load`` with external data loading. The file is read as a regular
file with its size known first (:mod:`jaxviz.io.files`); before protobuf inflates it, the wire format is
pre-scanned (:func:`prescan`): every length-delimited field's length lies within the bytes that remain,
messages nest at most :data:`MAX_DEPTH` deep, and every tensor holds exactly what its dims x dtype
declare (or names external data). Only then is it parsed. External tensor data is read by jaxviz
itself: only regular files inside the model's own folder (no absolute path, no ``..``, no symbolic link
on the way), offset and length within the file, the total under a budget; the bytes are put into the
tensor (``raw_data``), so nothing later resolves a path. Every refusal is one :class:`JaxvizError` line.
"""

from __future__ import annotations

import math
import os
import stat

from jaxviz.errors import JaxvizError, show
from jaxviz.io.files import check_regular, open_regular

MAX_ONNX_BYTES = 4 << 30  # the .onnx file itself (protobuf's own limit is 2 GiB)
MAX_EXTERNAL_BYTES = 16 << 30  # all external tensor data together
MAX_DEPTH = 24  # message nesting (a graph in an attribute in a node in a graph ... is refused later anyway)
MAX_FIELDS = 50_000_000

# TensorProto.DataType -> bytes per element (strings: no fixed size)
ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
            17: 1, 18: 1, 19: 1, 20: 1, 21: 0.5, 22: 0.5, 23: 0.5}

# Which fields of which message are messages (field number -> message kind), for the pre-scan.
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _VALUEINFO, _FUNC, _TRAINING, _OTHER = range(10)
_SUB = {
    _MODEL: {7: _GRAPH, 25: _FUNC, 20: _TRAINING, 8: _OTHER, 14: _OTHER},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE, 11: _VALUEINFO, 12: _VALUEINFO, 13: _VALUEINFO, 14: _OTHER},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE, 14: _OTHER, 15: _OTHER},
    _FUNC: {7: _NODE, 6: _ATTR},
    _TRAINING: {1: _GRAPH, 3: _GRAPH, 2: _OTHER, 4: _OTHER},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {13: _OTHER, 3: _OTHER},
    _VALUEINFO: {2: _OTHER},
}


def _bad(path: str, why: str) -> JaxvizError:
    return JaxvizError(f"cannot read ONNX file {show(path)}: {why}")


def _varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("a truncated or overlong varint")
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, i
        shift += 7


def _count_varints(buf: bytes, i: int, end: int) -> int:
    return sum(1 for k in range(i, end) if not buf[k] & 0x80)


def prescan(buf: bytes, path: str = "<bytes>") -> None:
    """Refuse ``buf`` (a serialised ``ModelProto``) unless its wire format is well-formed and bounded: see
    the module docstring. Raises a one-line :class:`JaxvizError`."""
    fields = [0]
    try:
        _scan(buf, 0, len(buf), _MODEL, 0, fields)
    except ValueError as e:
        raise _bad(path, f"{e}; the file is truncated, damaged or not ONNX") from None


def _scan(buf: bytes, i: int, end: int, kind: int, depth: int, fields: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"messages nested more than {MAX_DEPTH} deep")
    sub = _SUB.get(kind, {})
    tensor = {} if kind == _TENSOR else None
    while i < end:
        fields[0] += 1
        if fields[0] > MAX_FIELDS:
            raise ValueError(f"more than {MAX_FIELDS:,} protobuf fields")
        key, i = _varint(buf, i, end)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ValueError("a field numbered 0")
        if wire == 0:
            v, i = _varint(buf, i, end)
            if tensor is not None:
                if num == 1:
                    tensor.setdefault("dims", []).append(v)
                elif num == 2:
                    tensor["dtype"] = v
                elif num == 14:
                    tensor["external"] = v == 1
                elif num in (5, 7, 11):
                    tensor["held"] = tensor.get("held", 0) + 1
        elif wire == 1:
            if end - i < 8:
                raise ValueError("a 64-bit field past the end of its message")
            i += 8
            if tensor is not None and num == 10:
                tensor["held"] = tensor.get("held", 0) + 1
        elif wire == 5:
            if end - i < 4:
                raise ValueError("a 32-bit field past the end of its message")
            i += 4
            if tensor is not None and num == 4:
                tensor["held"] = tensor.get("held", 0) + 1
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if n > end - i:
                raise ValueError(f"a field declares {n:,} bytes where {end - i:,} remain")
            if num in sub:
                if sub[num] != _OTHER:
                    _scan(buf, i, i + n, sub[num], depth + 1, fields)
            elif tensor is not None:
                if num == 1:  # packed dims
                    j = i
                    while j < i + n:
                        d, j = _varint(buf, j, i + n)
                        tensor.setdefault("dims", []).append(d)
                elif num == 9:
                    tensor["raw"] = tensor.get("raw", 0) + n
                elif num == 4:
                    tensor["held"] = tensor.get("held", 0) + n // 4
                elif num == 10:
                    tensor["held"] = tensor.get("held", 0) + n // 8
                elif num in (5, 7, 11):
                    tensor["held"] = tensor.get("held", 0) + _count_varints(buf, i, i + n)
                elif num == 6:
                    tensor["held"] = tensor.get("held", 0) + 1
                    tensor["strings"] = True
            i += n
        else:
            raise ValueError(f"an unknown wire type {wire}")
    if i != end:
        raise ValueError("a field runs past the end of its message")
    if tensor is not None:
        _check_tensor(tensor)


def _check_tensor(t: dict) -> None:
    dims = t.get("dims", [])
    for d in dims:
        if d >= 2 ** 62:  # a negative int64 or an overflow
            raise ValueError(f"a tensor dimension out of range ({d})")
    count = math.prod(dims)
    if count > 2 ** 40:
        raise ValueError(f"a tensor of {count:,} elements")
    if t.get("external") or t.get("strings"):
        return
    dtype = t.get("dtype", 0)
    size = ITEMSIZE.get(dtype)
    if size is None:
        if count and (t.get("raw") or t.get("held")):
            raise ValueError(f"a tensor of unsupported data type {dtype}")
        return
    if "raw" in t:
        want = math.ceil(count * size)
        if t["raw"] != want:
            raise ValueError(f"a tensor declares {list(dims)} x {size} bytes = {want:,} bytes but holds {t['raw']:,}")
    elif "held" in t or count:
        want = count * (2 if dtype in (14, 15) else 1)
        if dtype in (21, 22, 23):
            want = math.ceil(count / 2)
        if t.get("held", 0) != want:
            raise ValueError(f"a tensor declares {count:,} elements of {list(dims)} but holds {t.get('held', 0):,}")


def _external_file(folder: str, location: str, path: str, tensor: str) -> str:
    """The path of external data ``location`` if it is a regular file inside ``folder`` reached through no
    symbolic link; else a one-line error."""
    where = f"tensor {show(repr(tensor), 120)}'s external data {show(repr(location), 200)}"
    if not location or "\x00" in location or "\\" in location or os.path.isabs(location) or \
            location.startswith("/") or (len(location) > 1 and location[1] == ":"):
        raise _bad(path, f"{where} is not a plain relative path; external data must lie in the model's own folder")
    parts = location.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _bad(path, f"{where} leaves the model's folder or is not a plain path (no '..', '.', or empty parts)")
    cur = folder
    for p in parts:
        cur = os.path.join(cur, p)
        try:
            st = os.lstat(cur)
        except OSError:
            raise _bad(path, f"{where} is missing") from None
        if stat.S_ISLNK(st.st_mode):
            raise _bad(path, f"{where} goes through a symbolic link; jaxviz reads only regular files in the "
                             "model's folder")
    return cur


def _resolve_external(model, path: str) -> None:
    import onnx

    folder = os.path.dirname(os.path.abspath(path))
    total = 0
    tensors = list(model.graph.initializer)
    for n in model.graph.node:  # a Constant's tensor may name external data too
        for a in n.attribute:
            if a.HasField("t"):
                tensors.append(a.t)
            tensors.extend(a.tensors)
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            if t.external_data:
                raise _bad(path, f"tensor {show(repr(t.name), 120)} has external data entries but is not external")
            continue
        info = {}
        for e in t.external_data:
            if e.key in info:
                raise _bad(path, f"tensor {show(repr(t.name), 120)} names its external {show(e.key, 40)} twice")
            info[e.key] = e.value
        unknown_keys = set(info) - {"location", "offset", "length", "checksum"}
        if unknown_keys:
            raise _bad(path, f"tensor {show(repr(t.name), 120)}'s external data has unknown key "
                             f"{show(sorted(unknown_keys)[0], 40)}")
        if t.raw_data:
            raise _bad(path, f"tensor {show(repr(t.name), 120)} has both external and inline data")
        size = ITEMSIZE.get(t.data_type)
        if size is None:
            raise _bad(path, f"tensor {show(repr(t.name), 120)} of data type {t.data_type} cannot be external")
        want = math.ceil(math.prod(t.dims) * size)
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else want
        except ValueError:
            raise _bad(path, f"tensor {show(repr(t.name), 120)}'s external offset or length is not a number") from None
        if offset < 0 or length != want:
            raise _bad(path, f"tensor {show(repr(t.name), 120)} declares {list(t.dims)} ({want:,} bytes) but its "
                             f"external data gives offset {offset:,}, length {length:,}")
        total += length
        if total > MAX_EXTERNAL_BYTES:
            raise _bad(path, f"external data over {MAX_EXTERNAL_BYTES >> 30} GiB")
        file = _external_file(folder, info.get("location", ""), path, t.name)
        with open_regular(file, "ONNX external data") as fh:
            have = os.fstat(fh.fileno()).st_size
            if offset + length > have:
                raise _bad(path, f"tensor {show(repr(t.name), 120)} reads bytes {offset:,}..{offset + length:,} of "
                                 f"{show(info['location'], 200)}, which has {have:,}")
            fh.seek(offset)
            data = fh.read(length)
        if len(data) != length:
            raise _bad(path, f"external data {show(info['location'], 200)} changed while it was read")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def read_onnx(path: "str | os.PathLike"):
    """The ``onnx.ModelProto`` of the file ``path``, every initialiser's bytes inside it (external data
    read from the model's own folder only) and checked against its dims and type. Raises a one-line
    :class:`JaxvizError` for anything else (see the module docstring)."""
    try:
        import onnx
    except ImportError:
        raise JaxvizError("reading ONNX files needs the onnx package: pip install 'jaxviz[onnx]'") from None
    path = os.fspath(path)
    check_regular(path, "ONNX file", MAX_ONNX_BYTES)
    with open_regular(path, "ONNX file", MAX_ONNX_BYTES) as fh:
        buf = fh.read(MAX_ONNX_BYTES + 1)
    prescan(buf, path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(buf)
    except Exception as e:  # google.protobuf.message.DecodeError, RecursionError
        raise _bad(path, f"not a valid protobuf ({type(e).__name__}: {show(e, 200)})") from None
    if not model.HasField("graph"):
        raise _bad(path, "it holds no graph; not an ONNX model")
    if model.graph.sparse_initializer:
        raise _bad(path, "sparse initialisers are not supported")
    _resolve_external(model, path)
    return model


def is_onnx_file(path: "str | os.PathLike") -> bool:
    """Whether ``path`` names an ONNX file (by its ``.onnx`` suffix; the content is checked on reading)."""
    return os.fspath(path).lower().endswith(".onnx")


def load_onnx_model(path: "str | os.PathLike", input_hw: tuple[int, int] | None = None):
    """``(model, params)`` of the ONNX file ``path``: :func:`read_onnx` then
    :func:`jaxviz.nn.onnx.from_onnx`; any failure is one :class:`JaxvizError` line."""
    from jaxviz.nn.onnx import from_onnx

    path = os.fspath(path)
    proto = read_onnx(path)
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        return from_onnx(proto, input_hw=input_hw, name=proto.graph.name or name)
    except JaxvizError as e:
        raise JaxvizError(f"{show(path)}: {e}") from e
    except Exception as e:  # a malformed graph the importer did not foresee; --debug shows it
        raise _bad(path, f"cannot import the graph ({type(e).__name__}: {show(e, 200)})") from e
