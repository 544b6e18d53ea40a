"""ONNX op handlers: one function per (op, first opset), dispatched on the model's default-domain opset.

A handler is ``handler(node, inputs, opset) -> list of outputs``; ``node`` is a :class:`Node` (op,
name, attributes as Python values). Values are NumPy arrays when static (initialisers that are not
float parameters, constants, shapes: folded with NumPy so shape arithmetic never reaches the traced
program) or JAX arrays. Every attribute a handler reads is listed in :data:`ATTRS`; any other
attribute on a node, or a value a handler does not implement, is refused with one line naming the op,
the node and the opset (:func:`refuse`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxviz.errors import JaxvizError, show

OPS: dict[str, list[tuple[int, Callable]]] = {}  # op -> [(since opset, handler)], ascending
ATTRS: dict[str, set[str]] = {}  # op -> attributes its handlers read


@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    opset: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


def refuse(node: Node, what: str) -> JaxvizError:
    return JaxvizError(f"ONNX op {node.op} (node {show(repr(node.name), 120)}, opset {node.opset}): {what}")


def register(op: str, since: int = 1, attrs: tuple[str, ...] = ()):
    def deco(fn):
        OPS.setdefault(op, []).append((since, fn))
        OPS[op].sort(key=lambda t: t[0])
        ATTRS.setdefault(op, set()).update(attrs)
        return fn
    return deco


def handler(node: Node) -> Callable:
    """The handler for ``node.op`` at ``node.opset``: the newest registered at or before it."""
    versions = OPS.get(node.op)
    if not versions:
        raise refuse(node, f"not supported; supported ops: {', '.join(sorted(OPS))}")
    older = [fn for since, fn in versions if since <= node.opset]
    if not older:
        raise refuse(node, f"not supported before opset {versions[0][0]}")
    extra = sorted(set(node.attrs) - ATTRS.get(node.op, set()))
    if extra:
        raise refuse(node, f"attribute {show(extra[0], 60)} is not supported")
    return older[-1]


def static(v) -> bool:
    return isinstance(v, (np.ndarray, np.generic))


def xp(*vals):
    """NumPy when every value is static (constant folding), else jax.numpy."""
    return np if all(static(v) for v in vals if v is not None) else jnp


def need_static(node: Node, v, what: str) -> np.ndarray:
    if v is None:
        return None
    if not static(v):
        raise refuse(node, f"{what} must be a constant (known when the graph is imported)")
    return np.asarray(v)


def ints(v) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _axis(node: Node, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise refuse(node, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


# ---------------------------------------------------------------------------------------------
# element-wise
def _unary(op, fn, since=1, attrs=()):
    @register(op, since, attrs)
    def h(node, ins, opset):
        x = ins[0]
        return [fn(xp(x), x, node)]
    return h


_unary("Identity", lambda m, x, n: x)
# traced ReLUs are looked up as jax.nn.relu at run time, so guided backprop (jaxviz.nn.guided) guides them
_unary("Relu", lambda m, x, n: m.maximum(x, m.zeros((), x.dtype)) if m is np else jax.nn.relu(x))
_unary("Sigmoid", lambda m, x, n: jax.nn.sigmoid(x))
_unary("Tanh", lambda m, x, n: m.tanh(x))
_unary("Sqrt", lambda m, x, n: m.sqrt(x))
_unary("Exp", lambda m, x, n: m.exp(x))
_unary("Log", lambda m, x, n: m.log(x))
_unary("Neg", lambda m, x, n: -x)
_unary("Abs", lambda m, x, n: m.abs(x))
_unary("Reciprocal", lambda m, x, n: 1 / x)
_unary("Floor", lambda m, x, n: m.floor(x))
_unary("Ceil", lambda m, x, n: m.ceil(x))
_unary("Not", lambda m, x, n: m.logical_not(x))
_unary("Erf", lambda m, x, n: jax.scipy.special.erf(x) if m is jnp else np.asarray(jax.scipy.special.erf(x)))
_unary("LeakyRelu", lambda m, x, n: jnp.where(x >= 0, x, x * n.attr("alpha", 0.01)), attrs=("alpha",))
_unary("HardSigmoid", lambda m, x, n: jnp.clip(x * n.attr("alpha", 0.2) + n.attr("beta", 0.5), 0, 1),
       attrs=("alpha", "beta"))
_unary("HardSwish", lambda m, x, n: x * jnp.clip(x / 6 + 0.5, 0, 1), since=14)
_unary("Elu", lambda m, x, n: jnp.where(x > 0, x, n.attr("alpha", 1.0) * jnp.expm1(x)), attrs=("alpha",))
_unary("Softplus", lambda m, x, n: jax.nn.softplus(x))
_unary("Mish", lambda m, x, n: x * jnp.tanh(jax.nn.softplus(x)), since=18)


@register("Gelu", 20, ("approximate",))
def _gelu(node, ins, opset):
    approx = node.attr("approximate", "none")
    if approx not in ("none", "tanh"):
        raise refuse(node, f"approximate={show(approx, 40)!r} is not supported (none, tanh)")
    return [jax.nn.gelu(ins[0], approximate=approx == "tanh")]


@register("PRelu", 1)
def _prelu(node, ins, opset):
    x, slope = ins
    return [jnp.where(x >= 0, x, x * slope)]


@register("Clip", 1, ("min", "max"))
def _clip6(node, ins, opset):
    lo, hi = node.attr("min", -np.inf), node.attr("max", np.inf)
    return [jnp.clip(ins[0], lo, hi)]


@register("Clip", 11)
def _clip11(node, ins, opset):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
    m = xp(x, lo, hi)
    if lo is not None:
        x = m.maximum(x, lo)
    if hi is not None:
        x = m.minimum(x, hi)
    return [x]


def _binary(op, fn, since=7):
    @register(op, since)
    def h(node, ins, opset):
        a, b = ins
        m = xp(a, b)
        if m is np:
            out = np.asarray(fn(np, a, b))
            return [out.astype(np.result_type(a, b)) if op != "Equal" else out]
        return [fn(jnp, a, b)]
    return h


def _div(m, a, b):
    if np.issubdtype(np.result_type(a.dtype, b.dtype), np.integer):
        return m.trunc(m.true_divide(a, b)).astype(np.result_type(a.dtype, b.dtype)) if m is np \
            else lax.div(*jnp.broadcast_arrays(a, b))
    return a / b


_binary("Add", lambda m, a, b: a + b)
_binary("Sub", lambda m, a, b: a - b)
_binary("Mul", lambda m, a, b: a * b)
_binary("Div", _div)
_binary("Pow", lambda m, a, b: m.power(a, b.astype(a.dtype) if hasattr(b, "astype") else b))
_binary("Equal", lambda m, a, b: a == b)
_binary("Less", lambda m, a, b: a < b)
_binary("Greater", lambda m, a, b: a > b)
_binary("And", lambda m, a, b: m.logical_and(a, b))
_binary("Or", lambda m, a, b: m.logical_or(a, b))
_binary("Max", lambda m, a, b: m.maximum(a, b))
_binary("Min", lambda m, a, b: m.minimum(a, b))


@register("Where", 9)
def _where(node, ins, opset):
    c, a, b = ins
    return [xp(c, a, b).where(c, a, b)]


@register("Softmax", 13, ("axis",))
def _softmax13(node, ins, opset):
    x = ins[0]
    return [jax.nn.softmax(x, axis=_axis(node, node.attr("axis", -1), x.ndim))]


@register("Softmax", 1, ("axis",))
def _softmax1(node, ins, opset):  # before 13: over the flattened axes from `axis` on
    x = ins[0]
    a = _axis(node, node.attr("axis", 1), x.ndim)
    flat = x.reshape(x.shape[:a] + (-1,))
    return [jax.nn.softmax(flat, axis=-1).reshape(x.shape)]


# ---------------------------------------------------------------------------------------------
# types, shapes, constants
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
           10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def np_dtype(node: Node, code: int):
    if code not in _DTYPES:
        raise refuse(node, f"tensor type {code} is not supported")
    return _DTYPES[code]


@register("Cast", 6, ("to", "saturate"))
def _cast(node, ins, opset):
    dt = np_dtype(node, node.attr("to"))
    x = ins[0]
    if static(x):
        return [np.asarray(x).astype(dt)]
    if dt == np.float64:
        dt = np.float32  # JAX runs float32 (x64 off)
    return [x.astype(dt)]


@register("Shape", 1, ("start", "end"))
def _shape(node, ins, opset):
    shape = np.array(ins[0].shape, np.int64)
    r = len(shape)
    start, end = node.attr("start", 0), node.attr("end", r)
    start, end = min(max(start + r if start < 0 else start, 0), r), min(max(end + r if end < 0 else end, 0), r)
    return [shape[start:end]]


@register("Size", 1)
def _size(node, ins, opset):
    return [np.array(int(np.prod(ins[0].shape)), np.int64)]


@register("Constant", 1, ("value", "value_float", "value_floats", "value_int", "value_ints"))
def _constant(node, ins, opset):
    for key, conv in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                      ("value_int", np.int64), ("value_ints", np.int64)):
        if key in node.attrs:
            v = node.attrs[key]
            return [np.asarray(v) if conv is None else np.asarray(v, conv)]
    raise refuse(node, "no value (sparse_value and string values are not supported)")


@register("ConstantOfShape", 9, ("value",))
def _constant_of_shape(node, ins, opset):
    shape = ints(need_static(node, ins[0], "the shape"))
    v = node.attr("value")
    v = np.zeros(1, np.float32) if v is None else np.asarray(v).reshape(-1)
    if any(s < 0 for s in shape):
        raise refuse(node, f"negative dimension in {shape}")
    return [np.full(shape, v[0], v.dtype)]


@register("Range", 11)
def _range(node, ins, opset):
    start, limit, delta = (need_static(node, v, "start, limit and delta") for v in ins)
    if delta == 0:
        raise refuse(node, "delta is 0")
    n = max(int(math.ceil((limit - start) / delta)), 0)
    return [(start + delta * np.arange(n)).astype(np.result_type(start))]


@register("Flatten", 1, ("axis",))
def _flatten(node, ins, opset):
    x = ins[0]
    a = node.attr("axis", 1)
    a = a + x.ndim if a < 0 else a
    lead = int(np.prod(x.shape[:a])) if a else 1
    return [x.reshape(lead, -1)]


@register("Reshape", 5, ("allowzero",))
def _reshape(node, ins, opset):
    x, shape = ins[0], ints(need_static(node, ins[1], "the target shape"))
    allowzero = node.attr("allowzero", 0)
    shape = [x.shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
    if shape.count(-1) > 1:
        raise refuse(node, f"several -1 in the shape {shape}")
    known = int(np.prod([s for s in shape if s != -1]))
    total = int(np.prod(x.shape))
    if -1 in shape:
        if known == 0 or total % known:
            raise refuse(node, f"cannot reshape {tuple(x.shape)} to {shape}")
        shape[shape.index(-1)] = total // known
    if int(np.prod(shape)) != total:
        raise refuse(node, f"cannot reshape {tuple(x.shape)} to {shape}")
    return [x.reshape(shape)]


@register("Transpose", 1, ("perm",))
def _transpose(node, ins, opset):
    x = ins[0]
    perm = node.attr("perm", list(range(x.ndim))[::-1])
    return [xp(x).transpose(x, perm)]


@register("Squeeze", 1, ("axes",))
def _squeeze1(node, ins, opset):
    return _squeeze(node, ins[0], node.attr("axes"))


@register("Squeeze", 13)
def _squeeze13(node, ins, opset):
    axes = need_static(node, ins[1], "axes") if len(ins) > 1 else None
    return _squeeze(node, ins[0], None if axes is None else ints(axes))


def _squeeze(node, x, axes):
    if axes is None:
        axes = [i for i, s in enumerate(x.shape) if s == 1]
    axes = [_axis(node, a, x.ndim) for a in axes]
    if any(x.shape[a] != 1 for a in axes):
        raise refuse(node, f"cannot squeeze axes {axes} of shape {tuple(x.shape)}")
    return [xp(x).squeeze(x, axis=tuple(axes)) if axes else x]


@register("Unsqueeze", 1, ("axes",))
def _unsqueeze1(node, ins, opset):
    return _unsqueeze(node, ins[0], node.attr("axes"))


@register("Unsqueeze", 13)
def _unsqueeze13(node, ins, opset):
    return _unsqueeze(node, ins[0], ints(need_static(node, ins[1], "axes")))


def _unsqueeze(node, x, axes):
    rank = x.ndim + len(axes)
    axes = sorted(_axis(node, a, rank) for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [x.reshape(shape)]


@register("Concat", 4, ("axis",))
def _concat(node, ins, opset):
    ins = [v for v in ins if v is not None]
    a = _axis(node, node.attr("axis"), ins[0].ndim)
    m = xp(*ins)
    if m is np:
        return [np.concatenate([np.asarray(v) for v in ins], axis=a)]
    return [jnp.concatenate([jnp.asarray(v) for v in ins], axis=a)]


@register("Split", 2, ("axis", "split"))
def _split2(node, ins, opset):
    return _split(node, ins[0], node.attr("split"))


@register("Split", 13, ("axis", "num_outputs"))
def _split13(node, ins, opset):
    sizes = need_static(node, ins[1], "split") if len(ins) > 1 and ins[1] is not None else None
    return _split(node, ins[0], None if sizes is None else ints(sizes))


def _split(node, x, sizes):
    a = _axis(node, node.attr("axis", 0), x.ndim)
    n = len(node.outputs)
    if sizes is None:
        k = node.attr("num_outputs", n)
        step = -(-x.shape[a] // k)
        sizes = [min(step, x.shape[a] - i * step) for i in range(k)]
    if sum(sizes) != x.shape[a] or len(sizes) != n:
        raise refuse(node, f"split {sizes} does not fit axis {a} of shape {tuple(x.shape)}")
    cuts = np.cumsum(sizes)[:-1]
    return list(xp(x).split(x, cuts, axis=a))


@register("Slice", 10)
def _slice10(node, ins, opset):
    x = ins[0]
    starts, ends = ints(need_static(node, ins[1], "starts")), ints(need_static(node, ins[2], "ends"))
    axes = ints(need_static(node, ins[3], "axes")) if len(ins) > 3 and ins[3] is not None else \
        list(range(len(starts)))
    steps = ints(need_static(node, ins[4], "steps")) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    return [_do_slice(node, x, starts, ends, axes, steps)]


@register("Slice", 1, ("starts", "ends", "axes"))
def _slice1(node, ins, opset):
    starts, ends = node.attr("starts"), node.attr("ends")
    return [_do_slice(node, ins[0], starts, ends, node.attr("axes", list(range(len(starts)))), [1] * len(starts))]


def _do_slice(node, x, starts, ends, axes, steps):
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(node, a, x.ndim)
        if st == 0:
            raise refuse(node, "a step of 0")
        d = x.shape[a]
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, -1), d - 1), min(max(e, -1), d - 1)
            e = None if e < 0 else e
        idx[a] = slice(s, e, st)
    return x[tuple(idx)]


@register("Gather", 1, ("axis",))
def _gather(node, ins, opset):
    x, i = ins
    a = _axis(node, node.attr("axis", 0), x.ndim)
    if static(i):
        i = np.asarray(i)
        if np.any((i < -x.shape[a]) | (i >= x.shape[a])):
            raise refuse(node, f"index out of range for axis {a} of size {x.shape[a]}")
        i = np.where(i < 0, i + x.shape[a], i)
        return [xp(x).take(x, i, axis=a)]
    i = jnp.where(i < 0, i + x.shape[a], i)
    return [jnp.take(x, i, axis=a, mode="clip")]


@register("Expand", 8)
def _expand(node, ins, opset):
    x, shape = ins[0], ints(need_static(node, ins[1], "the shape"))
    out = np.broadcast_shapes(tuple(x.shape), tuple(shape))
    return [xp(x).broadcast_to(x, out)]


@register("Tile", 6)
def _tile(node, ins, opset):
    return [xp(ins[0]).tile(ins[0], ints(need_static(node, ins[1], "repeats")))]


@register("Pad", 11, ("mode",))
def _pad11(node, ins, opset):
    x = ins[0]
    pads = ints(need_static(node, ins[1], "pads"))
    value = ins[2] if len(ins) > 2 and ins[2] is not None else None
    axes = ints(need_static(node, ins[3], "axes")) if len(ins) > 3 and ins[3] is not None else list(range(x.ndim))
    return [_pad(node, x, pads, value, axes)]


@register("Pad", 2, ("mode", "pads", "value"))
def _pad2(node, ins, opset):
    return [_pad(node, ins[0], node.attr("pads"), np.float32(node.attr("value", 0.0)), list(range(ins[0].ndim)))]


def _pad(node, x, pads, value, axes):
    mode = node.attr("mode", "constant")
    n = len(axes)
    width = [(0, 0)] * x.ndim
    for k, a in enumerate(axes):
        width[_axis(node, a, x.ndim)] = (pads[k], pads[k + n])
    if any(lo < 0 or hi < 0 for lo, hi in width):  # negative pads crop
        idx = tuple(slice(-lo if lo < 0 else 0, (x.shape[i] + hi) if hi < 0 else None)
                    for i, (lo, hi) in enumerate(width))
        x = x[idx]
        width = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    m = xp(x)
    if mode == "constant":
        v = 0 if value is None else (value.reshape(()) if hasattr(value, "reshape") else value)
        return m.pad(x, width, mode="constant", constant_values=v)
    if mode in ("reflect", "edge"):
        return m.pad(x, width, mode=mode)
    if mode == "wrap":
        return m.pad(x, width, mode="wrap")
    raise refuse(node, f"mode {show(mode, 40)!r} is not supported")


# ---------------------------------------------------------------------------------------------
# reductions
def _reduce(op, fn, axes_input_since):
    def run(node, x, axes):
        keep = bool(node.attr("keepdims", 1))
        if axes is None or len(axes) == 0:
            if node.attr("noop_with_empty_axes", 0) and axes is not None:
                return [x]
            axes = list(range(x.ndim))
        axes = tuple(sorted(_axis(node, a, x.ndim) for a in axes))
        return [fn(xp(x), x, axes, keep)]

    @register(op, 1, ("axes", "keepdims"))
    def old(node, ins, opset):
        return run(node, ins[0], node.attr("axes"))

    @register(op, axes_input_since, ("keepdims", "noop_with_empty_axes"))
    def new(node, ins, opset):
        axes = ints(need_static(node, ins[1], "axes")) if len(ins) > 1 and ins[1] is not None else None
        if axes is None and node.attr("noop_with_empty_axes", 0):
            return [ins[0]]
        return run(node, ins[0], axes)


_reduce("ReduceMean", lambda m, x, a, k: m.mean(x, axis=a, keepdims=k), 18)
_reduce("ReduceSum", lambda m, x, a, k: m.sum(x, axis=a, keepdims=k), 13)
_reduce("ReduceMax", lambda m, x, a, k: m.max(x, axis=a, keepdims=k), 18)
_reduce("ReduceMin", lambda m, x, a, k: m.min(x, axis=a, keepdims=k), 18)
_reduce("ReduceProd", lambda m, x, a, k: m.prod(x, axis=a, keepdims=k), 18)
_reduce("ReduceL2", lambda m, x, a, k: m.sqrt(m.sum(x * x, axis=a, keepdims=k)), 18)


# ---------------------------------------------------------------------------------------------
# dense
@register("MatMul", 1)
def _matmul(node, ins, opset):
    return [jnp.matmul(ins[0], ins[1])]


@register("Gemm", 1, ("alpha", "beta", "transA", "transB", "broadcast"))
def _gemm(node, ins, opset):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if node.attr("transA", 0):
        a = a.T
    if node.attr("transB", 0):
        b = b.T
    y = jnp.matmul(a, b)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


# ---------------------------------------------------------------------------------------------
# convolution and pooling (any number of spatial axes, channels-first as ONNX)
def _dims(rank: int):
    sp = "DHW"[-(rank - 2):] if rank <= 5 else None
    return ("NC" + sp, "OI" + sp, "NC" + sp)


def _pads(node: Node, spatial, kernel, strides, dilations, ceil=False):
    """``[(begin, end)]`` per spatial axis from ``pads``/``auto_pad`` (and ``ceil_mode``'s extra end)."""
    n = len(spatial)
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", ""):
        p = node.attr("pads", [0] * (2 * n))
        pads = [(p[i], p[i + n]) for i in range(n)]
    elif auto == "VALID":
        pads = [(0, 0)] * n
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for d, k, s, dl in zip(spatial, kernel, strides, dilations):
            out = -(-d // s)
            total = max(0, (out - 1) * s + (k - 1) * dl + 1 - d)
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    else:
        raise refuse(node, f"auto_pad {show(auto, 40)!r} is not supported")
    if ceil:
        out = []
        for (b, e), d, k, s, dl in zip(pads, spatial, kernel, strides, dilations):
            span = d + b + e - dl * (k - 1) - 1
            o = -(-span // s) + 1
            if (o - 1) * s >= d + b:  # the last window must start inside the input or its left pad
                o -= 1
            extra = max(0, (o - 1) * s + dl * (k - 1) + 1 - (d + b + e))
            out.append((b, e, extra))
        return out
    return [(b, e, 0) for b, e in pads]


def _window(node, x):
    n = x.ndim - 2
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides", [1] * n))
    dil = list(node.attr("dilations", [1] * n))
    pads = _pads(node, x.shape[2:], kernel, strides, dil, ceil=bool(node.attr("ceil_mode", 0)))
    return kernel, strides, dil, pads


@register("Conv", 1, ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"))
def _conv(node, ins, opset):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n = x.ndim - 2
    if n not in (1, 2, 3):
        raise refuse(node, f"{n} spatial axes (1 to 3 are supported)")
    ks = node.attr("kernel_shape")
    if ks is not None and list(ks) != list(w.shape[2:]):
        raise refuse(node, f"kernel_shape {list(ks)} differs from the weights' {list(w.shape[2:])}")
    strides = list(node.attr("strides", [1] * n))
    dil = list(node.attr("dilations", [1] * n))
    pads = _pads(node, x.shape[2:], w.shape[2:], strides, dil)
    y = lax.conv_general_dilated(x, w, strides, [(p[0], p[1]) for p in pads], rhs_dilation=dil,
                                 dimension_numbers=_dims(x.ndim), feature_group_count=node.attr("group", 1))
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * n)
    return [y]


@register("ConvTranspose", 1, ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad",
                               "output_padding", "output_shape"))
def _conv_transpose(node, ins, opset):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n = x.ndim - 2
    g = node.attr("group", 1)
    k = list(w.shape[2:])
    strides = list(node.attr("strides", [1] * n))
    dil = list(node.attr("dilations", [1] * n))
    opad = list(node.attr("output_padding", [0] * n))
    auto = node.attr("auto_pad", "NOTSET")
    oshape = node.attr("output_shape")
    if oshape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        if oshape is None:
            oshape = [d * s for d, s in zip(x.shape[2:], strides)]
        oshape = list(oshape)[-n:]
        pads = []
        for d, s, kk, dl, op, o in zip(x.shape[2:], strides, k, dil, opad, oshape):
            total = s * (d - 1) + op + ((kk - 1) * dl + 1) - o
            pads.append((total // 2, total - total // 2) if auto == "SAME_UPPER"
                        else (total - total // 2, total // 2))
    elif auto == "VALID":
        pads = [(0, 0)] * n
    elif auto in ("NOTSET", ""):
        p = node.attr("pads", [0] * (2 * n))
        pads = [(p[i], p[i + n]) for i in range(n)]
    else:
        raise refuse(node, f"auto_pad {show(auto, 40)!r} is not supported")
    cin, cout_g = w.shape[0], w.shape[1]
    # (Cin, Cout/g, k) -> (Cout, Cin/g, k), flipped: the transposed conv as a dilated-input conv
    wt = w.reshape((g, cin // g, cout_g) + tuple(k))
    wt = jnp.swapaxes(wt, 1, 2).reshape((g * cout_g, cin // g) + tuple(k))
    wt = jnp.flip(wt, axis=tuple(range(2, 2 + n)))
    padding = [(dl * (kk - 1) - pb, dl * (kk - 1) - pe + op) for (pb, pe), kk, dl, op in zip(pads, k, dil, opad)]
    y = lax.conv_general_dilated(x, wt, [1] * n, padding, lhs_dilation=strides, rhs_dilation=dil,
                                 dimension_numbers=_dims(x.ndim), feature_group_count=g)
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * n)
    return [y]


_POOL_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad")


@register("MaxPool", 1, _POOL_ATTRS + ("storage_order",))
def _maxpool(node, ins, opset):
    x = ins[0]
    if len(node.outputs) > 1:
        raise refuse(node, "the Indices output is not supported")
    kernel, strides, dil, pads = _window(node, x)
    init = -np.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    # a concrete NumPy identity, so that JAX picks its differentiable max-pool (a traced init is a generic
    # reduce_window, which has no reverse-mode rule)
    y = lax.reduce_window(x, np.array(init, x.dtype), lax.max, (1, 1, *kernel), (1, 1, *strides),
                          [(0, 0), (0, 0)] + [(b, e + ex) for b, e, ex in pads], window_dilation=(1, 1, *dil))
    return [y]


@register("AveragePool", 1, _POOL_ATTRS + ("count_include_pad",))
def _avgpool(node, ins, opset):
    x = ins[0]
    kernel, strides, dil, pads = _window(node, x)
    padding = [(0, 0), (0, 0)] + [(b, e + ex) for b, e, ex in pads]
    win, st, wd = (1, 1, *kernel), (1, 1, *strides), (1, 1, *dil)
    total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, win, st, padding, window_dilation=wd)
    spatial = x.shape[2:]
    if node.attr("count_include_pad", 0):  # explicit pads count, ceil_mode's extra end does not
        ones = jnp.ones(tuple(d + b + e for d, (b, e, _) in zip(spatial, pads)), x.dtype)
        cpad = [(0, ex) for _, _, ex in pads]
    else:
        ones = jnp.ones(spatial, x.dtype)
        cpad = [(b, e + ex) for b, e, ex in pads]
    count = lax.reduce_window(ones, np.array(0, x.dtype), lax.add, tuple(kernel), tuple(strides), cpad,
                              window_dilation=tuple(dil))
    return [total / count]


@register("GlobalAveragePool", 1)
def _gap(node, ins, opset):
    x = ins[0]
    return [jnp.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


@register("GlobalMaxPool", 1)
def _gmp(node, ins, opset):
    x = ins[0]
    return [jnp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


# ---------------------------------------------------------------------------------------------
# normalisation
@register("BatchNormalization", 1, ("epsilon", "momentum", "spatial", "training_mode", "is_test",
                                    "consumed_inputs"))
def _bn(node, ins, opset):
    if node.attr("training_mode", 0):
        raise refuse(node, "training_mode=1 (training-only) is not supported")
    if len([o for o in node.outputs if o]) > 1:
        raise refuse(node, "the running statistics outputs (training-only) are not supported")
    if node.attr("spatial", 1) != 1:
        raise refuse(node, "spatial=0 is not supported")
    x, scale, bias, mean, var = ins[:5]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = node.attr("epsilon", 1e-5)
    inv = scale.reshape(shape) * lax.rsqrt(var.reshape(shape) + jnp.float32(eps))
    return [(x - mean.reshape(shape)) * inv + bias.reshape(shape)]


@register("LayerNormalization", 17, ("axis", "epsilon", "stash_type"))
def _layernorm(node, ins, opset):
    x, scale = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    a = _axis(node, node.attr("axis", -1), x.ndim)
    axes = tuple(range(a, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    inv = lax.rsqrt(var + jnp.float32(node.attr("epsilon", 1e-5)))
    y = (x - mean) * inv * scale
    return [y + b if b is not None else y, mean, inv][:max(1, len(node.outputs))]


@register("InstanceNormalization", 6, ("epsilon",))
def _instnorm(node, ins, opset):
    x, scale, b = ins
    axes = tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return [(x - mean) * lax.rsqrt(var + node.attr("epsilon", 1e-5)) * scale.reshape(shape) + b.reshape(shape)]


@register("Dropout", 1, ("ratio", "seed", "is_test", "consumed_inputs"))
def _dropout(node, ins, opset):
    if len(ins) > 2 and ins[2] is not None:
        t = ins[2]
        if not static(t) or bool(np.asarray(t)):
            raise refuse(node, "training_mode (training-only) is not supported")
    outs = [ins[0]]
    if len(node.outputs) > 1 and node.outputs[1]:
        outs.append(np.ones(ins[0].shape, np.bool_))
    return outs


# ---------------------------------------------------------------------------------------------
# resize
def _source_coord(node, mode, out_idx, scale, d_in, d_out, roi=None):
    x = out_idx.astype(np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if d_out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (d_in - 1) / (d_out - 1) if d_out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "half_pixel_symmetric":
        adj = d_out / (scale * d_in)
        center = d_in / 2
        return center * (1 - adj) + (x + 0.5) / scale - 0.5
    raise refuse(node, f"coordinate_transformation_mode {show(mode, 40)!r} is not supported")


def _nearest(node, c, d_in):
    mode = node.attr("nearest_mode", "round_prefer_floor")
    if mode == "round_prefer_floor":
        i = np.where(c - np.floor(c) == 0.5, np.floor(c), np.round(c))
    elif mode == "round_prefer_ceil":
        i = np.where(c - np.floor(c) == 0.5, np.ceil(c), np.round(c))
    elif mode == "floor":
        i = np.floor(c)
    elif mode == "ceil":
        i = np.ceil(c)
    else:
        raise refuse(node, f"nearest_mode {show(mode, 40)!r} is not supported")
    return np.clip(i, 0, d_in - 1).astype(np.int32)


def _cubic_weights(t, a):
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _resize_matrix(node, mode, ctm, d_in, d_out, scale):
    """The (d_out, d_in) interpolation matrix of one axis (exact for nearest, linear and cubic, which
    ONNX Runtime computes axis by axis)."""
    c = _source_coord(node, ctm, np.arange(d_out), scale, d_in, d_out)
    m = np.zeros((d_out, d_in), np.float64)
    rows = np.arange(d_out)
    if mode == "nearest":
        m[rows, _nearest(node, c, d_in)] = 1
    elif mode == "linear":
        c = np.clip(c, 0, d_in - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, d_in - 1)
        f = c - lo
        np.add.at(m, (rows, lo), 1 - f)
        np.add.at(m, (rows, hi), f)
    elif mode == "cubic":
        a = node.attr("cubic_coeff_a", -0.75)
        base = np.floor(c).astype(int)
        taps = base[:, None] + np.arange(-1, 3)[None]
        w = _cubic_weights(c[:, None] - taps, a)
        if node.attr("exclude_outside", 0):
            w = np.where((taps >= 0) & (taps < d_in), w, 0)
            w = w / w.sum(1, keepdims=True)
        np.add.at(m, (np.repeat(rows, 4), np.clip(taps, 0, d_in - 1).reshape(-1)), w.reshape(-1))
    else:
        raise refuse(node, f"mode {show(mode, 40)!r} is not supported")
    return m.astype(np.float32)


@register("Resize", 11, ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                         "exclude_outside", "extrapolation_value", "antialias", "axes", "keep_aspect_ratio_policy"))
def _resize(node, ins, opset):
    x = ins[0]
    if node.attr("antialias", 0):
        raise refuse(node, "antialias=1 is not supported")
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise refuse(node, f"keep_aspect_ratio_policy {show(policy, 40)!r} is not supported")
    ctm = node.attr("coordinate_transformation_mode", "half_pixel")
    if ctm == "tf_crop_and_resize":
        raise refuse(node, "coordinate_transformation_mode tf_crop_and_resize is not supported")
    scales = need_static(node, ins[2], "scales") if len(ins) > 2 and ins[2] is not None else None
    sizes = need_static(node, ins[3], "sizes") if len(ins) > 3 and ins[3] is not None else None
    if scales is not None and scales.size == 0:
        scales = None
    axes = node.attr("axes", list(range(x.ndim)))
    axes = [_axis(node, a, x.ndim) for a in axes]
    if sizes is not None and sizes.size:
        sizes = ints(sizes)
        sc = [s / x.shape[a] for s, a in zip(sizes, axes)]
        outs = sizes
        if policy != "stretch":  # one scale for every axis, the output sizes rounded from it
            one = min(sc) if policy == "not_larger" else max(sc)
            sc = [one] * len(axes)
            outs = [int(math.floor(x.shape[a] * one + 0.5)) for a in axes]
    elif scales is not None:
        sc = [float(s) for s in scales.reshape(-1)]
        outs = [int(math.floor(x.shape[a] * s)) for a, s in zip(axes, sc)]
    else:
        raise refuse(node, "neither scales nor sizes given")
    mode = node.attr("mode", "nearest")
    y = x
    for a, s, o in zip(axes, sc, outs):
        if o == x.shape[a] and s == 1.0:
            continue
        if o < 1:
            raise refuse(node, f"output size {o} on axis {a}")
        m = _resize_matrix(node, mode, ctm, x.shape[a], o, s)
        if mode == "nearest":  # a gather, exact for any dtype
            y = jnp.take(y, jnp.asarray(m.argmax(1)), axis=a)
        else:
            y = jnp.moveaxis(jnp.tensordot(jnp.asarray(m), jnp.moveaxis(y, a, 0), axes=(1, 0),
                                           precision=lax.Precision.HIGHEST), 0, a)
    return [y]


@register("Upsample", 7, ("mode", "scales"))
def _upsample(node, ins, opset):
    """The deprecated Upsample (opsets 7-9; old Keras, Paddle and TorchScript exports): Resize with
    ``asymmetric`` coordinates and nearest rounding down (ONNX Runtime's rule), scales (each at least 1)
    from the attribute (opsets 7-8) or the second input (opset 9)."""
    x = ins[0]
    if opset >= 9 or node.attr("scales") is None:
        scales = need_static(node, ins[1] if len(ins) > 1 else None, "scales")
        if scales is None:
            raise refuse(node, "no scales given")
    else:
        scales = node.attr("scales")
    scales = np.asarray(scales, np.float64).reshape(-1)
    if scales.size != x.ndim or not (scales >= 1).all():
        raise refuse(node, f"scales {scales.tolist()} do not fit a rank-{x.ndim} input (each at least 1)")
    mode = node.attr("mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise refuse(node, f"mode {show(mode, 40)!r} is not supported")
    as_resize = dataclasses.replace(node, op="Resize", attrs={
        "mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"})
    return _resize(as_resize, [x, None, scales.astype(np.float32)], 11)


@register("Mod", 10, ("fmod",))
def _mod(node, ins, opset):
    """Integer remainder with the divisor's sign (``fmod=0``) or C's fmod (``fmod=1``, required for floats);
    torch's MultiheadAttention export computes head sizes with it."""
    a, b = ins
    m = xp(a, b)
    fmod = node.attr("fmod", 0)
    if not fmod and any(np.issubdtype(getattr(v, "dtype", np.float32), np.floating) for v in (a, b)):
        raise refuse(node, "fmod=0 on floating-point inputs is not defined")
    out = m.fmod(a, b) if fmod else m.mod(a, b)
    return [np.asarray(out).astype(np.result_type(a, b)) if m is np else out]


@register("Attention", 23, ("is_causal", "kv_num_heads", "q_num_heads", "qk_matmul_output_mode", "scale",
                            "softcap", "softmax_precision"))
def _attention(node, ins, opset):
    """Scaled dot-product attention (opset 23; torch's dynamo exporter writes it for
    ``F.scaled_dot_product_attention``): Q, K, V as B x heads x S x D, or B x S x (heads * D) with
    ``q_num_heads``/``kv_num_heads``; grouped K/V heads repeated; boolean (keep) or additive mask; causal;
    softcap. The KV-cache inputs and outputs are refused."""
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) > 3 else None
    if any(i is not None for i in ins[4:]) or any(o for o in node.outputs[1:]):
        raise refuse(node, "the KV cache (past/present key and value) and the qk_matmul output are not supported")
    three = q.ndim == 3
    if three:
        hq, hk = node.attr("q_num_heads"), node.attr("kv_num_heads")
        if not hq or not hk:
            raise refuse(node, "3-D inputs need q_num_heads and kv_num_heads")
        split = lambda t, h: jnp.transpose(t.reshape(t.shape[0], t.shape[1], h, -1), (0, 2, 1, 3))  # noqa: E731
        q, k, v = split(q, hq), split(k, hk), split(v, hk)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise refuse(node, f"inputs of rank {q.ndim}, {k.ndim}, {v.ndim} are not supported")
    if q.shape[1] != k.shape[1]:
        if q.shape[1] % k.shape[1]:
            raise refuse(node, f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key heads")
        rep = q.shape[1] // k.shape[1]
        k, v = jnp.repeat(k, rep, axis=1), jnp.repeat(v, rep, axis=1)
    scale = node.attr("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=lax.Precision.HIGHEST) * scale
    if node.attr("is_causal", 0):
        keep = np.tril(np.ones((s.shape[-2], s.shape[-1]), bool))  # aligned top-left, as the spec says
        s = jnp.where(keep, s, -jnp.inf)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf) if getattr(mask, "dtype", None) == np.bool_ else s + mask
    cap = float(node.attr("softcap", 0.0))
    if cap > 0:
        s = cap * jnp.tanh(s / cap)
    y = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v, precision=lax.Precision.HIGHEST)
    if three:
        y = jnp.transpose(y, (0, 2, 1, 3)).reshape(y.shape[0], y.shape[2], -1)
    return [y]
