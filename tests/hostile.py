"""PyTorch ``.pth`` files written opcode by opcode, without torch, so that tests can put anything in
them: any storage key, element count, offset, size and stride, through every rebuild path the
restricted reader admits (``_rebuild_tensor_v2``, ``_rebuild_tensor``, ``_rebuild_parameter``), in
the zip layout (``torch.save`` since 1.6) and the legacy one (magic number, protocol, system info,
the pickle, the storage list, then each storage as an int64 element count and its bytes).

    s = Storage.of("0", np.arange(4, dtype=np.float32))
    write_zip(path, {"w": Tensor(s, 0, (4,), (-2**40,))})
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
KINDS = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
         np.dtype(np.int64): "LongStorage", np.dtype(np.float16): "HalfStorage", np.dtype(np.uint8): "ByteStorage"}


@dataclasses.dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclasses.dataclass(frozen=True)
class Call:
    """``fn(*args)`` in the pickle (GLOBAL, the argument tuple, REDUCE)."""
    fn: Global
    args: tuple


@dataclasses.dataclass(frozen=True)
class Raw:
    """Opcodes spliced in as they are; must leave exactly one object on the stack."""
    opcodes: bytes


@dataclasses.dataclass(frozen=True)
class Storage:
    key: Any
    kind: Any = "FloatStorage"  # a name in torch (written as a GLOBAL), or any object to write as is
    numel: Any = 0
    data: bytes = b""
    view: Any = "absent"  # legacy persistent ids have a sixth item, view metadata (None)

    @staticmethod
    def of(key: str, a: np.ndarray) -> "Storage":
        a = np.array(a, order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
        return Storage(key, KINDS[a.dtype], a.size, a.astype(a.dtype.newbyteorder("<")).tobytes())


@dataclasses.dataclass(frozen=True)
class Tensor:
    storage: Any
    offset: Any
    size: Any
    stride: Any
    rebuild: str = "v2"  # "v2" (_rebuild_tensor_v2), "v1" (_rebuild_tensor), "param" (_rebuild_parameter of v2)


def tensor_of(key: str, a: np.ndarray, rebuild: str = "v2") -> Tensor:
    """A well-formed tensor holding ``a`` (C order) in storage ``key``."""
    a = np.array(a, order="C")
    return Tensor(Storage.of(key, a), 0, a.shape, tuple(st // a.itemsize for st in a.strides), rebuild)


def _emit(obj: Any, out: bytearray, legacy: bool) -> None:
    op = pickle
    if isinstance(obj, Raw):
        out += obj.opcodes
    elif obj is None:
        out += op.NONE
    elif obj is True or obj is False:
        out += op.NEWTRUE if obj else op.NEWFALSE
    elif isinstance(obj, int):
        if -2**31 <= obj < 2**31:
            out += op.BININT + struct.pack("<i", obj)
        else:
            b = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out += op.LONG1 + bytes([len(b)]) + b if len(b) < 256 else op.LONG4 + struct.pack("<i", len(b)) + b
    elif isinstance(obj, float):
        out += op.BINFLOAT + struct.pack(">d", obj)
    elif isinstance(obj, str):
        b = obj.encode()
        out += op.BINUNICODE + struct.pack("<I", len(b)) + b
    elif isinstance(obj, tuple):
        out += op.MARK
        for v in obj:
            _emit(v, out, legacy)
        out += op.TUPLE
    elif isinstance(obj, list):
        out += op.EMPTY_LIST + op.MARK
        for v in obj:
            _emit(v, out, legacy)
        out += op.APPENDS
    elif isinstance(obj, dict):
        if isinstance(obj, collections.OrderedDict):
            _emit(Call(Global("collections", "OrderedDict"), ()), out, legacy)
        else:
            out += op.EMPTY_DICT
        out += op.MARK
        for k, v in obj.items():
            _emit(k, out, legacy)
            _emit(v, out, legacy)
        out += op.SETITEMS
    elif isinstance(obj, Global):
        out += op.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
    elif isinstance(obj, Call):
        _emit(obj.fn, out, legacy)
        _emit(tuple(obj.args), out, legacy)
        out += op.REDUCE
    elif isinstance(obj, Storage):
        kind = Global("torch", obj.kind) if isinstance(obj.kind, str) else obj.kind
        pid = ("storage", kind, obj.key, "cpu", obj.numel)
        if obj.view != "absent" or legacy:
            pid += (None if obj.view == "absent" else obj.view,)
        _emit(pid, out, legacy)
        out += op.BINPERSID
    elif isinstance(obj, Tensor):
        v2 = Call(Global("torch._utils", "_rebuild_tensor_v2"),
                  (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict()))
        if obj.rebuild == "v1":
            _emit(Call(Global("torch._utils", "_rebuild_tensor"), (obj.storage, obj.offset, obj.size, obj.stride)),
                  out, legacy)
        elif obj.rebuild == "param":
            _emit(Call(Global("torch._utils", "_rebuild_parameter"), (v2, True, collections.OrderedDict())),
                  out, legacy)
        else:
            _emit(v2, out, legacy)
    else:
        raise TypeError(f"cannot emit {type(obj).__name__}")


def dumps(obj: Any, legacy: bool = False, prefix: bytes = b"") -> bytes:
    """Protocol-2 pickle of ``obj``; ``prefix``: opcodes run first (they must leave the stack empty)."""
    out = bytearray(pickle.PROTO + b"\x02" + prefix)
    _emit(obj, out, legacy)
    return bytes(out + pickle.STOP)


def storages_in(obj: Any) -> dict:
    """``{key: Storage}`` of every storage ``obj`` refers to, in first-use order."""
    found: dict = {}

    def walk(o: Any) -> None:
        if isinstance(o, Storage):
            found.setdefault(o.key, o)
        elif isinstance(o, Tensor):
            walk(o.storage)
        elif isinstance(o, Call):
            walk(o.args)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return found


def write_zip(path, obj: Any, *, data: "dict | None" = None, root: str = "archive", prefix: bytes = b"",
              byteorder: str = "little") -> None:
    """``torch.save``'s zip layout (members stored, not deflated, as torch writes them). ``data``:
    ``{key: bytes}`` of the storage members, default each storage's own bytes (a key mapped to None is
    left out)."""
    data = {str(k): s.data for k, s in storages_in(obj).items()} if data is None else data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", dumps(obj, prefix=prefix))
        z.writestr(f"{root}/byteorder", byteorder)
        for key, raw in data.items():
            if raw is not None:
                z.writestr(f"{root}/data/{key}", raw)
        z.writestr(f"{root}/version", "3\n")


def write_legacy(path, obj: Any, *, keys: "list | None" = None, counts: "dict | None" = None,
                 data: "dict | None" = None, prefix: bytes = b"") -> None:
    """The legacy layout; ``keys`` (default: every storage used), ``counts`` (element count written
    before a storage's bytes, default its numel) and ``data`` (its bytes) can be overridden."""
    stores = storages_in(obj)
    keys = list(stores) if keys is None else keys
    counts, data = counts or {}, data or {}
    out = bytearray()
    for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        out += pickle.dumps(header, protocol=2)
    out += dumps(obj, legacy=True, prefix=prefix)
    out += pickle.dumps(keys, protocol=2)
    for key in keys:
        s = stores.get(key)
        out += struct.pack("<q", counts.get(key, min(s.numel, 2**63 - 1) if s else 0))
        out += data.get(key, s.data if s else b"")
    with open(path, "wb") as f:
        f.write(out)


def write(path, layout: str, obj: Any, **kw) -> None:
    (write_zip if layout == "zip" else write_legacy)(path, obj, **kw)
