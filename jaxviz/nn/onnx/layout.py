"""Which axes of each tensor of an ONNX graph are the image grid and which the channels (its *layout*),
found once per input size from the graph's ops and shapes; and which maps the output reads at their
grid positions.

A graph records no layout: a 4-D tensor of a channels-first export may be N x C x H x W (a conv's
output), N x H x W x C (inside ConvNeXt's LayerNorm, between two permutes) or no map at all (N x heads
x T x d inside an attention), and a ViT's maps are token tensors N x T x C. The layout is followed from
the input through the ops that keep it (convolutions and pools write N x C x H x W whatever they read;
elementwise ops, norms and per-position MatMuls keep their input's; the permutes between the two map
layouts; a flattened N x C x H x W map transposed, or an N x H x W x C map reshaped, to N x HW x C is
a *token grid*, and a Concat of extra tokens in front of one adds them as a prefix — a class token).
Every other tensor has no layout and is shown as it is.

A map layout is shown as N x H x W x C (:func:`view`; a token grid drops its prefix tokens and unflattens
the rest, as pytorch-grad-cam's ``reshape_transform`` for ViTs); a perturbation is given that way and
put back by :func:`unview` (zeros at the prefix tokens).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

Shape = tuple[int, ...]

# ops whose output is N x C x H x W by the ONNX definition, whatever layout their input had
CHANNELS_FIRST_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                      "BatchNormalization", "InstanceNormalization", "LpPool", "GlobalLpPool", "Upsample",
                      "DepthToSpace", "SpaceToDepth", "LRN"}
# ops that keep each position's value apart (the output at a position reads the inputs at that position
# only): through them the grid positions of the input are read exactly where the output's are
POSITIONWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Relu", "Gelu", "Sigmoid", "Tanh", "HardSwish",
                "HardSigmoid", "LeakyRelu", "PRelu", "Clip", "Elu", "Softplus", "Mish", "Identity", "Dropout",
                "Cast", "Transpose", "Reshape", "Flatten", "Concat", "LayerNormalization", "Neg", "Abs", "Exp",
                "Log", "Reciprocal", "Where", "Max", "Min", "BatchNormalization"}
NO_LAYOUT_CHANGE_SHAPE = {"Gather", "GatherElements", "Squeeze", "Unsqueeze", "Expand", "Tile", "Shape", "Size",
                          "ConstantOfShape", "Range", "Constant"}


@dataclasses.dataclass(frozen=True)
class Layout:
    """``kind``: ``cf`` (N x C x H x W), ``cl`` (N x H x W x C), ``tokens`` (N x (prefix + h*w) x C, the
    grid row-major), ``flat`` (N x C x h*w: a flattened channels-first map, on its way to tokens)."""

    kind: str
    h: int = 0
    w: int = 0
    prefix: int = 0

    @property
    def is_map(self) -> bool:
        return self.kind in ("cf", "cl", "tokens")


def _grid(lay: Layout | None, shape: Shape) -> tuple[int, int] | None:
    if lay is None or not lay.is_map:
        return None
    if lay.kind == "cf":
        return tuple(shape[2:4])
    if lay.kind == "cl":
        return tuple(shape[1:3])
    return (lay.h, lay.w)


def _inherit(lay: Layout | None, in_shape: Shape, out_shape: Shape) -> Layout | None:
    """``lay`` for an output of the same rank whose grid (and token count) the op kept."""
    if lay is None or len(in_shape) != len(out_shape):
        return None
    if lay.kind == "tokens" and out_shape[1] != in_shape[1]:
        return None
    if lay.kind == "flat" and out_shape[2] != in_shape[2]:
        return None
    return lay


def infer(nodes: Sequence, shapes: Mapping[str, Shape], statics: Mapping[str, np.ndarray], input_name: str,
          input_layout: str | None, weights: set[str]) -> dict[str, Layout]:
    """``{tensor: Layout}`` of the tensors that have one (see the module docstring). ``shapes``: every
    tensor's shape for a batch of 1; ``statics``: the tensors known at import; ``weights``: parameters
    and constants (a MatMul by one of them is per position)."""
    lay: dict[str, Layout] = {}
    if input_layout and len(shapes.get(input_name, ())) == 4:
        lay[input_name] = Layout(input_layout)
    for node in nodes:
        ins = [(i, lay.get(i), shapes.get(i)) for i in node.inputs if i]
        first = ins[0] if ins else (None, None, None)
        for o in node.outputs:
            if not o or o not in shapes or o in statics:
                continue
            out = _one(node, ins, first, shapes[o], statics, weights)
            if out is not None:
                lay[o] = out
    return lay


def _one(node, ins, first, out_shape: Shape, statics, weights) -> Layout | None:
    _, l0, s0 = first
    op, rank = node.op, len(out_shape)
    if op in CHANNELS_FIRST_OPS:
        return Layout("cf") if rank == 4 else None
    if l0 is None and op not in ("Concat",) and op not in POSITIONWISE:
        return None
    if op == "Transpose":
        if s0 is None:
            return None
        perm = list(node.attrs["perm"]) if "perm" in node.attrs else list(range(len(s0)))[::-1]
        if perm == list(range(len(perm))):
            return l0
        if l0 is not None and l0.kind == "cf" and perm == [0, 2, 3, 1]:
            return Layout("cl")
        if l0 is not None and l0.kind == "cl" and perm == [0, 3, 1, 2]:
            return Layout("cf")
        if l0 is not None and l0.kind == "flat" and perm == [0, 2, 1]:
            return Layout("tokens", l0.h, l0.w, 0)
        return None
    if op in ("Reshape", "Flatten"):
        if l0 is None:
            return None
        if tuple(out_shape) == tuple(s0):
            return l0
        if l0.kind == "cf" and rank == 3 and tuple(out_shape) == (s0[0], s0[1], s0[2] * s0[3]):
            return Layout("flat", s0[2], s0[3])
        if l0.kind == "cl" and rank == 3 and tuple(out_shape) == (s0[0], s0[1] * s0[2], s0[3]):
            return Layout("tokens", s0[1], s0[2], 0)
        return None
    if op == "Concat":
        axis = int(node.attrs.get("axis", 0)) % max(rank, 1)
        maps = [(k, l, s) for k, (_, l, s) in enumerate(ins) if l is not None and l.is_map]
        if not maps:
            return None
        if rank == 3 and axis == 1 and len(maps) == 1 and maps[0][1].kind == "tokens" and maps[0][0] == len(ins) - 1:
            extra = sum(s[1] for _, _, s in ins[:-1])
            t = maps[0][1]
            return Layout("tokens", t.h, t.w, t.prefix + extra)
        kinds = {l.kind for _, l, _ in maps}
        if len(maps) == len(ins) and len(kinds) == 1:
            k = kinds.pop()
            if (k == "cf" and axis == 1) or (k in ("cl", "tokens") and axis == rank - 1):
                return maps[0][1]
        return None
    if op in NO_LAYOUT_CHANGE_SHAPE:
        return None
    if op in ("Slice", "Split"):
        if l0 is None or not l0.is_map:
            return None
        if l0.kind == "tokens":
            return l0 if tuple(out_shape[:2]) == tuple(s0[:2]) else None
        return _inherit(l0, s0, out_shape)
    if op in ("MatMul", "Gemm"):
        # per position when the second factor is a weight and the first's last axis is the channels
        if l0 is not None and l0.kind in ("cl", "tokens") and len(node.inputs) > 1 and node.inputs[1] in weights \
                and tuple(out_shape[:-1]) == tuple(s0[:-1]):
            return l0
        return None
    if op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin") and not node.attrs.get("keepdims", 1):
        return None
    if op in ("Resize", "Pad") and l0 is not None and l0.kind in ("cf", "cl") and rank == 4:
        return l0
    # elementwise and the rest: the layout of a map input of the output's very shape
    for _, l, s in ins:
        if l is not None and s is not None and tuple(s) == tuple(out_shape):
            return l
    if l0 is not None and s0 is not None and op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                                                     "LayerNormalization", "Softmax", "LogSoftmax"):
        return _inherit(l0, s0, out_shape)
    return None


def _selects_prefix(node, value: str, lay: Layout, statics, constants) -> bool:
    """Whether ``node`` reads only prefix tokens (a class token) of the token tensor ``value``."""
    def const(name):
        if not name:
            return None
        v = statics.get(name, constants.get(name))
        return None if v is None else np.asarray(v).reshape(-1)

    if node.inputs[0] != value or lay.prefix == 0:
        return False
    if node.op == "Gather" and int(node.attrs.get("axis", 0)) == 1:
        idx = const(node.inputs[1])
        return idx is not None and idx.size > 0 and bool(((idx >= 0) & (idx < lay.prefix)).all())
    if node.op == "Slice":
        if "starts" in node.attrs:  # opset < 10
            starts, ends = node.attrs["starts"], node.attrs["ends"]
            axes = node.attrs.get("axes", list(range(len(starts))))
        else:
            starts, ends = const(node.inputs[1]), const(node.inputs[2])
            axes = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
            if starts is None or ends is None:
                return False
            axes = list(range(len(starts))) if axes is None else axes
            steps = const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else None
            if steps is not None and any(s != 1 for s in steps):
                return False
        for a, s, e in zip(axes, starts, ends):
            if int(a) % 3 == 1:
                return 0 <= int(s) and 0 < int(e) <= lay.prefix
        return False
    return False


def grid_read(nodes: Sequence, lay: Mapping[str, Layout], shapes: Mapping[str, Shape], statics, constants,
              outputs: Sequence[str], weights: set[str]) -> set[str]:
    """The map tensors whose grid positions the outputs read (backwards from the outputs): a map read
    only through a class-token Gather or Slice (a ViT's last maps, of which the head reads the class
    token), or only by per-position ops whose outputs are not read at their grid, is left out."""
    live = set(outputs)
    grid = {o for o in outputs if o in lay and lay[o].is_map}
    for node in reversed(list(nodes)):
        outs = [o for o in node.outputs if o and o in live]
        if not outs:
            continue
        live.update(i for i in node.inputs if i)
        for v in node.inputs:
            if not v or v not in lay or not lay[v].is_map or v in grid:
                continue
            if lay[v].kind == "tokens" and _selects_prefix(node, v, lay[v], statics, constants):
                continue
            per_position = node.op in POSITIONWISE or (
                node.op in ("MatMul", "Gemm") and len(node.inputs) > 1 and node.inputs[1] in weights
                and node.inputs[0] == v)
            g = _grid(lay[v], shapes[v])
            same = [o for o in outs if _grid(lay.get(o), shapes.get(o, ())) == g]
            if per_position and same:
                if any(o in grid for o in same):
                    grid.add(v)
            else:
                grid.add(v)
    return grid


def view_shape(lay: Layout | None, shape: Shape) -> Shape:
    """The shape (with batch) a tensor of ``shape`` is shown in."""
    if lay is None or not lay.is_map:
        return tuple(shape)
    if lay.kind == "cf":
        return (shape[0], *shape[2:], shape[1])
    if lay.kind == "cl":
        return tuple(shape)
    return (shape[0], lay.h, lay.w, shape[2])


def view(lay: Layout | None, v):
    """A graph tensor as shown: maps N x H x W x C (see the module docstring), others unchanged (a NumPy
    array stays one)."""
    if lay is None or not lay.is_map or getattr(v, "ndim", 0) < 3:
        return v
    if lay.kind == "cf":
        return (np if isinstance(v, np.ndarray) else jnp).moveaxis(v, 1, -1)
    if lay.kind == "cl":
        return v
    return v[:, lay.prefix:, :].reshape(v.shape[0], lay.h, lay.w, v.shape[-1])


def unview(lay: Layout | None, d):
    """A perturbation given as :func:`view` shows the tensor, in the graph's layout (zeros at prefix tokens)."""
    if lay is None or not lay.is_map or getattr(d, "ndim", 0) < 3:
        return d
    if lay.kind == "cf":
        return jnp.moveaxis(d, -1, 1)
    if lay.kind == "cl":
        return d
    n, c = d.shape[0], d.shape[-1]
    return jnp.concatenate([jnp.zeros((n, lay.prefix, c), d.dtype), d.reshape(n, lay.h * lay.w, c)], axis=1)
