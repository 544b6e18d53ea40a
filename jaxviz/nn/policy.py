"""Policies: the defaults a capability picks for a model, as functions over the protocol's core.

The model protocol (:class:`jaxviz.nn.protocol.Model`) is mechanism only: names, shapes, kinds,
``run``, ``layer_params``. What to show by default and how to derive a variant of a model are policies,
written once here over that core, so every capability asks the same question the same way:

* :func:`cam_layer` — the default layer of the CAM methods and of ``jaxviz filters``;
* :func:`feature_layers` — the layers whose activations are shown by default;
* :func:`guided` — the same network with every ReLU's backward pass guided (guided backprop);
* :func:`init` / :func:`reinit` — fresh parameters, all or for some layers (the randomisation check).

A model that knows better overrides a policy with a *hint*: a method named ``<policy>_hint`` with the
policy's arguments less the model (``cam_layer_hint()``, ``feature_layers_hint()``, ``guided_hint()``);
``maps_hint()`` names the layers that are spatial maps, where a shape alone cannot say (both defaults
then choose among those by the same rules).
:func:`init` and :func:`reinit` are mechanisms only some models have (a module that can re-create its
parameters): they call the model's own ``init``/``reinit`` and raise a clear error for a model without.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from jaxviz.errors import JaxvizError
from jaxviz.nn.kinds import FEATURE_KINDS, PASSES_MAP_ON
from jaxviz.nn.protocol import Forward, Model, Shape, is_spatial


def _hint(model: Any, policy: str):
    return getattr(model, f"{policy}_hint", None)


FEATURE_CAP = 24  # the most layers feature_layers picks by default; more are spread evenly over the depth


def _maps(model: Model) -> list[tuple[str, Shape]]:
    """``(layer, shape)`` of every layer with a spatial map (H x W x C) at the model's input size, in call
    order; a model's ``maps_hint()`` narrows the candidates to the layers it knows to be maps (an ONNX
    graph, whose 3-D shapes may be an attention's heads x tokens x width)."""
    hint = _hint(model, "maps")
    names = set(hint()) if hint is not None else set(model.layer_names)
    return [(n, s) for n, s in model.shapes() if n in names and is_spatial(s)]


def _larger_than_one(shape: Shape) -> bool:
    return shape[0] * shape[1] > 1


def cam_layer(model: Model) -> str:
    """The default layer of the layer maps (Grad-CAM's): the model's ``cam_layer_hint()``, else the
    map the head reads — the last layer in call order whose map (at the model's input size) is larger
    than 1 x 1, so never the 1 x 1 maps after a global pooling (a classifier conv such as MobileNet's
    ``conv_preds``) — read back past the pooling, dropout and identity layers that end the body
    (:data:`~jaxviz.nn.kinds.PASSES_MAP_ON`: VGG16's ``block5_conv3``, not ``block5_pool``). A model
    whose maps are all 1 x 1 gets its last map; one without any map raises."""
    hint = _hint(model, "cam_layer")
    if hint is not None:
        return model.resolve(hint())
    maps = _maps(model)
    if not maps:
        raise JaxvizError(f"{model.name} has no layer with a spatial map (H x W x C); give reshape= for token layers")
    body = [n for n, s in maps if _larger_than_one(s)] or [maps[-1][0]]
    order, in_body = model.layer_names, set(body)
    i = order.index(body[-1])
    while model.kind(order[i]) in PASSES_MAP_ON and i > 0 and order[i - 1] in in_body:
        i -= 1
    return order[i]


def spread(names: Sequence[str], cap: int = FEATURE_CAP) -> list[str]:
    """``names`` if there are at most ``cap``, else ``cap`` of them spread evenly over the sequence, the
    first and the last kept."""
    names = list(names)
    if len(names) <= cap:
        return names
    return [names[round(i * (len(names) - 1) / (cap - 1))] for i in range(cap)]


def feature_layers(model: Model) -> list[str]:
    """The layers whose activations are shown by default: the model's ``feature_layers_hint()``, else
    every conv, pool, activation and merge layer (:data:`~jaxviz.nn.kinds.FEATURE_KINDS`) whose map is
    larger than 1 x 1 at the model's input size, over the whole network (past any global pooling or
    dropout inside a block, such as a squeeze-and-excite's) — or, with none of those kinds, every layer
    with such a map — in call order, at most :data:`FEATURE_CAP` spread evenly over the depth
    (:func:`spread`)."""
    hint = _hint(model, "feature_layers")
    if hint is not None:
        return [model.resolve(n) for n in hint()]
    names = [n for n, s in _maps(model) if _larger_than_one(s)] or [n for n, _ in _maps(model)]
    return spread([n for n in names if model.kind(n) in FEATURE_KINDS] or names)


def guided(model: Model) -> Model:
    """The same network, same parameters, with every ReLU and ReLU6 backward pass guided (guided
    backprop). The model's ``guided_hint()`` when it has one (a graph swaps its activation layers);
    else :class:`Guided`, whose ``run`` traces the model inside :func:`jaxviz.nn.guided.guided_relus`."""
    hint = _hint(model, "guided")
    if hint is not None:
        return hint()
    return Guided(model)


class Guided:
    """``model`` with its ReLUs guided in the traces of its :meth:`run` only (see :func:`guided`); every
    other member is the model's own."""

    def __init__(self, model: Model):
        self._model = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __hash__(self) -> int:
        return hash((Guided, self._model))

    def __eq__(self, other) -> bool:
        return isinstance(other, Guided) and other._model == self._model

    def run(self, params: Any, x: jax.Array, **kw) -> Forward:
        from jaxviz.nn.guided import guided_relus

        with guided_relus():
            return self._model.run(params, x, **kw)

    def with_preprocessing(self, mode: str) -> "Guided":
        return Guided(self._model.with_preprocessing(mode))


def init(model: Model, key: jax.Array, input_shape: Sequence[int] | None = None) -> Any:
    """Fresh, untrained parameters of ``model`` (its own ``init``); a model that cannot re-create them raises."""
    if not callable(getattr(model, "init", None)):
        raise JaxvizError(f"{model.name} cannot re-create its untrained parameters; build a fresh module "
                          "yourself and adapt it")
    return model.init(key, input_shape)


def reinit(model: Model, params: Any, key: jax.Array, layers: Sequence[str],
           input_shape: Sequence[int] | None = None) -> Any:
    """``params`` with the weights of ``layers`` freshly initialised from ``key`` (the model's own
    ``reinit``); a model that cannot re-create its parameters raises."""
    if not callable(getattr(model, "reinit", None)):
        raise JaxvizError(f"{model.name} cannot re-create its untrained parameters, so it cannot re-initialise "
                          "layers; build a fresh module yourself and adapt it")
    return model.reinit(params, key, layers, input_shape)
