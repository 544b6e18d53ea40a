"""Your own JAX model, as every capability sees a model: :func:`adapt` wraps a ``flax.nnx.Module``, a
Linen module with its variables, a Hugging Face Flax model (``FlaxResNetForImageClassification``,
``FlaxViTForImageClassification``, ...: its Linen ``.module`` with its ``.params``) or an
``equinox.Module`` in the model protocol (:mod:`jaxviz.nn.protocol`). This module is the only place
that tells these kinds of model apart; every capability sees the one protocol. (It stays one module
over 400 lines for that reason: the four kinds side by side, what they share in :mod:`jaxviz.nn.adapted`.)

Layers are the model's submodules, named by their dot-joined paths (``stem``, ``blocks.0``,
``blocks.0.conv1``, ``head``; an Equinox model's field paths, ``layers.3``), each meaning that
submodule's ``__call__`` output, listed in the order they are first called. A submodule that returns
a tuple, dict or ``ModelOutput`` is read by the rule of :mod:`jaxviz.nn.adapted` (``logits``, else the
first array), and so is the model's output. Taps and gradients work without editing the module: while
jaxviz traces the model it intercepts submodule calls, records the outputs asked for and adds the
perturbations asked for — Linen: ``nn.intercept_methods`` (scoped to the ``with`` block of the tracing
thread); NNX and Equinox: each trace runs a fresh copy (``nnx.merge``, ``eqx.combine``) whose
instances, and only those, are given a tapping subclass of their class (:func:`_tapping`), which
reports to the trace named in a context variable. The user's classes and instances are never changed,
and a thread that is not tracing sees nothing. Everything happens at trace time, so it works inside
``jit`` and ``vmap``. Guided backprop is :func:`jaxviz.nn.policy.guided` (see :mod:`jaxviz.nn.guided`).

**Inference, always.** NNX modules are put in ``eval()`` mode, Equinox modules in
``eqx.nn.inference_mode``; and whichever the kind, when the call takes ``train``, ``training``,
``is_training``, ``deterministic`` or ``use_running_average`` by keyword and ``call_kwargs`` does not
set it, jaxviz passes the inference value (``train=False``, ``deterministic=True``,
``use_running_average=True``) and says so in the returned bundle's ``source`` (the CLI prints it).
So the Flax ImageNet example's ``ResNet.__call__(x, train=True)`` runs on its running statistics.

**Equinox** modules take one example, channel-first as ``eqx.nn.Conv2d`` does: jaxviz calls the model
on ``C x H x W`` images inside a ``vmap`` over the batch and shows every three-axis output ``C x H x W``
as ``H x W x C`` (taps, perturbations and shapes), other outputs as they are. A model with state
(``eqx.nn.make_with_state``) is adapted with its state, ``adapt(model, state, ...)``, called
``model(x, state)`` and read at the first array of what it returns.

A layer whose output is tokens (N, T, C) gets a spatial map through ``reshape`` (as pytorch-grad-cam's
``reshape_transform``): a linear function from the tokens to N x h x w x C, e.g. dropping a class
token and unflattening the grid. The gradient at the reshaped map is taken through its transpose.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import sys
import types
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError
from jaxviz.nn.adapted import Reshape, _Adapted, first_array


# The NNX or Equinox trace in progress in this thread (or task): (instance id -> layer name, ids being
# called, on_call).
_TRACE: contextvars.ContextVar = contextvars.ContextVar("jaxviz_module_trace", default=None)


@functools.lru_cache(maxsize=None)
def _tapping(cls: type) -> type:
    """A subclass of ``cls`` (made once per class) whose ``__call__`` reports each call of an instance of
    jaxviz's own copy to the trace in :data:`_TRACE`, and is ``cls``'s own call otherwise."""
    original = cls.__call__

    def __call__(self, *args, **kwargs):
        trace = _TRACE.get()
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


def _tap_calls(instances: Mapping[int, tuple[str, Any]]) -> dict[int, str]:
    """Give each instance of ``{id: (name, instance)}`` (all jaxviz's own copies) its tapping class;
    ``{id: name}`` for :data:`_TRACE`."""
    for _, node in instances.values():
        if any("__call__" in vars(c) for c in type(node).__mro__[:-1]):  # a callable module (not a StateIndex)
            object.__setattr__(node, "__class__", _tapping(type(node)))  # bypasses a frozen module's guard
    return {i: name for i, (name, _) in instances.items()}


def _has_children(names: Sequence[str]) -> dict[str, bool]:
    return {n: any(m.startswith(n + ".") for m in names) for n in names}


class NNXModel(_Adapted):
    """A ``flax.nnx.Module`` in the model protocol (see :func:`adapt`)."""

    def __init__(self, module: Any, **kw):
        from flax import nnx

        module = nnx.clone(module)
        module.eval()  # batch norm on its running statistics, dropout off
        self._call = type(module).__call__
        self._graphdef, self.params = nnx.split(module)
        super().__init__(**kw)

    def _call_fn(self):
        return self._call

    def _instances(self, module: Any) -> dict[int, tuple[str, Any]]:
        from flax import nnx

        return {id(node): (".".join(map(str, path)), node) for path, node in nnx.iter_graph(module)
                if path and isinstance(node, nnx.Module)}

    def _children(self) -> dict[str, bool]:
        from flax import nnx

        return _has_children([n for n, _ in self._instances(nnx.merge(self._graphdef, self.params)).values()])

    def _trace(self, params, x, on_call):
        from flax import nnx

        module = nnx.merge(self._graphdef, params)  # a fresh copy: its instances are jaxviz's own
        token = _TRACE.set((_tap_calls(self._instances(module)), set(), on_call))
        try:
            return module(x, **self.call_kwargs)
        finally:
            _TRACE.reset(token)

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

    def __init__(self, module: Any, variables: Mapping, **kw):
        self._module, self.params = module, variables
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise JaxvizError("a Linen module needs its variables, e.g. adapt(module, module.init(key, x)): "
                              "a mapping with a 'params' collection")
        super().__init__(**kw)

    def _call_fn(self):
        return type(self._module).__call__

    def _children(self) -> dict[str, bool]:
        out: dict[str, bool] = {}

        def walk(tree, prefix):
            for k, v in tree.items():
                if isinstance(v, Mapping):
                    name = f"{prefix}{k}"
                    out[name] = out.get(name, False) or any(isinstance(w, Mapping) for w in v.values())
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
            return self._module.apply(params, x, **self.call_kwargs)

    def layer_params(self, params: Any, name: str) -> dict[str, jax.Array]:
        node = params["params"]
        for part in self.resolve(name).split("."):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return {k: v for k, v in node.items() if not isinstance(v, Mapping)}

    def init(self, key: jax.Array, input_shape: Sequence[int] | None = None) -> Any:
        shape = tuple(input_shape or self.input_shape)
        return self._module.init(key, jnp.zeros((1,) + shape, jnp.float32), **self.call_kwargs)

    def reinit(self, params, key, layers, input_shape=None):
        fresh, redo = self.init(key, input_shape), [tuple(self.resolve(n).split(".")) for n in layers]

        def pick(path, old, new):
            keys = tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)[1:]  # drop the collection
            return new if any(keys[:len(r)] == r for r in redo) else old

        return jax.tree_util.tree_map_with_path(pick, dict(params), dict(fresh))


def _eqx_modules(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """``(dot-joined field path, module)`` for every ``equinox.Module`` inside ``tree`` (not the root),
    depth first in field order."""
    import equinox as eqx

    if isinstance(tree, eqx.Module):
        if path:
            yield ".".join(path), tree
        for f in dataclasses.fields(tree):
            yield from _eqx_modules(getattr(tree, f.name, None), path + (f.name,))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _eqx_modules(v, path + (str(i),))
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _eqx_modules(v, path + (str(k),))


def _channels_last(y: jax.Array) -> jax.Array:
    """One example's output as the protocol shows it, with a batch axis of one (C x H x W -> 1 x H x W x C)."""
    return (jnp.moveaxis(y, 0, -1) if y.ndim == 3 else y)[None]


def _channels_first(y: jax.Array) -> jax.Array:
    return jnp.moveaxis(y[0], -1, 0) if y.ndim == 4 else y[0]


class EquinoxModel(_Adapted):
    """An ``equinox.Module`` (with its state, if it has one) in the model protocol (see :func:`adapt`).
    Its parameters are ``(arrays, state)``: the module's array leaves and the state (or None)."""

    _per_example = True

    def __init__(self, module: Any, state: Any = None, **kw):
        import equinox as eqx

        module = eqx.nn.inference_mode(module, True)  # dropout off, batch norm on its running statistics
        self._call = type(module).__call__
        arrays, self._static = eqx.partition(module, eqx.is_array)
        self._stateful = state is not None
        self.params = (arrays, state)
        super().__init__(**kw)

    def _call_fn(self):
        return self._call

    def _module(self, params: Any) -> Any:
        import equinox as eqx

        return eqx.combine(params[0], self._static)  # a fresh copy: its instances are jaxviz's own

    def _children(self) -> dict[str, bool]:
        return _has_children([n for n, _ in _eqx_modules(self._module(self.params))])

    def _trace(self, params, x, on_call):
        module = self._module(params)
        names = _tap_calls({id(m): (n, m) for n, m in _eqx_modules(module)})

        def one_example(name, mod, y, entering=False):  # the protocol's N x H x W x C view of one example
            if entering:
                return on_call(name, mod, y, entering=True)
            a, put = first_array(y)
            if a is None or put is None:
                return on_call(name, mod, y)
            return put(_channels_first(on_call(name, mod, _channels_last(a))))

        token = _TRACE.set((names, set(), one_example))
        try:
            args = (jnp.moveaxis(x[0], -1, 0),) + ((params[1],) if self._stateful else ())
            y = first_array(module(*args, **self.call_kwargs))[0]
        finally:
            _TRACE.reset(token)
        if y is None:
            raise JaxvizError(f"{self.name} returned no array")
        return y[None]

    def layer_params(self, params: Any, name: str) -> dict[str, jax.Array]:
        import equinox as eqx

        node = dict(_eqx_modules(self._module(params)))[self.resolve(name)]
        out = {}
        for f in dataclasses.fields(node):
            v = getattr(node, f.name, None)
            if eqx.is_array(v):
                if f.name == "weight" and v.ndim in (2, 4):  # out x in (x kh x kw) -> (kh x kw x) in x out
                    out["kernel"] = v.T if v.ndim == 2 else jnp.transpose(v, (2, 3, 1, 0))
                else:
                    out[f.name] = v.reshape(-1) if f.name == "bias" else v
        return out

    def init(self, key: jax.Array, input_shape: Sequence[int] | None = None) -> Any:
        raise JaxvizError(f"{self.name} is an Equinox module: jaxviz cannot re-create its untrained parameters; "
                          "build a fresh module yourself and adapt it")

    def reinit(self, params, key, layers, input_shape=None):
        return self.init(key, input_shape)


def _is_equinox(obj: Any) -> bool:
    eqx = sys.modules.get("equinox")  # an equinox.Module was made by an imported equinox
    return eqx is not None and isinstance(obj, eqx.Module)


def _hugging_face(obj: Any) -> tuple[Any, Mapping | None] | None:
    """A Hugging Face Flax model (``FlaxPreTrainedModel``): its Linen ``module`` and its variables (the
    ``params`` collection alone, or ``params`` with ``batch_stats``; None for a model built with
    ``_do_init=False``, which holds none); None for anything else."""
    import flax.linen as nn

    module = getattr(obj, "module", None)
    if not isinstance(module, nn.Module) or isinstance(obj, nn.Module):
        return None
    try:
        params = obj.params
    except Exception:  # built with _do_init=False: HF raises instead of holding parameters
        params = None
    return module, (params if not isinstance(params, Mapping) or "params" in params else {"params": params})


def adapt(module: Any, variables: Any = None, *, input_shape: Sequence[int] | None = None,
          preprocessing: str = "none", labels: str | None = None, reshape: Reshape | Mapping[str, Reshape] | None = None,
          outputs: str = "logits", name: str | None = None, call_kwargs: Mapping[str, Any] | None = None):
    """Your JAX model as jaxviz's model bundle, accepted by every capability and the CLI.

    Args:
      module: a ``flax.nnx.Module`` (its state is the parameters); a ``flax.linen.Module`` with
        ``variables``; a Hugging Face Flax model (``FlaxResNetForImageClassification``, ...; its
        ``params`` are used); or an ``equinox.Module`` (one C x H x W example per call). Each maps a
        batch N x H x W x C of images to N x K; what it returns is read by the rule of
        :mod:`jaxviz.nn.adapted` (``logits``, else the first array).
      variables: a Linen module's variables (``params``, and ``batch_stats`` where it has them); a
        Hugging Face model's parameters if it holds none (built with ``_do_init=False``); an Equinox
        model's state (``eqx.nn.State``) if it has one; None otherwise.
      input_shape: (H, W, C), the size the model is shown at by default; may be left out for a
        Hugging Face model, which knows its own.
      preprocessing: how pixels 0..255 become the model's input (:mod:`jaxviz.nn.preprocess`).
      labels: the label set of the outputs (``imagenet``, ...), or None.
      reshape: for layers whose output is tokens (N, T, C): a linear function to N x h x w x C (a
        callable for every token layer, or ``{layer: callable}``).
      outputs: ``logits`` (default; probabilities are their softmax) or ``probabilities``.
      name: a name for captions (default: the module's class name).
      call_kwargs: keyword arguments of every call of the model besides the images (Linen: of
        ``apply``), e.g. ``{"train": False}``; the mode arguments it leaves out get their inference
        values (module docstring).
    Returns:
      A :class:`jaxviz.Loaded` with ``.model`` (the model protocol) and ``.params``; its ``source``
      says which inference arguments jaxviz chose.
    """
    from flax import nnx
    import flax.linen as nn

    from jaxviz.nn.protocol import Loaded

    if isinstance(module, Loaded):
        return module
    kind = type(module).__name__
    hf = _hugging_face(module)
    if input_shape is None:
        known = tuple(getattr(module, "input_shape", ()) or ()) if hf is not None else ()
        if len(known) != 4:
            raise JaxvizError(f"adapt({kind}) needs input_shape=(H, W, C), the size to show the model at")
        input_shape = known[1:]
    kw = dict(input_shape=input_shape, preprocessing=preprocessing, labels=labels, reshape=reshape, outputs=outputs,
              name=name or kind, call_kwargs=call_kwargs)
    if isinstance(module, nnx.Module):
        if variables is not None:
            raise JaxvizError("an NNX module carries its own state; call adapt(module, input_shape=...) without variables")
        model = NNXModel(module, **kw)
    elif isinstance(module, nn.Module):
        if variables is None:
            raise JaxvizError("a Linen module needs its variables: adapt(module, variables, input_shape=...)")
        model = LinenModel(module, variables, **kw)
    elif hf is not None:
        if variables is not None:  # its parameters given apart (a model built with _do_init=False)
            variables = variables if isinstance(variables, Mapping) and "params" in variables else {"params": variables}
        elif not isinstance(hf[1], Mapping):
            raise JaxvizError(f"{kind} holds no parameters (built with _do_init=False): pass them, "
                              "adapt(model, params, ...)")
        model = LinenModel(hf[0], variables if variables is not None else hf[1], **kw)
    elif _is_equinox(module):
        import equinox as eqx

        if variables is not None and not isinstance(variables, eqx.nn.State):
            raise JaxvizError(f"an Equinox module takes no variables (its arrays are its parameters), only its "
                              f"eqx.nn.State if it has one; got {type(variables).__name__}")
        model = EquinoxModel(module, variables, **kw)
    else:
        raise JaxvizError(f"adapt takes a flax.nnx.Module, a flax.linen.Module with its variables, a Hugging Face "
                          f"Flax model or an equinox.Module, not {kind}")
    note = model.note()
    return Loaded(model, model.params, True, f"adapted {kind}" + (f", {note}" if note else ""))
