"""Your own Flax model, as every capability sees a model: :func:`adapt` wraps a ``flax.nnx.Module`` or a
Linen module with its variables in the model protocol (:mod:`jaxviz.nn.protocol`).

Layers are the model's submodules, named by their dot-joined paths (``stem``, ``blocks.0``,
``blocks.0.conv1``, ``head``), each meaning that submodule's ``__call__`` output, listed in the order
they are first called. Taps and gradients work without editing the module: while jaxviz traces the
model it intercepts submodule calls (Linen: ``nn.intercept_methods``; NNX: the ``__call__`` of the
submodules' classes, for the instances of a fresh copy only), records the outputs asked for and adds
the perturbations asked for. Everything happens at trace time, so it works inside ``jit`` and ``vmap``.

A layer whose output is tokens (N, T, C) gets a spatial map through ``reshape`` (as pytorch-grad-cam's
``reshape_transform``): a linear function from the tokens to N x h x w x C, e.g. dropping a class
token and unflattening the grid. The gradient at the reshaped map is taken through its transpose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError, unknown
from jaxviz.nn import layers as L
from jaxviz.nn.protocol import Forward, Shape, is_spatial

Reshape = Callable[[jax.Array], jax.Array]

# Class-name patterns of common Flax (and user) layers -> kinds, checked in order.
_KIND_PATTERNS = (
    ("conv", r"conv"), ("pool", r"pool"), ("norm", r"norm"), ("dense", r"dense|linear|einsum"),
    ("dropout", r"dropout"), ("act", r"relu|gelu|silu|swish|sigmoid|tanh|activation|softmax"),
    ("embed", r"embed"), ("attention", r"attention"),
)


class _Stop(Exception):
    """Raised inside a trace once every layer asked for has returned: the rest is not traced."""


@dataclasses.dataclass(frozen=True)
class _Layers:
    names: tuple[str, ...]  # in the order of first call
    done: tuple[str, ...]  # the same names in the order their calls return
    kinds: dict[str, str]


def _kind_of(module: Any, has_children: bool) -> str:
    name = type(module).__name__.lower()
    for kind, pattern in _KIND_PATTERNS:
        if re.search(pattern, name):
            return kind
    return "block" if has_children else "other"


class _Adapted:
    """What the NNX and Linen adapters share: the protocol on top of one ``_trace`` per flavour."""

    def __init__(self, *, input_shape: Sequence[int], preprocessing: str, labels: str | None,
                 reshape: Reshape | Mapping[str, Reshape] | None, outputs: str, name: str):
        from jaxviz.nn.preprocess import PREPROCESSORS

        if preprocessing not in PREPROCESSORS:
            raise unknown("preprocessing", preprocessing, sorted(PREPROCESSORS))
        if outputs not in ("logits", "probabilities"):
            raise JaxvizError(f"outputs must be 'logits' or 'probabilities', got {outputs!r}")
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise JaxvizError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
        self.name, self.input_shape, self.preprocessing, self.labels = name, shape, preprocessing, labels
        self._reshape, self._outputs, self._guided = reshape, outputs, False
        self._shapes: dict[tuple, list[tuple[str, Shape]]] = {}
        self._layers = self._discover()

    # -- the flavour's part ----------------------------------------------------------------------
    def _trace(self, params: Any, x: jax.Array, on_call: Callable[[str, Any, Any], Any]) -> jax.Array:
        """Run the model; ``on_call(name, module, output)`` sees (and may replace) every named
        submodule's output. ``name`` is None for calls that are not layers (the root, re-entries)."""
        raise NotImplementedError

    def _children(self) -> dict[str, bool]:
        """``{layer name: has submodules}`` for every submodule."""
        raise NotImplementedError

    # -- discovery -------------------------------------------------------------------------------
    def _discover(self) -> _Layers:
        order, done, kinds = [], [], {}
        children = self._children()

        def on_call(name, module, y, entering=False):
            if entering:
                if name not in order:
                    order.append(name)
                    kinds[name] = _kind_of(module, children.get(name, False))
                return y
            if name not in done:
                done.append(name)
            return y

        x = jax.ShapeDtypeStruct((1,) + self.input_shape, jnp.float32)
        try:
            jax.eval_shape(lambda p, x: self._trace(p, x, on_call), self._params_for_trace(), x)
        except JaxvizError:
            raise
        except Exception as e:  # the user's module failed on an input of the declared shape
            raise JaxvizError(f"{self.name} cannot run on a 1x{'x'.join(map(str, self.input_shape))} batch: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        if not order:
            raise JaxvizError(f"{self.name} calls no submodules; jaxviz needs named layers to look inside it")
        return _Layers(tuple(order), tuple(done), kinds)

    def _params_for_trace(self) -> Any:
        return self.params

    # -- the protocol ----------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return list(self._layers.names)

    def resolve(self, name: str) -> str:
        if name not in self._layers.kinds:
            raise unknown("layer", name, self.layer_names, f" in {self.name}")
        return name

    def kind(self, name: str) -> str:
        return self._layers.kinds[self.resolve(name)]

    def _reshape_of(self, name: str, y: jax.Array) -> Reshape | None:
        if isinstance(self._reshape, Mapping):
            return self._reshape.get(name)
        return self._reshape if (self._reshape is not None and getattr(y, "ndim", 0) == 3) else None

    def _forward(self, params: Any, x: jax.Array, taps: Sequence[str], perturb: Mapping[str, jax.Array],
                 stop_after: str | None) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        """The model's output and ``{layer: output}`` for ``taps``; with ``stop_after``, tracing stops
        once that layer has returned (nothing after it is traced, so nothing after it can fail)."""
        got: dict[str, jax.Array] = {}

        def on_call(name, module, y, entering=False):
            if entering or name is None or not isinstance(y, jax.Array):
                return y
            r = self._reshape_of(name, y)
            if name in perturb:
                d = perturb[name]
                y = y + (jax.linear_transpose(r, y)(d)[0] if r is not None else d)
            if name in taps and name not in got:
                got[name] = r(y) if r is not None else y
            if name == stop_after:
                raise _Stop
            return y

        try:
            with self._guiding():
                return self._trace(params, jnp.asarray(x), on_call), got
        except _Stop:
            return None, got

    def run(self, params: Any, x: jax.Array, *, taps: Sequence[str] = (),
            perturb: Mapping[str, jax.Array] | None = None, output: bool = True, logits: bool = False,
            channel: tuple[str, jax.Array] | None = None) -> Forward:
        taps = tuple(self.resolve(n) for n in taps)
        perturb = {self.resolve(n): d for n, d in (perturb or {}).items()}
        stop = None
        if not output and taps:  # stop tracing at the last of the taps (and perturbations) to return
            wanted = set(taps) | set(perturb)
            stop = max(wanted, key=self._layers.done.index)
        out, got = self._forward(params, x, taps, perturb, stop)
        missing = [n for n in taps if n not in got]
        if missing:
            raise JaxvizError(f"layer {missing[0]!r} of {self.name} did not return an array")
        if channel is not None:
            name, index = self.resolve(channel[0]), channel[1]
            got[name] = jax.lax.dynamic_slice_in_dim(got[name], index, 1, axis=-1)
        lgt = None
        if output:
            lgt, out = (out, jax.nn.softmax(out, axis=-1)) if self._outputs == "logits" else (out, out)
        return Forward(out, lgt, {n: got[n] for n in taps})

    def shapes(self, input_shape: Sequence[int] | None = None, until: str | None = None) -> list[tuple[str, Shape]]:
        shape = tuple(input_shape or self.input_shape)
        if len(shape) != 3 or shape[-1] != self.input_shape[-1] or min(shape) < 1:
            raise JaxvizError(f"{self.name} takes H x W x {self.input_shape[-1]} inputs, got shape {shape}")
        until = self.resolve(until) if until else None
        if (shape, until) not in self._shapes:
            x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
            try:
                out, got = jax.eval_shape(lambda p, x: self._forward(p, x, self._layers.names, {}, until),
                                          self.params, x)
            except JaxvizError:
                raise
            except Exception as e:
                raise JaxvizError(f"{self.name} cannot take a {'x'.join(map(str, shape))} input: "
                                  f"{type(e).__name__}") from e
            rows = [(n, tuple(got[n].shape[1:])) for n in self._layers.names if n in got]
            self._shapes[(shape, until)] = rows + ([("(output)", tuple(out.shape[1:]))] if out is not None else [])
        return self._shapes[(shape, until)]

    def check_input(self, x_shape: Sequence[int]) -> None:
        if len(x_shape) != 4:
            raise JaxvizError(f"{self.name} takes a batch N x H x W x C, got shape {tuple(x_shape)}")
        self.shapes(tuple(x_shape[1:]))

    def _replace(self, **attrs) -> "_Adapted":
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(attrs)
        return clone

    def with_preprocessing(self, mode: str) -> "_Adapted":
        return self._replace(preprocessing=mode)

    def guided(self) -> "_Adapted":
        return self._replace(_guided=True)

    @contextlib.contextmanager
    def _guiding(self) -> Iterator[None]:
        """While tracing a guided copy, ``relu``/``relu6`` as the module looks them up
        (``jax.nn``, ``flax.nnx``, ``flax.linen``) are the guided versions."""
        if not self._guided:
            yield
            return
        import flax.linen as nn
        from flax import nnx

        saved = []
        for mod in (jax.nn, nnx, nn):
            for attr, new in (("relu", L.guided_relu), ("relu6", L.guided_relu6)):
                if hasattr(mod, attr):
                    saved.append((mod, attr, getattr(mod, attr)))
                    setattr(mod, attr, new)
        try:
            yield
        finally:
            for mod, attr, old in saved:
                setattr(mod, attr, old)

    def feature_layers(self) -> list[str]:
        shapes = dict(self.shapes())
        leaves = [n for n in self.layer_names if self.kind(n) in ("conv", "pool", "act") and is_spatial(shapes[n])]
        return leaves or [n for n in self.layer_names if is_spatial(shapes[n])]

    def cam_layer(self) -> str:
        shapes = dict(self.shapes())
        spatial = [n for n in self._layers.done if is_spatial(shapes[n])]
        if not spatial:
            raise JaxvizError(f"{self.name} has no layer with a spatial map (H x W x C); give reshape= for token layers")
        return spatial[-1]


class NNXModel(_Adapted):
    """A ``flax.nnx.Module`` in the model protocol (see :func:`adapt`)."""

    def __init__(self, module: Any, **kw):
        from flax import nnx

        module = nnx.clone(module)
        module.eval()  # batch norm on its running statistics, dropout off
        self._graphdef, self.params = nnx.split(module)
        super().__init__(**kw)

    def _instances(self, module: Any) -> dict[int, str]:
        from flax import nnx

        out = {}
        for path, node in nnx.iter_graph(module):
            if path and isinstance(node, nnx.Module):
                out[id(node)] = ".".join(map(str, path))
        return out

    def _children(self) -> dict[str, bool]:
        from flax import nnx

        names = set(self._instances(nnx.merge(self._graphdef, self.params)).values())
        return {n: any(m.startswith(n + ".") for m in names) for n in names}

    def _trace(self, params, x, on_call):
        from flax import nnx

        module = nnx.merge(self._graphdef, params)
        names = self._instances(module)
        classes = {type(module)} | {type(n) for _, n in nnx.iter_graph(module) if isinstance(n, nnx.Module)}
        active: set[int] = set()
        patched = []

        def wrap(original):
            def call(self_, *args, **kwargs):
                name = names.get(id(self_))
                if name is None or id(self_) in active:
                    return original(self_, *args, **kwargs)
                active.add(id(self_))
                try:
                    on_call(name, self_, None, entering=True)
                    y = original(self_, *args, **kwargs)
                finally:
                    active.discard(id(self_))
                return on_call(name, self_, y)

            return call

        for cls in classes:
            if callable(getattr(cls, "__call__", None)) and cls.__call__ is not object.__call__:
                patched.append((cls, cls.__dict__.get("__call__")))
                cls.__call__ = wrap(cls.__call__)
        try:
            return module(x)
        finally:
            for cls, old in reversed(patched):
                if old is None:
                    del cls.__call__
                else:
                    cls.__call__ = old

    def layer_params(self, params: Any, name: str) -> dict[str, jax.Array]:
        from flax import nnx

        node = nnx.to_pure_dict(params)
        for part in self.resolve(name).split("."):
            node = node[int(part) if part.isdigit() and int(part) in node else part]
        return {k: v for k, v in node.items() if not isinstance(v, Mapping)}

    def init(self, key: jax.Array, input_shape: Sequence[int] | None = None) -> Any:
        raise JaxvizError(f"{self.name} is an NNX module: jaxviz cannot re-create its untrained parameters; "
                          "build a fresh module yourself and adapt it")

    def reinit(self, params, key, layers, input_shape=None):
        return self.init(key, input_shape)


class LinenModel(_Adapted):
    """A Linen module and its variables in the model protocol (see :func:`adapt`)."""

    def __init__(self, module: Any, variables: Mapping, call_kwargs: Mapping | None = None, **kw):
        self._module, self.params, self._call_kwargs = module, variables, dict(call_kwargs or {})
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise JaxvizError("a Linen module needs its variables, e.g. adapt(module, module.init(key, x)): "
                              "a mapping with a 'params' collection")
        super().__init__(**kw)

    def _children(self) -> dict[str, bool]:
        out: dict[str, bool] = {}

        def walk(tree, prefix):
            for k, v in tree.items():
                if isinstance(v, Mapping):
                    name = f"{prefix}{k}"
                    out[name] = any(isinstance(w, Mapping) for w in v.values())
                    walk(v, name + ".")

        for collection in self.params.values():
            if isinstance(collection, Mapping):
                walk(collection, "")
        return out

    def _trace(self, params, x, on_call):
        import flax.linen as nn

        depth: list[str] = []

        def interceptor(next_fun, args, kwargs, context):
            path = ".".join(context.module.path) if context.method_name == "__call__" else ""
            if not path or path in depth:
                return next_fun(*args, **kwargs)
            depth.append(path)
            try:
                on_call(path, context.module, None, entering=True)
                y = next_fun(*args, **kwargs)
            finally:
                depth.pop()
            return on_call(path, context.module, y)

        with nn.intercept_methods(interceptor):
            return self._module.apply(params, x, **self._call_kwargs)

    def layer_params(self, params: Any, name: str) -> dict[str, jax.Array]:
        node = params["params"]
        for part in self.resolve(name).split("."):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return {k: v for k, v in node.items() if not isinstance(v, Mapping)}

    def init(self, key: jax.Array, input_shape: Sequence[int] | None = None) -> Any:
        shape = tuple(input_shape or self.input_shape)
        return self._module.init(key, jnp.zeros((1,) + shape, jnp.float32), **self._call_kwargs)

    def reinit(self, params, key, layers, input_shape=None):
        fresh, redo = self.init(key, input_shape), [tuple(self.resolve(n).split(".")) for n in layers]

        def pick(path, old, new):
            keys = tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)[1:]  # drop the collection
            return new if any(keys[:len(r)] == r for r in redo) else old

        return jax.tree_util.tree_map_with_path(pick, dict(params), dict(fresh))


def adapt(module: Any, variables: Mapping | None = None, *, input_shape: Sequence[int], preprocessing: str = "none",
          labels: str | None = None, reshape: Reshape | Mapping[str, Reshape] | None = None,
          outputs: str = "logits", name: str | None = None, call_kwargs: Mapping | None = None):
    """Your Flax model as jaxviz's model bundle, accepted by every capability and the CLI.

    Args:
      module: a ``flax.nnx.Module`` (its state is the parameters), or a ``flax.linen.Module`` with
        ``variables``; either maps a batch N x H x W x C to N x K.
      variables: a Linen module's variables (``params``, and ``batch_stats`` where it has them).
      input_shape: (H, W, C), the size the model is shown at by default.
      preprocessing: how pixels 0..255 become the model's input (:mod:`jaxviz.nn.preprocess`).
      labels: the label set of the outputs (``imagenet``, ...), or None.
      reshape: for layers whose output is tokens (N, T, C): a linear function to N x h x w x C (a
        callable for every token layer, or ``{layer: callable}``).
      outputs: ``logits`` (default; probabilities are their softmax) or ``probabilities``.
      name: a name for captions (default: the module's class name).
      call_kwargs: Linen only: keyword arguments of ``apply`` (e.g. ``{"train": False}``).
    Returns:
      A :class:`jaxviz.Loaded` with ``.model`` (the model protocol) and ``.params``.
    """
    from flax import nnx
    import flax.linen as nn

    from jaxviz.nn.protocol import Loaded

    if isinstance(module, Loaded):
        return module
    kw = dict(input_shape=input_shape, preprocessing=preprocessing, labels=labels, reshape=reshape, outputs=outputs,
              name=name or type(module).__name__)
    if isinstance(module, nnx.Module):
        if variables is not None:
            raise JaxvizError("an NNX module carries its own state; call adapt(module, input_shape=...) without variables")
        model = NNXModel(module, **kw)
    elif isinstance(module, nn.Module):
        if variables is None:
            raise JaxvizError("a Linen module needs its variables: adapt(module, variables, input_shape=...)")
        model = LinenModel(module, variables, call_kwargs, **kw)
    else:
        raise JaxvizError(f"adapt takes a flax.nnx.Module or a flax.linen.Module with its variables, "
                          f"not {type(module).__name__}")
    return Loaded(model, model.params, True, f"adapted {type(module).__name__}")
