"""Receptive fields: which input pixels a position of a layer's grid can see.

For graphs jaxviz builds (the zoo, Keras files: :class:`jaxviz.nn.graph.Sequential`) the field is
analytic, from each layer's kernel size, strides, dilation and padding (TensorFlow's "same": the odd
pixel at the bottom/right), merged over the branches of residual blocks. For other models (adapted
Flax modules, :func:`jaxviz.adapt`), and for layers whose geometry is not a window (resizes,
transposed convolutions), it is measured once per layer and input size from the support of the
gradient of one grid position with respect to the input, through :meth:`Model.run` only.

A field is ``RF(size, stride, offset)`` per axis (rows, columns): grid position ``i`` sees input
pixels ``offset + i * stride`` up to (not including) ``offset + i * stride + size``; ``offset`` is
negative when the layer pads. :func:`field_box` clips that to the image.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.nn import policy
from jaxviz.errors import JaxvizError
from jaxviz.nn.protocol import Model, is_spatial
from jaxviz.nn.jit import jit

Pair = tuple[int, int]

# Layer kinds that act on each position alone (their field is their input's).
POINTWISE = ("act", "norm", "dropout", "identity", "input_transform")
# Layer kinds whose output sees the whole input.
GLOBAL = ("global_pool", "flatten", "dense", "reshape")


class RF(NamedTuple):
    """A receptive field per axis (rows, columns), in input pixels (see the module docstring).

    Attributes:
      size: pixels one grid position sees (before clipping to the image).
      stride: pixels between neighbouring grid positions.
      offset: the first pixel grid position 0 sees (negative inside the padding).
    """

    size: Pair
    stride: Pair
    offset: Pair


def _pair(v) -> Pair:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _window(layer, in_hw: Pair) -> tuple[Pair, Pair, Pair] | None:
    """``(effective kernel, stride, top/left padding)`` of a windowed layer, read from its public
    attributes; None when the layer is not a plain window (transposed convolution, resize)."""
    if hasattr(layer, "output_padding"):  # a transposed convolution: fractional stride
        return None
    if hasattr(layer, "kernel_size"):
        k, s, d = _pair(layer.kernel_size), _pair(getattr(layer, "strides", 1)), _pair(getattr(layer, "dilation", 1))
    elif hasattr(layer, "pool"):
        k = _pair(layer.pool)
        s = _pair(layer.strides) if getattr(layer, "strides", None) is not None else k
        d = (1, 1)
    else:
        return None
    ke = tuple((ki - 1) * di + 1 for ki, di in zip(k, d))
    padding = str(getattr(layer, "padding", "valid")).lower()
    if padding == "valid":
        pad = (0, 0)
    elif padding == "same":  # TensorFlow's: total padding split with the odd pixel at the end
        out = tuple(-(-n // si) for n, si in zip(in_hw, s))
        pad = tuple(max((o - 1) * si + kei - n, 0) // 2 for o, si, kei, n in zip(out, s, ke, in_hw))
    else:
        return None
    return ke, s, pad


def _through(rf: RF, ke: Pair, s: Pair, pad: Pair) -> RF:
    """The field after a window of ``ke`` pixels, stride ``s``, ``pad`` pixels padded before."""
    return RF(tuple(r + (k - 1) * j for r, k, j in zip(rf.size, ke, rf.stride)),
              tuple(j * si for j, si in zip(rf.stride, s)),
              tuple(o - p * j for o, p, j in zip(rf.offset, pad, rf.stride)))


def _union(fields: list[RF]) -> RF | None:
    if len({f.stride for f in fields}) != 1:
        return None
    lo = tuple(min(f.offset[a] for f in fields) for a in (0, 1))
    hi = tuple(max(f.offset[a] + f.size[a] for f in fields) for a in (0, 1))
    return RF(tuple(h - l for h, l in zip(hi, lo)), fields[0].stride, lo)


def _analytic(model: Model, layer: str, shape: tuple[int, ...]) -> RF | None:
    """The field from the graph's layers (a model that exposes ``sources`` and ``layer(name)``), or None."""
    sources = getattr(model, "sources", None)
    get = getattr(model, "layer", None)
    if not isinstance(sources, dict) or not callable(get):
        return None
    shapes = dict(model.shapes(shape, until=layer))
    start = getattr(model, "input_name", "")
    if start != "":  # a slice of a graph: its input is another layer's output
        return None
    shapes[start] = tuple(shape)
    whole = RF((shape[0], shape[1]), (shape[0], shape[1]), (0, 0))
    env: dict[str, RF | None] = {start: RF((1, 1), (1, 1), (0, 0))}
    for name in model.layer_names:
        if name not in shapes:
            continue
        if any(s not in env for s in sources[name]):
            return None
        ins = [env[s] for s in sources[name]]
        obj, kind = get(name), model.kind(name)
        if any(f is None for f in ins):
            env[name] = None
        elif not is_spatial(shapes[name]) or kind in GLOBAL or any(not is_spatial(shapes[s]) for s in sources[name]):
            env[name] = whole
        elif kind == "merge":
            env[name] = _union(ins)
        elif kind in POINTWISE:
            env[name] = ins[0]
        elif kind == "pad" and hasattr(obj, "padding"):
            (t, _), (l, _) = obj.padding
            env[name] = _through(ins[0], (1, 1), (1, 1), (int(t), int(l)))
        elif kind == "pad" and hasattr(obj, "cropping"):
            (t, _), (l, _) = obj.cropping
            env[name] = _through(ins[0], (1, 1), (1, 1), (-int(t), -int(l)))
        else:
            w = _window(obj, shapes[sources[name][0]][:2])
            env[name] = None if w is None else _through(ins[0], *w)
        if name == layer:
            break
    return env.get(layer)


_MEASURED: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def _support(model: Model, params: Any, layer: str, shape: tuple[int, ...], pos: Pair, key: jax.Array,
             samples: int) -> np.ndarray:
    """H x W bool: the input pixels with a nonzero gradient of the grid position ``pos`` (summed over
    channels) for any of ``samples`` random inputs."""
    def one(x):
        def f(x):
            return model.run(params, x[None], taps=[layer], output=False).taps[layer][0, pos[0], pos[1]].sum()

        return jnp.abs(jax.grad(f)(x)).sum(-1) > 0

    xs = jax.random.normal(key, (samples,) + tuple(shape), jnp.float32)
    return np.asarray(jit(jax.vmap(one))(xs).any(0))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _measure(model: Model, params: Any, layer: str, shape: tuple[int, ...], samples: int = 8) -> RF:
    """The field from the gradient's support at the grid's centre and its next position per axis."""
    grid = model.shapes(shape, until=layer)[-1][1]
    h, w = shape[0], shape[1]
    if not is_spatial(grid):
        return RF((h, w), (h, w), (0, 0))
    if params is None:
        params = policy.init(model, jax.random.key(0), shape)
    gh, gw = grid[0], grid[1]
    c = (gh // 2, gw // 2)
    nxt = (c[0] + 1 if c[0] + 1 < gh else c[0] - 1, c[1] + 1 if c[1] + 1 < gw else c[1] - 1)
    key = jax.random.key(1)
    centre = _bbox(_support(model, params, layer, shape, c, key, samples))
    if centre is None:
        raise JaxvizError(f"the receptive field of {layer} cannot be measured: the gradient of its centre is zero "
                          "for random inputs")
    stride = [h if gh == 1 else 0, w if gw == 1 else 0]
    if gh > 1 or gw > 1:
        other = _bbox(_support(model, params, layer, shape, (nxt[0], c[1]) if gh > 1 else c, key, samples))
        other2 = _bbox(_support(model, params, layer, shape, (c[0], nxt[1]), key, samples)) if gw > 1 else None
        if gh > 1 and other is not None:
            stride[0] = abs(other[0] - centre[0]) if other[0] != centre[0] else abs(other[2] - centre[2])
        if gw > 1 and other2 is not None:
            stride[1] = abs(other2[1] - centre[1]) if other2[1] != centre[1] else abs(other2[3] - centre[3])
    stride = [max(s, 1) for s in stride]
    offset = (centre[0] - c[0] * stride[0], centre[1] - c[1] * stride[1])
    return RF((centre[2] - centre[0], centre[3] - centre[1]), tuple(stride), offset)


def receptive_field(model: Model, layer: str, input_shape: Sequence[int] | None = None, *,
                    params: Any = None) -> RF:
    """The receptive field of ``layer`` for inputs of ``input_shape`` (H, W, C; default the model's).

    Analytic for graphs jaxviz builds; otherwise measured once per model, layer and input size from
    the gradient's support (``params``: the weights to measure with, default fresh ones). A
    non-spatial layer (dense, after a global pool) sees the whole input: ``RF((H, W), (H, W), (0, 0))``.
    """
    name = model.resolve(layer)
    shape = tuple(int(v) for v in (input_shape or model.input_shape))
    rf = _analytic(model, name, shape)
    if rf is not None:
        return rf
    try:
        cache = _MEASURED.setdefault(model, {})
    except TypeError:  # not weak-referenceable: measured every time
        cache = {}
    if (name, shape) not in cache:
        cache[(name, shape)] = _measure(model, params, name, shape)
    return cache[(name, shape)]


def field_boxes(rf: RF, peaks: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
    """Input-pixel boxes ``(top, left, bottom, right)`` (bottom/right exclusive, clipped to the image
    ``image_hw``) of grid positions ``peaks`` (... x 2: row, column); int32 ... x 4."""
    p = np.asarray(peaks, np.int64)
    top = rf.offset[0] + p[..., 0] * rf.stride[0]
    left = rf.offset[1] + p[..., 1] * rf.stride[1]
    h, w = int(image_hw[0]), int(image_hw[1])
    box = np.stack([np.clip(top, 0, h), np.clip(left, 0, w), np.clip(top + rf.size[0], 0, h),
                    np.clip(left + rf.size[1], 0, w)], -1)
    return box.astype(np.int32)


def field_box(rf: RF, row: int, col: int, image_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """The input-pixel box ``(top, left, bottom, right)`` of grid position (``row``, ``col``), clipped
    to the image (bottom/right exclusive)."""
    return tuple(int(v) for v in field_boxes(rf, np.array([row, col]), image_hw))
