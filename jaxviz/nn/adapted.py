"""What the adapters (:mod:`jaxviz.nn.adapters`: NNX, Linen, Equinox) share: the model protocol on top
of one ``_trace`` per flavour — discovery of the layers (the submodules, by dot-joined path, in the
order they are first called), ``run`` with taps, perturbations and early stop, shapes, the inference
arguments of the call, and the policy hints.

**What a layer's or the model's output stands for** (:func:`first_array`): an array is itself; a
mapping (a Hugging Face ``ModelOutput``, a ``dict``) stands for its ``logits`` entry when it has one,
else for its first entry, in order, that holds an array; a tuple or list for its first element that
holds an array; recursively. So a transformer block returning ``(hidden, attention)`` is tapped at
``hidden``, an HF classifier's output is read at ``logits``, and a perturbation asked for at such a
layer is added to that array, the rest of the output passed on unchanged. A layer whose output holds
no array (``None``, a string) cannot be tapped.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError, unknown
from jaxviz.nn.kinds import kind_of_class_name
from jaxviz.nn.protocol import Forward, Shape, is_spatial
from jaxviz.nn.jit import jit


Reshape = Callable[[jax.Array], jax.Array]

# The arguments a call takes to choose between training and inference, and their inference values.
INFERENCE = {"train": False, "training": False, "is_training": False, "deterministic": True,
             "use_running_average": True}


def inference_kwargs(fn: Callable, given: Mapping[str, Any]) -> dict[str, Any]:
    """``{argument: inference value}`` for the arguments of :data:`INFERENCE` that ``fn`` takes by
    keyword and ``given`` does not set."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in INFERENCE.items() if k not in given and k in params and params[k].kind in by_keyword}


def _is_array(y: Any) -> bool:
    return isinstance(y, (jax.Array, np.ndarray))


def _pick(y: Any) -> Any:
    """The array ``y`` stands for by the rule of the module docstring, or None."""
    if _is_array(y):
        return y
    if isinstance(y, Mapping):
        keys = list(y.keys())
        values = ([y["logits"]] if "logits" in keys else []) + [y[k] for k in keys if k != "logits"]
    elif isinstance(y, (tuple, list)):
        values = list(y)
    else:
        return None
    for v in values:
        a = _pick(v)
        if a is not None:
            return a
    return None


def first_array(y: Any) -> tuple[jax.Array | None, Callable[[jax.Array], Any] | None]:
    """The array an output ``y`` stands for (the module docstring's rule; None if it holds none), and a
    function that puts a replacement for that array back in ``y``'s place, the rest unchanged (None
    for a container JAX cannot rebuild, which can be read but not perturbed)."""
    a = _pick(y)
    if a is None or a is y:
        return a, (lambda new: new)
    leaves, tree = jax.tree_util.tree_flatten(y)
    where = {i for i, leaf in enumerate(leaves) if leaf is a}
    if not where:
        return a, None

    def put(new):
        return jax.tree_util.tree_unflatten(tree, [new if i in where else leaf for i, leaf in enumerate(leaves)])

    return a, put


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else ""


class _Stop(Exception):
    """Raised inside a trace once every layer asked for has returned: the rest is not traced."""


@dataclasses.dataclass(frozen=True)
class _Layers:
    names: tuple[str, ...]  # in the order of first call
    done: tuple[str, ...]  # the same names in the order their calls return
    kinds: dict[str, str]


class _Adapted:
    """What the adapters share: the protocol on top of one ``_trace`` per flavour.

    Attributes:
      call_kwargs: the keyword arguments every call of the module gets: the caller's ``call_kwargs``
        and, for the mode arguments the call takes that the caller did not set, their inference values
        (:data:`INFERENCE`: ``train=False``, ``deterministic=True``, ...).
      inference: the part of ``call_kwargs`` jaxviz chose (said in :meth:`note`).
    """

    _per_example = False  # the module takes one example (Equinox); the batch is a vmap around it

    def __init__(self, *, input_shape: Sequence[int], preprocessing: str, labels: str | None,
                 reshape: Reshape | Mapping[str, Reshape] | None, outputs: str, name: str,
                 call_kwargs: Mapping[str, Any] | None = None):
        from jaxviz.nn.preprocess import PREPROCESSORS

        if preprocessing not in PREPROCESSORS:
            raise unknown("preprocessing", preprocessing, sorted(PREPROCESSORS))
        if outputs not in ("logits", "probabilities"):
            raise JaxvizError(f"outputs must be 'logits' or 'probabilities', got {outputs!r}")
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise JaxvizError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
        self.name, self.input_shape, self.preprocessing, self.labels = name, shape, preprocessing, labels
        self._reshape, self._outputs = reshape, outputs
        if call_kwargs is not None and not (isinstance(call_kwargs, Mapping)
                                            and all(isinstance(k, str) for k in call_kwargs)):
            raise JaxvizError(f"call_kwargs must be a dict of keyword arguments, got {type(call_kwargs).__name__}")
        given = dict(call_kwargs or {})
        self.inference = inference_kwargs(self._call_fn(), given)
        self.call_kwargs = {**self.inference, **given}
        self._shapes: dict[tuple, list[tuple[str, Shape]]] = {}
        self._layers = self._discover()

    def note(self) -> str:
        """One line on the call jaxviz makes, e.g. ``called with train=False (inference)``; '' if none."""
        if not self.inference:
            return ""
        return "called with " + ", ".join(f"{k}={v!r}" for k, v in self.inference.items()) + " (inference)"

    # -- the flavour's part ----------------------------------------------------------------------
    def _trace(self, params: Any, x: jax.Array, on_call: Callable[[str, Any, Any], Any]) -> Any:
        """Run the model on a batch ``x`` (N x H x W x C) with :attr:`call_kwargs` and return its output;
        ``on_call(name, module, output)`` sees (and may replace) every named submodule's output (N first).
        ``name`` is None for calls that are not layers (the root, re-entries)."""
        raise NotImplementedError

    def _children(self) -> dict[str, bool]:
        """``{layer name: has submodules}`` for every submodule."""
        raise NotImplementedError

    def _call_fn(self) -> Callable:
        """The function whose signature says which mode arguments the module's call takes."""
        raise NotImplementedError

    # -- discovery -------------------------------------------------------------------------------
    def _discover(self) -> _Layers:
        order, done, kinds = [], [], {}
        children = self._children()

        def on_call(name, module, y, entering=False):
            if entering:
                if name not in order:
                    order.append(name)
                    kinds[name] = kind_of_class_name(type(module).__name__, children.get(name, False))
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
                              f"{type(e).__name__}: {_first_line(e)}; {self._hint(e)}") from e
        if not order:
            raise JaxvizError(f"{self.name} calls no submodules; jaxviz needs named layers to look inside it")
        return _Layers(tuple(order), tuple(done), kinds)

    def _params_for_trace(self) -> Any:
        return self.params

    def _hint(self, e: Exception) -> str:
        """What to try when the module fails on the declared input."""
        text = str(e)
        training = {k: v for k, v in self.call_kwargs.items() if k in INFERENCE and v != INFERENCE[k]}
        if training:
            k, v = next(iter(training.items()))
            return f"call_kwargs sets {k}={v!r}, training mode: jaxviz shows a model in inference ({k}={INFERENCE[k]!r})"
        if "mutable" in text or "unbound axis name" in text:
            return ("it updates its state when called (training mode): pass the argument that selects inference "
                    "in call_kwargs, e.g. call_kwargs={'train': False}")
        if isinstance(e, TypeError) and "unexpected keyword" in text:
            return "call_kwargs names an argument its call does not take"
        if isinstance(e, TypeError) and "argument" in text:
            return "pass the arguments its call needs besides the images in call_kwargs={...}"
        if "ScopeCollectionNotFound" in type(e).__name__ or "collection is empty" in text:
            return "pass every variable collection it has (params, batch_stats, ...) in variables"
        return "check input_shape (H, W, C) and call_kwargs"

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
        once that layer has returned (nothing after it is traced, so nothing after it can fail). A
        module that takes one example is traced on a batch of one inside a ``vmap`` over the batch."""
        if not self._per_example:
            return self._forward_batch(params, jnp.asarray(x), taps, perturb, stop_after)

        def one(x1, d1):
            return self._forward_batch(params, x1[None], taps, {n: d[None] for n, d in d1.items()}, stop_after)

        out, got = jax.vmap(one)(jnp.asarray(x), dict(perturb))
        return (None if out is None else out[:, 0]), {n: v[:, 0] for n, v in got.items()}

    def _forward_batch(self, params: Any, x: jax.Array, taps: Sequence[str], perturb: Mapping[str, jax.Array],
                       stop_after: str | None) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        got: dict[str, jax.Array] = {}

        def on_call(name, module, y, entering=False):
            if entering or name is None:
                return y
            a, put = first_array(y)
            if a is None:
                return y
            r = self._reshape_of(name, a)
            if name in perturb:
                if put is None:
                    raise JaxvizError(f"layer {name!r} of {self.name} returns a {type(y).__name__} that jaxviz cannot "
                                      "rebuild, so gradients at it are not available; choose another layer")
                d = perturb[name]
                a = a + (jax.linear_transpose(r, a)(d)[0] if r is not None else d)
                y = put(a)
            if name in taps and name not in got:
                got[name] = r(a) if r is not None else a
            if name == stop_after:
                raise _Stop
            return y

        try:
            out = self._trace(params, x, on_call)
        except _Stop:
            return None, got
        out_array = first_array(out)[0]
        if out_array is None:
            raise JaxvizError(f"{self.name} returned a {type(out).__name__} that holds no array")
        return out_array, got

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
            raise JaxvizError(f"layer {missing[0]!r} of {self.name} returns no array (nor a tuple, dict or "
                              "ModelOutput holding one), so it cannot be tapped")
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
                                  f"{type(e).__name__}: {_first_line(e)}") from e
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

    # -- policy hints (jaxviz.nn.policy) and the delegating methods kept for users ---------------
    def cam_layer_hint(self) -> str:
        """The default CAM layer: the last layer, in the order the calls *return* (a block after its
        children), with a spatial map larger than 1x1 that has the shape of the last map returned inside
        it (a module that pools, transposes or flattens its children's map after them, such as a Hugging
        Face model's channel-first output, is passed over for that child), and that the output depends
        on (the gradient of the summed logits at it is not zero on a random input: a ViT's last token
        maps, of which the head reads only the class token, are passed over). Failing those, the last
        spatial map."""
        if "_cam_default" not in self.__dict__:
            self._cam_default = self._cam_default_layer()
        return self._cam_default

    def _cam_default_layer(self) -> str:
        shapes = dict(self.shapes())
        spatial = [n for n in self._layers.done if n in shapes and is_spatial(shapes[n])]
        if not spatial:
            raise JaxvizError(f"{self.name} has no layer with a spatial map (H x W x C); give reshape= for token layers")

        def kept(i, n):
            inner = [m for m in spatial[:i] if m.startswith(n + ".")]
            return (not inner or shapes[inner[-1]] == shapes[n]) and shapes[n][0] * shapes[n][1] > 1

        good = [n for i, n in enumerate(spatial) if kept(i, n)]
        if not good:
            return spatial[-1]
        x = jax.random.normal(jax.random.key(0), (1,) + self.input_shape)
        zeros = {n: jnp.zeros((1,) + shapes[n]) for n in good}
        try:
            grads = jit(jax.grad(lambda d: self.run(self.params, x, perturb=d).logits.sum()))(zeros)
        except JaxvizError:  # a layer that cannot be perturbed: the structural choice stands
            return good[-1]
        live = [n for n in good if bool(jnp.any(grads[n] != 0))]
        return (live or good)[-1]

    def cam_layer(self) -> str:
        """:func:`jaxviz.nn.policy.cam_layer` of this model."""
        from jaxviz.nn import policy

        return policy.cam_layer(self)

    def feature_layers(self) -> list[str]:
        """:func:`jaxviz.nn.policy.feature_layers` of this model."""
        from jaxviz.nn import policy

        return policy.feature_layers(self)

    def guided(self):
        """:func:`jaxviz.nn.policy.guided` of this model."""
        from jaxviz.nn import policy

        return policy.guided(self)
