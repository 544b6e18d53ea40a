"""The model protocol: the one way every capability talks to a network.

Activations, filter patterns, the CAM and attribution family, weight statistics, the CLI and the demo
use only what :class:`Model` declares. The zoo's and the Keras importer's graphs
(:class:`jaxviz.nn.graph.Sequential`) implement it, and so do the adapters for your own Flax NNX and
Linen modules (:func:`jaxviz.adapt`). Everything a capability needs reduces to one primitive,
:meth:`Model.run`: one forward pass that returns the output, the activations at named layers, and
adds a perturbation at named layers — the gradient with respect to a layer's output is the gradient
with respect to that perturbation at zero, so no capability needs to split a model.

The protocol is the core every model must provide: its names (``name``, ``input_shape``,
``preprocessing``, ``labels``), its layers (``layer_names``, ``resolve``, ``kind``, ``shapes``,
``check_input``, ``layer_params``), ``with_preprocessing`` and ``run``. The defaults a capability picks
(the CAM layer, the feature layers) and the variants it derives (guided backprop, fresh parameters) are
policies over this core, in :mod:`jaxviz.nn.policy`; a model may override one with a hint
(``cam_layer_hint``, ``feature_layers_hint``, ``guided_hint``) and may offer ``init``/``reinit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import jax

Shape = tuple[int, ...]


class Forward(NamedTuple):
    """What :meth:`Model.run` returns.

    Attributes:
      output: the model's output (probabilities for a softmax top), N x K; ``None`` when the pass
        stopped at the deepest tap (``output=False``).
      logits: the output before the last layer's activation (equal to ``output`` when the model has no
        final activation), N x K; ``None`` with ``output=False``.
      taps: ``{layer: activation}`` for the requested layers (N x H x W x C for spatial layers).
    """

    output: jax.Array | None
    logits: jax.Array | None
    taps: dict[str, jax.Array]


@runtime_checkable
class Model(Protocol):
    """A network as the capabilities see it (see the module docstring).

    Attributes:
      name: a name for captions and errors.
      input_shape: the default input (H, W, C).
      preprocessing: how pixels 0..255 become model input (a mode of :mod:`jaxviz.nn.preprocess`).
      labels: the label set of the output (``imagenet``, ...), or None.
    """

    name: str
    input_shape: Shape
    preprocessing: str
    labels: str | None

    @property
    def layer_names(self) -> list[str]:
        """Every addressable layer, in call order."""

    def resolve(self, name: str) -> str:
        """The layer behind ``name`` (an alias or a layer name); an unknown name raises a
        :class:`~jaxviz.errors.JaxvizError` that lists the valid ones."""

    def kind(self, name: str) -> str:
        """``conv``, ``pool``, ``dense``, ``act``, ``norm``, ``block`` (a module of modules), ... ."""

    def shapes(self, input_shape: Sequence[int] | None = None, until: str | None = None) -> list[tuple[str, Shape]]:
        """Output shape (no batch axis) of every layer for an input (H, W, C), the last entry the
        model's output; a bad size raises. With ``until``, only the layers up to that one (a dense top
        does not then limit the input size)."""

    def check_input(self, x_shape: Sequence[int]) -> None:
        """Raise a clear error unless a batch of shape (N, H, W, C) fits."""

    def run(self, params: Any, x: jax.Array, *, taps: Sequence[str] = (),
            perturb: Mapping[str, jax.Array] | None = None, output: bool = True, logits: bool = False,
            channel: tuple[str, jax.Array] | None = None) -> Forward:
        """One forward pass of a batch ``x`` (N, H, W, C, preprocessed).

        Args:
          taps: layers whose outputs to return.
          perturb: ``{layer: array}`` added to those layers' outputs (zeros leave the result unchanged;
            differentiate with respect to them for the gradient at a layer).
          output: False stops at the deepest tap (``Forward.output``/``logits`` are None).
          logits: taps of layers with a built-in final activation are taken before it.
          channel: ``(layer, index)``: that layer's tap holds only channel ``index`` (N, ..., 1); a
            model may then compute just that channel.
        """

    def with_preprocessing(self, mode: str) -> "Model":
        """The same network (same parameters) fed with another preprocessing."""

    def layer_params(self, params: Any, name: str) -> dict[str, jax.Array]:
        """The weights of one layer, ``{name: array}`` (kernels H x W x in x out); ``{}`` if it has none."""


@dataclasses.dataclass
class Loaded:
    """A model with its parameters, as :func:`jaxviz.load_model` and :func:`jaxviz.adapt` return it.

    Attributes:
      model: the network (:class:`Model`).
      params: its parameters (any pytree the model's ``run`` takes).
      trained: False for fresh random weights (captions say UNTRAINED).
      source: where the parameters came from, for captions and logs.
    """

    model: Model
    params: Any
    trained: bool
    source: str

    def _repr_html_(self) -> str:
        from jaxviz.viz.display import html

        return html(self)


def output_shape(model: Model, input_shape: Sequence[int] | None = None) -> Shape:
    """The shape (no batch axis) of the model's output."""
    return model.shapes(input_shape)[-1][1]


def layer_shape(model: Model, layer: str, input_shape: Sequence[int] | None = None) -> Shape:
    """The output shape (no batch axis) of one layer (only the layers up to it must fit the input)."""
    layer = model.resolve(layer)
    return dict(model.shapes(input_shape, until=layer))[layer]


def is_spatial(shape: Shape) -> bool:
    return len(shape) == 3
