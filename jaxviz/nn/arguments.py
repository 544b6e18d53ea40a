"""The Python API's door: every public function checks its arguments here before any work, and its
errors name the Python argument (``x``, ``params``, ``classes``, ``layer``), never a CLI flag.

* ``x``, a batch: an array of rank 4 (N, H, W, C) with N >= 1; integer types (uint8 photos) are
  converted to float32 — the value is kept, so pass them already preprocessed —, bool and complex are
  refused, and every value must be finite;
* ``params``: a pytree the model can run: its structure and shapes are checked by an abstract pass
  (:func:`jax.eval_shape`, nothing computed); the first mismatching path is named with the expected
  and found shapes when the model tells its parameter shapes (``param_shapes``);
* class indices: integers (Python or numpy, not floats or bools) in ``0 .. n_classes - 1``;
* layer names: strings.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.nn.finite import all_finite
from jaxviz.errors import JaxvizError, show
from jaxviz.nn.protocol import Model


def check_batch(x: Any, name: str = "x") -> jax.Array:
    """``x`` as a float32 batch N x H x W x C (see the module docstring for what is refused)."""
    if isinstance(x, jax.core.Tracer):  # inside a user's jit: shape and dtype only
        if x.ndim != 4 or x.shape[0] < 1:
            raise JaxvizError(f"{name} must be a batch N x H x W x C with N >= 1, got shape {tuple(x.shape)}")
        return x.astype(jnp.float32)
    try:
        arr = np.asarray(x) if not isinstance(x, jax.Array) else x
    except Exception as e:  # ragged lists, objects
        raise JaxvizError(f"{name} must be an array N x H x W x C, got {type(x).__name__} ({show(e, 80)})") from None
    kind = arr.dtype.kind
    if kind not in "fiu":
        raise JaxvizError(f"{name} must hold numbers (float, or integers converted to float32), got dtype {arr.dtype}")
    if arr.ndim != 4:
        raise JaxvizError(f"{name} must be a batch N x H x W x C (rank 4), got shape {tuple(arr.shape)}; add a batch "
                          "axis with x[None]")
    if arr.shape[0] < 1 or min(arr.shape[1:]) < 1:
        raise JaxvizError(f"{name} is empty (shape {tuple(arr.shape)}); pass at least one image")
    arr = jnp.asarray(arr, jnp.float32)
    if not all_finite(arr):
        raise JaxvizError(f"{name} holds NaN or Inf values; every pixel must be finite")
    return arr


def check_layer(model: Model, layer: Any, name: str = "layer") -> str:
    """The layer behind ``layer`` (a string: a name or alias of ``model``)."""
    if not isinstance(layer, str):
        raise JaxvizError(f"{name} must be a layer name (str), got {type(layer).__name__} {show(repr(layer), 60)}; "
                          f"layers of {show(model.name)}: {show(', '.join(model.layer_names), 600)}")
    return model.resolve(layer)


def check_layers(model: Model, layers: Any, name: str = "layers") -> list[str] | None:
    """``layers`` (None, or a sequence of layer-name strings) resolved."""
    if layers is None:
        return None
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise JaxvizError(f"{name} must be a list of layer names, got {type(layers).__name__} "
                          f"{show(repr(layers), 60)}")
    if not layers:
        raise JaxvizError(f"{name} is empty; name at least one layer (or pass None for the default ones)")
    return [check_layer(model, l, f"{name}[{i}]") for i, l in enumerate(layers)]


def check_index(value: Any, n: int, name: str) -> int:
    """An integer in ``0 .. n - 1`` (a class or unit index)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise JaxvizError(f"{name} must be an integer index, got {type(value).__name__} {show(repr(value), 40)}")
    if not 0 <= int(value) < n:
        raise JaxvizError(f"{name} = {int(value)} is out of range: 0..{n - 1}")
    return int(value)


def check_indices(values: Any, n: int | None, name: str) -> np.ndarray:
    """An int64 array of ``values`` (an integer, or nested lists/arrays of integers), each in
    ``0 .. n - 1`` (``n`` None: any integers; the caller says the range); floats (``1.5``, even ``2.0``),
    bools and strings are refused, naming ``name``."""
    arr = np.asarray(values, dtype=object if not isinstance(values, np.ndarray) else None)
    flat = arr.reshape(-1)
    for v in flat:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)):
            raise JaxvizError(f"{name} must hold integer indices, got {type(v).__name__} {show(repr(v), 40)}")
    out = np.asarray(arr.astype(np.int64) if arr.dtype == object else arr, np.int64)
    flat_out = out.reshape(-1)
    bad = flat_out[(flat_out < 0) | (flat_out >= n)] if n is not None else flat_out[:0]
    if bad.size:
        raise JaxvizError(f"{name}: index {int(bad[0])} is out of range 0..{n - 1}")
    return out


def _leaves(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


_CHECKED: dict[Any, None] = {}  # (model, input shape, leaf paths and shapes) already accepted


def check_params(model: Model, params: Any, input_shape: Sequence[int] | None = None, name: str = "params") -> None:
    """Raise a :class:`JaxvizError` naming ``params`` unless the model can run with them: the first
    missing, extra or misshapen parameter is named where the model tells its parameter shapes;
    otherwise an abstract forward pass (no computation) must accept them. A structure accepted once
    for a model is not traced again."""
    try:
        key = (model, tuple(input_shape or ()), tuple((p, tuple(np.shape(v)), str(getattr(v, "dtype", type(v))))
                                                      for p, v in _leaves(params).items()))
        hash(key)
    except TypeError:  # an unhashable model: check every time
        key = None
    if key is not None and key in _CHECKED:
        return
    _check_params(model, params, input_shape, name)
    if key is not None:
        if len(_CHECKED) > 256:
            _CHECKED.clear()
        _CHECKED[key] = None


def _check_params(model: Model, params: Any, input_shape: Sequence[int] | None, name: str) -> None:
    if params is None or (isinstance(params, dict) and not params):
        raise JaxvizError(f"{name} is {'empty' if params is not None else 'None'}; pass the parameters of "
                          f"{show(model.name)} (e.g. model.init(key) or jaxviz.load_model(...).params)")
    spec = getattr(model, "param_shapes", None)
    if callable(spec):
        try:
            want = spec(input_shape)
        except TypeError:
            want = None
        if isinstance(want, dict):
            got = _leaves(params)
            expected = {jax.tree_util.keystr((jax.tree_util.DictKey(l), jax.tree_util.DictKey(p))): tuple(s)
                        for l, ps in want.items() for p, s in ps.items()}
            for path, shape in expected.items():
                found = got.get(path)
                if found is None:
                    raise JaxvizError(f"{name} do not fit {show(model.name)}: {show(path, 120)} is missing (expected "
                                      f"shape {shape})")
                if tuple(np.shape(found)) != shape:
                    raise JaxvizError(f"{name} do not fit {show(model.name)}: {show(path, 120)} expected shape {shape}, "
                                      f"found {tuple(np.shape(found))}")
            extra = [p for p in got if p not in expected]
            if extra:
                raise JaxvizError(f"{name} do not fit {show(model.name)}: unexpected {show(extra[0], 120)}")
            return
    shape = tuple(input_shape or model.input_shape)
    try:
        jax.eval_shape(lambda p: model.run(p, jnp.zeros((1, *shape), jnp.float32)).output, params)
    except JaxvizError:
        raise
    except Exception as e:  # Flax/JAX raise many types for a tree of another model
        raise JaxvizError(f"{name} do not fit {show(model.name)}: {type(e).__name__}: {show(e, 200)}") from None
