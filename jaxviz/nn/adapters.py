"""Your own Flax model, as every capability sees a model: :func:`adapt` wraps a ``flax.nnx.Module`` or a
Linen module with its variables in the model protocol (:mod:`jaxviz.nn.protocol`).

Layers are the model's submodules, named by their dot-joined paths (``stem``, ``blocks.0``,
``blocks.0.conv1``, ``head``), each meaning that submodule's ``__call__`` output, listed in the order
they are first called. Taps and gradients work without editing the module: while jaxviz traces the
model it intercepts submodule calls, records the outputs asked for and adds the perturbations asked
for — Linen: ``nn.intercept_methods`` (scoped to the ``with`` block of the tracing thread); NNX: each
trace runs a fresh copy (``nnx.merge``) whose instances, and only those, are given a tapping subclass
of their class (:func:`_tapping`), which reports to the trace named in a context variable. The user's
classes and instances are never changed, and a thread that is not tracing sees nothing. Everything
happens at trace time, so it works inside ``jit`` and ``vmap``. Guided backprop is
:func:`jaxviz.nn.policy.guided` (see :mod:`jaxviz.nn.guided`).

A layer whose output is tokens (N, T, C) gets a spatial map through ``reshape`` (as pytorch-grad-cam's
``reshape_transform``): a linear function from the tokens to N x h x w x C, e.g. dropping a class
token and unflattening the grid. The gradient at the reshaped map is taken through its transpose.
"""

from __future__ import annotations

import contextvars
import functools
import types
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError
from jaxviz.nn.adapted import Reshape, _Adapted


# The NNX trace in progress in this thread (or task): (instance id -> layer name, ids being called, on_call).
_NNX_TRACE: contextvars.ContextVar = contextvars.ContextVar("jaxviz_nnx_trace", default=None)


@functools.lru_cache(maxsize=None)
def _tapping(cls: type) -> type:
    """A subclass of ``cls`` (made once per class) whose ``__call__`` reports each call of an instance of
    jaxviz's own copy to the trace in :data:`_NNX_TRACE`, and is ``cls``'s own call otherwise."""
    original = cls.__call__

    def __call__(self, *args, **kwargs):
        trace = _NNX_TRACE.get()
        name = trace[0].get(id(self)) if trace is not None else None
        if name is None or id(self) in trace[1]:
            return original(self, *args, **kwargs)
        names, active, on_call = trace
        active.add(id(self))
        try:
            on_call(name, self, None, entering=True)
            y = original(self, *args, **kwargs)
        finally:
            active.discard(id(self))
        return on_call(name, self, y)

    def body(ns):
        ns.update(__call__=__call__, __module__=cls.__module__, __qualname__=cls.__qualname__)

    return types.new_class(cls.__name__, (cls,), {}, body)


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

        module = nnx.merge(self._graphdef, params)  # a fresh copy: its instances are jaxviz's own
        names = self._instances(module)
        for _, node in nnx.iter_graph(module):
            if isinstance(node, nnx.Module) and id(node) in names and type(node).__call__ is not object.__call__:
                node.__class__ = _tapping(type(node))
        token = _NNX_TRACE.set((names, set(), on_call))
        try:
            return module(x)
        finally:
            _NNX_TRACE.reset(token)

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
