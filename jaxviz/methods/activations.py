"""Intermediate activations: every requested layer of a batch in one jitted forward pass."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np

from jaxviz.nn import policy
from jaxviz.nn.arguments import check_batch, check_layers, check_params
from jaxviz.nn.protocol import Model
from jaxviz.nn.jit import jit


def default_layers(model: Model) -> list[str]:
    """:func:`jaxviz.nn.policy.feature_layers` of the model (every conv and pool layer of a zoo graph:
    the seeds' ``model.layers[:8]`` for the small CNNs)."""
    return policy.feature_layers(model)


class Activations(dict):
    """``{layer: activation}`` as :func:`activations` returns it: a plain dict (``acts[layer]``, ``.items()``,
    a pytree for ``jax.tree``) that draws itself in a notebook (each layer's channel grid of the first
    image, :func:`jaxviz.viz.display.html`)."""

    def _repr_html_(self) -> str:
        from jaxviz.viz.display import html

        return html(self)


jax.tree_util.register_pytree_with_keys(
    Activations, lambda d: ([(jax.tree_util.DictKey(k), v) for k, v in d.items()], tuple(d)),
    lambda keys, values: Activations(zip(keys, values)))


@functools.lru_cache(maxsize=32)
def _tap(model: Model, names: tuple[str, ...]):
    return jit(lambda params, x: model.run(params, x, taps=names, output=False).taps)


def activations(model: Model, params: Any, x: jax.Array, layers: Sequence[str] | None = None) -> Activations:
    """Activations of several layers for a batch, in one jitted pass.

    Args:
      model: any :class:`~jaxviz.nn.protocol.Model` (a zoo name's model, an imported Keras file, an
        adapted Flax module).
      params: its parameters.
      x: a preprocessed batch, N x H x W x C.
      layers: layer names (default: :func:`default_layers`).
    Returns:
      ``{layer: activation}`` (an :class:`Activations` dict) in the order asked, N x h x w x C for spatial layers. The pass stops at
      the deepest requested layer; a second call with the same shapes does not recompile.
    """
    x = check_batch(x)  # integers become float32; NaN/Inf, an empty batch or another rank are refused
    layers = check_layers(model, layers) and list(layers)
    names = tuple(model.resolve(n) for n in layers) if layers is not None else tuple(default_layers(model))
    model.check_input(np.shape(x))
    check_params(model, params, x.shape[1:])
    out = _tap(model, names)(params, x)
    keys = list(layers) if layers is not None else list(names)
    return Activations((k, out[n]) for k, n in zip(keys, names))  # jit returns dicts with sorted keys; keep the layer order
