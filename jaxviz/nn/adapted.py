"""What the NNX and Linen adapters (:mod:`jaxviz.nn.adapters`) share: the model protocol on top of one
``_trace`` per flavour — discovery of the layers (the submodules, by dot-joined path, in the order
they are first called), ``run`` with taps, perturbations and early stop, shapes, and the policy hints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxviz.errors import JaxvizError, unknown
from jaxviz.nn.kinds import kind_of_class_name
from jaxviz.nn.protocol import Forward, Shape, is_spatial


Reshape = Callable[[jax.Array], jax.Array]


class _Stop(Exception):
    """Raised inside a trace once every layer asked for has returned: the rest is not traced."""


@dataclasses.dataclass(frozen=True)
class _Layers:
    names: tuple[str, ...]  # in the order of first call
    done: tuple[str, ...]  # the same names in the order their calls return
    kinds: dict[str, str]


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
        self._reshape, self._outputs = reshape, outputs
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

    # -- policy hints (jaxviz.nn.policy) and the delegating methods kept for users ---------------
    def cam_layer_hint(self) -> str:
        """The last layer with a spatial map in the order the calls *return* (a block after its children)."""
        shapes = dict(self.shapes())
        spatial = [n for n in self._layers.done if is_spatial(shapes[n])]
        if not spatial:
            raise JaxvizError(f"{self.name} has no layer with a spatial map (H x W x C); give reshape= for token layers")
        return spatial[-1]

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
