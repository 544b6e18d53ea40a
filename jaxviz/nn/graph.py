"""Models as ordered sequences of named Flax layers (Keras layer names).

A :class:`Sequential` can be run on a batch, run *up to* a layer (nothing after it is computed),
*split at* a layer into a head and a tail, sliced like a list, and *tapped* for several layers in
one pass. Parameters are a plain dict ``{layer_name: {"kernel": ..., "bias": ...}}``. There is one way
to run it, the model protocol's :meth:`Sequential.run`; ``__call__``, :meth:`~Sequential.tap` and their
``jit_`` versions are thin wrappers over it for users. The zoo's registry is :data:`jaxviz.nn.zoo.MODELS`.

Why one module of ~450 lines: :class:`Sequential` is one frozen dataclass whose parts (names, wiring,
slicing, shapes, parameters, the run, the policy hints) all read the same fields (``layers``,
``wiring``, ``context_shapes``); split over files they would be mixins that mean nothing apart.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.nn import kinds as K
from jaxviz.nn import layers as L
from jaxviz.errors import JaxvizError, unknown
from jaxviz.nn.protocol import Forward
from jaxviz.nn.jit import jit

Params = dict[str, dict[str, jax.Array]]
LOGITS = "/logits"  # the key of the last layer's pre-activation output inside a run
Shape = tuple[int, ...]


def _keeps_spatial(layer: nn.Module) -> bool:
    return bool(getattr(layer, "keeps_spatial", True))


@dataclasses.dataclass(frozen=True)
class Sequential:
    """An ordered sequence of ``(keras_name, flax_layer)`` steps plus what is needed to feed it.

    Each step reads the previous step's output, except those listed in ``wiring``, which read
    named earlier steps (a residual ``Add`` reads the block's last layer and its shortcut), as in
    Keras's own graph; the steps are in Keras's ``model.layers`` order. So every layer inside a
    residual block stays addressable: :meth:`until`, :meth:`tap` and :meth:`split` work for it.

    Attributes:
      name: registry name of the architecture (``vgg16``, ``xception``, ...).
      layers: the steps, in order.
      input_shape: default input (H, W, C), e.g. (224, 224, 3).
      preprocessing: ``caffe``, ``tf``, ``lite``, ``scale255`` or ``none`` (see :mod:`jaxviz.nn.preprocess`).
      labels: name of the label set of the last layer (``imagenet``, ``fashion``, ``cats_dogs``) or None.
      wiring: ``(step, (source, ...))`` for the steps that do not read the previous step.
      input_name: what the first step reads: ``""`` (the model input) or, for a slice such as the
        tail of :meth:`split`, the name of the layer before it.
      context_shapes: for a slice, ``(name, shape)`` of the earlier layers it reads besides its input
        (the residual carried across a split inside a block); pass them as ``context``.
      aliases: ``(alias, layer)``, e.g. a block's name for its output layer.
      min_size: the smallest input side Keras accepts for the architecture, when that is more than
        the layers need (Xception: 71).
    """

    name: str
    layers: tuple[tuple[str, nn.Module], ...]
    input_shape: Shape
    preprocessing: str = "none"
    labels: str | None = None
    wiring: tuple[tuple[str, tuple[str, ...]], ...] = ()
    input_name: str = ""
    context_shapes: tuple[tuple[str, Shape], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    min_size: int = 1

    # -- names ---------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [n for n, _ in self.layers]

    def index(self, name: str) -> int:
        """Position of layer ``name`` (or an alias); an unknown name raises an error listing the valid ones."""
        name = dict(self.aliases).get(name, name)
        for i, (n, _) in enumerate(self.layers):
            if n == name:
                return i
        raise unknown("layer", name, self.layer_names + [a for a, _ in self.aliases], f" in {self.name}")

    def resolve(self, name: str) -> str:
        """The layer name behind ``name`` (an alias or a layer name), checked."""
        return self.layers[self.index(name)][0]

    def layer(self, name: str) -> nn.Module:
        return self.layers[self.index(name)][1]

    def names_of_kind(self, *kinds: str) -> list[str]:
        """Names of the layers of the given kinds ('conv', 'pool', 'dense', ...), in order."""
        return [n for n, l in self.layers if L.kind(l) in kinds]

    @property
    def last_conv(self) -> str:
        """The last conv layer's output *after* the batch norm and activation that follow it
        (``block5_conv3`` for VGG16, ``block14_sepconv2_act`` for Xception). Grad-CAM's default is
        :func:`jaxviz.nn.policy.cam_layer`, the map the head reads (the same layer for the zoo)."""
        convs = self.names_of_kind("conv")
        if not convs:
            raise JaxvizError(f"{self.name} has no convolution layer")
        i = self.index(convs[-1])
        readers = self.readers
        while i + 1 < len(self.layers) and L.kind(self.layers[i + 1][1]) in K.FOLLOWS_CONV \
                and readers.get(self.layers[i][0]) == [self.layers[i + 1][0]]:
            i += 1  # a residual block's add and activation too: ResNet50's conv5_block3_out
        return self.layers[i][0]

    # -- wiring --------------------------------------------------------------------------
    @functools.cached_property
    def sources(self) -> dict[str, tuple[str, ...]]:
        """``{step: names it reads}`` (``""`` is the model input)."""
        wired = dict(self.wiring)
        out, prev = {}, self.input_name
        for n, _ in self.layers:
            out[n] = wired.get(n, (prev,))
            prev = n
        return out

    @functools.cached_property
    def readers(self) -> dict[str, list[str]]:
        """``{name: steps that read it}``."""
        out: dict[str, list[str]] = {}
        for n, srcs in self.sources.items():
            for s in srcs:
                out.setdefault(s, []).append(n)
        return out

    @property
    def context_names(self) -> tuple[str, ...]:
        """Earlier layers this slice reads besides its input (empty for a whole model or a chain)."""
        return tuple(n for n, _ in self.context_shapes)

    # -- slicing -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, s: slice) -> "Sequential":
        if not isinstance(s, slice):
            raise TypeError("index a Sequential with a slice, e.g. model[:5]; use model.layer(name) for one layer")
        start, stop, _ = s.indices(len(self.layers))
        if s.step not in (None, 1):
            raise TypeError("a Sequential slice takes no step")
        steps = self.layers[start:stop]
        if start == 0:
            return dataclasses.replace(self, layers=steps)
        shapes = dict(self.shapes())
        shapes.update(self.context_shapes)
        if self.input_name == "":
            shapes[""] = self.input_shape
        before = self.layers[start - 1][0]
        inside = {n for n, _ in steps}
        reads = [src for n, _ in steps for src in self.sources[n]]
        context = tuple(dict.fromkeys(r for r in reads if r not in inside and r != before))
        return dataclasses.replace(
            self, layers=steps, input_shape=shapes[before], input_name=before,
            context_shapes=tuple((c, shapes[c]) for c in context),
        )

    def split(self, name: str) -> tuple["Sequential", "Sequential"]:
        """``(head, tail)``: head ends with layer ``name``, tail is everything after it. Inside a
        residual block the tail also reads the block's other branch: ``tail.context_names`` says
        which layers, and ``tail(params, feats, context={n: act})`` takes them."""
        i = self.index(name) + 1
        return self[:i], self[i:]

    def with_activation(self, old: str, new: str) -> "Sequential":
        """The same model (same parameters) with every ``old`` activation replaced by ``new``,
        e.g. ``("relu", "guided_relu")`` for guided backpropagation."""
        layers = tuple((n, l.clone(activation=new) if getattr(l, "activation", None) == old else l)
                       for n, l in self.layers)
        return dataclasses.replace(self, layers=layers)

    def until(self, name: str) -> "Sequential":
        """The model truncated after layer ``name``."""
        return self[: self.index(name) + 1]

    # -- shapes --------------------------------------------------------------------------
    def _walk(self, shape: Shape, stop_at_flat: bool = False) -> Iterable[tuple[str, nn.Module, list, Shape]]:
        """``(name, layer, input shapes, output shape)`` per step for input ``shape``, unchecked; with
        ``stop_at_flat``, only the spatial steps before the first flatten/dense/global pool/dropout."""
        env: dict[str, Shape] = {self.input_name: tuple(shape), **dict(self.context_shapes)}
        for name, layer in self.layers:
            if stop_at_flat and (L.kind(layer) in K.FLAT_TOP or not _keeps_spatial(layer)):
                return
            ins = [env[s] for s in self.sources[name]]
            env[name] = layer.out_shape(*ins)
            yield name, layer, ins, env[name]

    def shapes(self, input_shape: Sequence[int] | None = None, until: str | None = None) -> list[tuple[str, Shape]]:
        """Output shape (no batch axis) of every layer for ``input_shape`` (default: the model's); with
        ``until``, of the layers up to that one only.

        Raises a :class:`JaxvizError` if the input is too small or does not fit a dense top.
        """
        if until is not None:
            return self.until(until).shapes(input_shape)
        shape = tuple(input_shape or self.input_shape)
        self._check_channels(shape)
        if self.input_name == "" and min(shape[:2]) < self.min_size:
            raise JaxvizError(f"input {self._fmt(shape)} is too small for {self.name}: use at least "
                              f"{self.min_input_size()}x{self.min_input_size()} pixels")
        out = []
        walk = self._walk(shape)
        while True:
            try:
                name, layer, ins, o = next(walk)
            except StopIteration:
                break
            except ValueError as e:  # a layer that cannot take this size (a Reshape to fixed sizes)
                raise JaxvizError(f"{self.name} needs {self._fmt(self.input_shape)} inputs, got {self._fmt(shape)}: "
                                  f"{e}") from None
            if L.has_params(layer) and self._fixed_in(name) is not None and ins[0][-1] != self._fixed_in(name) \
                    and L.kind(layer) != "dense":  # e.g. a conv after a Reshape whose channels depend on the size
                raise JaxvizError(
                    f"{self.name} needs {self._fmt(self.input_shape)} inputs, got {self._fmt(input_shape)}: layer "
                    f"{name!r} expects {self._fixed_in(name)} input channels, not {ins[0][-1]}; resize the image")
            if L.kind(layer) == "dense" and self._dense_in(name) is not None and ins[0][-1] != self._dense_in(name):
                raise JaxvizError(
                    f"{self.name} with its dense top needs {self._fmt(self.input_shape)} inputs, "
                    f"got {self._fmt(input_shape)}: layer {name!r} expects {self._dense_in(name)} features, "
                    f"not {ins[0][-1]}; resize the image, or use a model without the top"
                )
            if min(o) < 1:
                raise JaxvizError(
                    f"input {self._fmt(input_shape or self.input_shape)} is too small for {self.name}: "
                    f"layer {name!r} would have shape {o}; use at least {self.min_input_size()}x"
                    f"{self.min_input_size()} pixels"
                )
            out.append((name, o))
        return out

    def _check_channels(self, shape: Shape) -> None:
        if len(shape) != len(self.input_shape) or shape[-1] != self.input_shape[-1]:
            raise JaxvizError(
                f"{self.name} takes H x W x {self.input_shape[-1]} inputs, got shape {tuple(shape)}"
            )

    @functools.cached_property
    def _dense_inputs(self) -> dict[str, int]:
        """Input width each dense layer was built for, at the model's default input size."""
        return {n: ins[0][-1] for n, layer, ins, _ in self._walk(self.input_shape) if L.kind(layer) == "dense"}

    def _dense_in(self, name: str) -> int | None:
        return self._dense_inputs.get(name)

    @functools.cached_property
    def _fixed_inputs(self) -> dict[str, int]:
        """Input channels each weighted layer was built for, at the model's default input size."""
        return {n: ins[0][-1] for n, layer, ins, _ in self._walk(self.input_shape) if L.has_params(layer)}

    def _fixed_in(self, name: str) -> int | None:
        return self._fixed_inputs.get(name)

    @staticmethod
    def _fmt(shape: Sequence[int] | None) -> str:
        return "x".join(map(str, shape)) if shape is not None else "?"

    @functools.lru_cache(maxsize=None)
    def min_input_size(self) -> int:
        """Smallest square input that leaves every spatial layer at least one pixel (and Keras's ``min_size``)."""
        for size in range(self.min_size, 4097):
            if all(min(o) >= 1 for *_, o in self._walk((size, size, self.input_shape[-1]), stop_at_flat=True)):
                return size
        raise JaxvizError(f"{self.name} has no usable input size up to 4096")  # pragma: no cover

    def check_input(self, x_shape: Sequence[int]) -> None:
        """Raise a clear error unless a batch of shape ``x_shape`` (N, H, W, C) fits the model."""
        if len(x_shape) != 4:
            raise JaxvizError(f"{self.name} takes a batch N x H x W x C, got shape {tuple(x_shape)}")
        self.shapes(tuple(x_shape[1:]))

    # -- parameters ----------------------------------------------------------------------
    def _input_shapes(self, input_shape: Sequence[int] | None) -> dict[str, Shape]:
        """``{weighted layer: its input shape}`` (the input checked as :meth:`shapes` does)."""
        shape = tuple(input_shape or self.input_shape)
        self.shapes(shape)
        return {n: ins[0] for n, layer, ins, _ in self._walk(shape) if L.has_params(layer)}

    def init(self, key: jax.Array, input_shape: Sequence[int] | None = None) -> Params:
        """Fresh Keras-style parameters (glorot-uniform kernels, zero biases; batch norm as identity)."""
        params: Params = {}
        ins = self._input_shapes(input_shape)
        for i, (name, layer) in enumerate(self.layers):
            if name in ins:
                x = jnp.zeros((1,) + ins[name], jnp.float32)
                params[name] = layer.init(jax.random.fold_in(key, i), x)["params"]
        return params

    def param_shapes(self, input_shape: Sequence[int] | None = None) -> dict[str, dict[str, Shape]]:
        """``{layer: {param: shape}}`` in layer order, params in Keras's order."""
        ins = self._input_shapes(input_shape)
        return {n: L.param_shapes(l, ins[n]) for n, l in self.layers if n in ins}

    def param_count(self, input_shape: Sequence[int] | None = None) -> int:
        return sum(int(np.prod(s)) for p in self.param_shapes(input_shape).values() for s in p.values())

    # -- running: thin wrappers over run, for users (README) ----------------------------------
    def __call__(
        self,
        params: Mapping[str, Mapping[str, jax.Array]],
        x: jax.Array,
        *,
        until: str | None = None,
        logits: bool = False,
        train: bool = False,
        rng: jax.Array | None = None,
        context: Mapping[str, jax.Array] | None = None,
    ) -> jax.Array:
        """Run on a batch ``x`` (N, H, W, C), up to and including layer ``until`` (default: all).

        ``logits=True`` returns the last computed layer before its activation (pre-softmax).
        ``train=True`` turns dropout on and needs ``rng``. ``context``: see :meth:`split`.
        """
        kw = dict(train=train, rng=rng, context=context)
        if until is None:
            out = self.run(params, x, **kw)
            return out.logits if logits else out.output
        return self.run(params, x, taps=(until,), output=False, logits=logits, **kw).taps[until]

    def tap(
        self,
        params: Mapping[str, Mapping[str, jax.Array]],
        x: jax.Array,
        names: Iterable[str],
        *,
        logits: bool = False,
    ) -> dict[str, jax.Array]:
        """``{name: activation}`` for several layers in one forward pass that stops at the deepest
        (``logits``: each before its layer's activation)."""
        names = list(names)
        return self.run(params, x, taps=names, output=False, logits=logits).taps if names else {}

    @functools.cached_property
    def jit_tap(self) -> Callable:
        """``jax.jit`` of :meth:`tap` (``names`` static), compiled once per model and shapes."""
        return jit(self.tap, static_argnames=("names", "logits"))

    @functools.cached_property
    def jit_call(self) -> Callable:
        """``jax.jit`` of :meth:`__call__`."""
        return jit(self.__call__, static_argnames=("until", "logits", "train"))

    def _needed(self, outputs: set[str]) -> set[str]:
        """The steps that ``outputs`` depend on: nothing else is computed."""
        need, todo = set(), list(outputs)
        while todo:
            n = todo.pop()
            if n in need or n not in self.sources:
                continue
            need.add(n)
            todo += self.sources[n]
        return need

    def _run(self, params, x, outputs, *, logits_at=(), train=False, rng=None, context=None, perturb=None,
             channel=None, final=None):
        missing = [c for c in self.context_names if c not in (context or {})]
        if missing:
            raise JaxvizError(f"this slice of {self.name} also reads {missing}; pass context={{name: activation}}")
        logits_at = {logits_at} if isinstance(logits_at, str) else set(logits_at or ())
        perturb = {self.resolve(n): d for n, d in (perturb or {}).items()}
        env = {self.input_name: jnp.asarray(x), **dict(context or {})}
        need = self._needed(set(outputs))
        sliced: dict[str, jax.Array] = {}
        for i, (name, layer) in enumerate(self.layers):
            if name not in need:
                continue
            variables = {"params": params[name]} if L.has_params(layer) else {}
            ins = [env[s] for s in self.sources[name]]
            read_later = any(name in self.sources[o] for o in need if o != name)
            if channel is not None and channel[0] == name and hasattr(layer, "one_channel") and not read_later:
                env[name] = layer.apply(variables, *ins, channel[1], logits=name in logits_at, method="one_channel")
            else:
                rngs = {"dropout": jax.random.fold_in(rng, i)} if (train and rng is not None) else None
                env[name] = layer.apply(variables, *ins, logits=name in logits_at, train=train, rngs=rngs)
                if name == final:  # the output before its activation too (XLA computes the shared part once)
                    env[LOGITS] = layer.apply(variables, *ins, logits=True, train=train, rngs=rngs)
                if channel is not None and channel[0] == name:  # later layers read the whole output
                    sliced[name] = jax.lax.dynamic_slice_in_dim(env[name], channel[1], 1, axis=-1)
            if name in perturb:
                env[name] = env[name] + perturb[name]
        env.update(sliced)
        return {n: env[n] for n in outputs} | ({LOGITS: env[LOGITS]} if final else {})

    # -- the model protocol (jaxviz.nn.protocol.Model) -------------------------------------------
    def run(self, params: Mapping, x: jax.Array, *, taps: Sequence[str] = (),
            perturb: Mapping[str, jax.Array] | None = None, output: bool = True, logits: bool = False,
            channel: tuple[str, jax.Array] | None = None, train: bool = False, rng: jax.Array | None = None,
            context: Mapping[str, jax.Array] | None = None) -> Forward:
        """One forward pass: the output (and its pre-activation logits), the activations at ``taps``,
        ``perturb`` added at named layers; only what is asked for is computed (see
        :meth:`jaxviz.nn.protocol.Model.run`). Beyond the protocol: ``train=True`` turns dropout on
        (with ``rng``), and ``context`` feeds a slice the earlier layers it reads (:meth:`split`)."""
        keep = {n: self.resolve(n) for n in taps}
        if channel is not None:
            channel = (self.resolve(channel[0]), channel[1])
        last = self.layers[-1][0]
        if output and last in keep.values() and logits:
            raise JaxvizError(f"tap {last!r} (the output) without logits=True; its logits are Forward.logits")
        acts = self._run(params, x, set(keep.values()) | ({last} if output else set()),
                         logits_at=set(keep.values()) if logits else (), perturb=perturb, channel=channel,
                         final=last if output else None, train=train, rng=rng, context=context)
        out, lgt = (acts[last], acts[LOGITS]) if output else (None, None)
        return Forward(out, lgt, {n: acts[k] for n, k in keep.items()})

    def kind(self, name: str) -> str:
        """The kind of layer ``name`` (``conv``, ``pool``, ``dense``, ``act``, ``norm``, ...)."""
        return L.kind(self.layer(name))

    def with_preprocessing(self, mode: str) -> "Sequential":
        """The same model fed with preprocessing ``mode``."""
        return dataclasses.replace(self, preprocessing=mode)

    # -- policy hints (jaxviz.nn.policy) and the delegating methods kept for users ---------------
    def guided_hint(self) -> "Sequential":
        """The same model with ReLU and ReLU6 layers replaced by their guided versions (guided backprop)."""
        return self.with_activation("relu", "guided_relu").with_activation("relu6", "guided_relu6")

    def guided(self) -> "Sequential":
        """:func:`jaxviz.nn.policy.guided` of this model."""
        from jaxviz.nn import policy

        return policy.guided(self)

    def layer_params(self, params: Mapping, name: str) -> dict[str, jax.Array]:
        """The weights of layer ``name`` in Keras's names (``kernel``, ``bias``, ``gamma``, ...); {} if none."""
        return dict(params.get(self.resolve(name), {}))

    def reinit(self, params: Mapping, key: jax.Array, layers: Sequence[str],
               input_shape: Sequence[int] | None = None) -> Params:
        """``params`` with the layers ``layers`` re-initialised from ``key``."""
        fresh, redo = self.init(key, input_shape), {self.resolve(n) for n in layers}
        return {n: (fresh[n] if n in redo else p) for n, p in params.items()}

    def feature_layers(self) -> list[str]:
        """:func:`jaxviz.nn.policy.feature_layers` of this model."""
        from jaxviz.nn import policy

        return policy.feature_layers(self)

    def cam_layer(self) -> str:
        """:func:`jaxviz.nn.policy.cam_layer` of this model (the map the head reads)."""
        from jaxviz.nn import policy

        return policy.cam_layer(self)
