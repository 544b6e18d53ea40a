"""Models as ordered sequences of named Flax layers (Keras layer names), and the model registry.

A :class:`Sequential` can be run on a batch, run *up to* a layer (nothing after it is computed),
*split at* a layer into a head and a tail, sliced like a list, and *tapped* for several layers in
one pass. Parameters are a plain dict ``{layer_name: {"kernel": ..., "bias": ...}}``.

The registry :data:`MODELS` is the one place an architecture is added.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import layers as L
from jaxviz.errors import JaxvizError, unknown

Params = dict[str, dict[str, jax.Array]]
Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Sequential:
    """An ordered sequence of ``(keras_name, flax_layer)`` steps plus what is needed to feed it.

    Attributes:
      name: registry name of the architecture (``vgg16``, ``fashion_cnn``, ...).
      layers: the steps, in order.
      input_shape: default input (H, W, C), e.g. (224, 224, 3).
      preprocessing: ``caffe``, ``tf``, ``scale255`` or ``none`` (see :mod:`jaxviz.preprocess`).
      labels: name of the label set of the last layer (``imagenet``, ``fashion``, ``cats_dogs``) or None.
    """

    name: str
    layers: tuple[tuple[str, nn.Module], ...]
    input_shape: Shape
    preprocessing: str = "none"
    labels: str | None = None

    # -- names ---------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [n for n, _ in self.layers]

    def index(self, name: str) -> int:
        """Position of layer ``name``; an unknown name raises an error listing the valid ones."""
        for i, (n, _) in enumerate(self.layers):
            if n == name:
                return i
        raise unknown("layer", name, self.layer_names, f" in {self.name}")

    def layer(self, name: str) -> nn.Module:
        return self.layers[self.index(name)][1]

    def names_of_kind(self, *kinds: str) -> list[str]:
        """Names of the layers of the given kinds ('conv', 'pool', 'dense', ...), in order."""
        return [n for n, l in self.layers if L.kind(l) in kinds]

    @property
    def last_conv(self) -> str:
        convs = self.names_of_kind("conv")
        if not convs:
            raise JaxvizError(f"{self.name} has no convolution layer")
        return convs[-1]

    # -- slicing -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, s: slice) -> "Sequential":
        if not isinstance(s, slice):
            raise TypeError("index a Sequential with a slice, e.g. model[:5]; use model.layer(name) for one layer")
        start = s.start or 0
        in_shape = self.input_shape if start == 0 else self.shapes()[start - 1][1]
        return dataclasses.replace(self, layers=self.layers[s], input_shape=in_shape)

    def split(self, name: str) -> tuple["Sequential", "Sequential"]:
        """``(head, tail)``: head ends with layer ``name``, tail is everything after it."""
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
    def shapes(self, input_shape: Sequence[int] | None = None) -> list[tuple[str, Shape]]:
        """Output shape (no batch axis) of every layer for ``input_shape`` (default: the model's).

        Raises a :class:`JaxvizError` if the input is too small or does not fit a dense top.
        """
        shape = tuple(input_shape or self.input_shape)
        self._check_channels(shape)
        out = []
        for name, layer in self.layers:
            if isinstance(layer, L.Dense) and self._dense_in(name) is not None and shape[-1] != self._dense_in(name):
                raise JaxvizError(
                    f"{self.name} with its dense top needs {self._fmt(self.input_shape)} inputs, "
                    f"got {self._fmt(input_shape)}: layer {name!r} expects {self._dense_in(name)} features, "
                    f"not {shape[-1]}; resize the image, or use a model without the top"
                )
            shape = layer.out_shape(shape)
            if min(shape) < 1:
                raise JaxvizError(
                    f"input {self._fmt(input_shape or self.input_shape)} is too small for {self.name}: "
                    f"layer {name!r} would have shape {shape}; use at least {self.min_input_size()}x"
                    f"{self.min_input_size()} pixels"
                )
            out.append((name, shape))
        return out

    def _check_channels(self, shape: Shape) -> None:
        if len(shape) != 3 or shape[-1] != self.input_shape[-1]:
            raise JaxvizError(
                f"{self.name} takes H x W x {self.input_shape[-1]} inputs, got shape {tuple(shape)}"
            )

    @functools.cached_property
    def _dense_inputs(self) -> dict[str, int]:
        """Input width each dense layer was built for, at the model's default input size."""
        sizes, shape = {}, self.input_shape
        for name, layer in self.layers:
            if isinstance(layer, L.Dense):
                sizes[name] = shape[-1]
            shape = layer.out_shape(shape)
        return sizes

    def _dense_in(self, name: str) -> int | None:
        return self._dense_inputs.get(name)

    @staticmethod
    def _fmt(shape: Sequence[int] | None) -> str:
        return "x".join(map(str, shape)) if shape is not None else "?"

    def min_input_size(self) -> int:
        """Smallest square input that leaves every spatial layer at least one pixel."""
        for size in range(1, 4097):
            shape: Shape = (size, size, self.input_shape[-1])
            for _, layer in self.layers:
                if isinstance(layer, (L.Flatten, L.Dense)) or min(shape) < 1:
                    break
                shape = layer.out_shape(shape)
            if min(shape) >= 1:
                return size
        raise JaxvizError(f"{self.name} has no usable input size up to 4096")  # pragma: no cover

    def check_input(self, x_shape: Sequence[int]) -> None:
        """Raise a clear error unless a batch of shape ``x_shape`` (N, H, W, C) fits the model."""
        if len(x_shape) != 4:
            raise JaxvizError(f"{self.name} takes a batch N x H x W x C, got shape {tuple(x_shape)}")
        self.shapes(tuple(x_shape[1:]))

    # -- parameters ----------------------------------------------------------------------
    def init(self, key: jax.Array, input_shape: Sequence[int] | None = None) -> Params:
        """Fresh Keras-style parameters (glorot-uniform kernels, zero biases)."""
        shape = tuple(input_shape or self.input_shape)
        params: Params = {}
        for i, ((name, layer), (_, out)) in enumerate(zip(self.layers, self.shapes(shape))):
            if L.has_params(layer):
                x = jnp.zeros((1,) + shape, jnp.float32)
                params[name] = layer.init(jax.random.fold_in(key, i), x)["params"]
            shape = out
        return params

    def param_shapes(self, input_shape: Sequence[int] | None = None) -> dict[str, dict[str, Shape]]:
        shape = tuple(input_shape or self.input_shape)
        out = {}
        for (name, layer), (_, o) in zip(self.layers, self.shapes(shape)):
            if L.has_params(layer):
                out[name] = L.param_shapes(layer, shape)
            shape = o
        return out

    def param_count(self, input_shape: Sequence[int] | None = None) -> int:
        return sum(int(np.prod(s)) for p in self.param_shapes(input_shape).values() for s in p.values())

    # -- running -------------------------------------------------------------------------
    def __call__(
        self,
        params: Mapping[str, Mapping[str, jax.Array]],
        x: jax.Array,
        *,
        until: str | None = None,
        logits: bool = False,
        train: bool = False,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Run on a batch ``x`` (N, H, W, C), up to and including layer ``until`` (default: all).

        ``logits=True`` returns the last computed layer before its activation (pre-softmax).
        ``train=True`` turns dropout on and needs ``rng``.
        """
        steps = self.layers if until is None else self.layers[: self.index(until) + 1]
        return self._run(steps, params, x, logits=logits, train=train, rng=rng)[0]

    def tap(
        self,
        params: Mapping[str, Mapping[str, jax.Array]],
        x: jax.Array,
        names: Iterable[str],
        *,
        logits: bool = False,
    ) -> dict[str, jax.Array]:
        """``{name: activation}`` for several layers in one forward pass that stops at the deepest."""
        names = list(names)
        if not names:
            return {}
        last = max(self.index(n) for n in names)
        _, acts = self._run(self.layers[: last + 1], params, x, logits=logits, keep=set(names))
        return {n: acts[n] for n in names}

    @functools.cached_property
    def jit_tap(self) -> Callable:
        """``jax.jit`` of :meth:`tap` (``names`` static), compiled once per model and shapes."""
        return jax.jit(self.tap, static_argnames=("names", "logits"))

    @functools.cached_property
    def jit_call(self) -> Callable:
        """``jax.jit`` of :meth:`__call__`."""
        return jax.jit(self.__call__, static_argnames=("until", "logits", "train"))

    def _run(self, steps, params, x, *, logits=False, train=False, rng=None, keep=()):
        acts = {}
        x = jnp.asarray(x)
        for i, (name, layer) in enumerate(steps):
            last = i == len(steps) - 1
            variables = {"params": params[name]} if L.has_params(layer) else {}
            rngs = {"dropout": jax.random.fold_in(rng, i)} if (train and rng is not None) else None
            x = layer.apply(variables, x, logits=logits and last, train=train, rngs=rngs)
            if name in keep:
                acts[name] = x
        return x, acts


# ---------------------------------------------------------------------------------------
# Architectures. Variants are partials of one definition.

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def _vgg_base(blocks: Sequence[tuple[int, int]] = VGG16_BLOCKS) -> list[tuple[str, nn.Module]]:
    steps: list[tuple[str, nn.Module]] = []
    for b, (features, n_convs) in enumerate(blocks, start=1):
        steps += [(f"block{b}_conv{i}", L.Conv2D(features, 3, "same")) for i in range(1, n_convs + 1)]
        steps.append((f"block{b}_pool", L.MaxPool2D()))
    return steps


def vgg16(include_top: bool = True) -> Sequential:
    """Keras ``VGG16``: 138,357,544 parameters with the top, 14,714,688 without (any input >= 32x32)."""
    steps = _vgg_base()
    if include_top:
        steps += [
            ("flatten", L.Flatten()),
            ("fc1", L.Dense(4096, "relu")),
            ("fc2", L.Dense(4096, "relu")),
            ("predictions", L.Dense(1000, "softmax")),
        ]
    return Sequential(
        "vgg16" if include_top else "vgg16_notop", tuple(steps), (224, 224, 3), "caffe",
        "imagenet" if include_top else None,
    )


def vgg16_finetuned() -> Sequential:
    """Seed 003's model: a ``vgg16_notop`` base at 150x150, then Flatten, Dense(256, relu), Dense(1, sigmoid)."""
    steps = _vgg_base() + [("flatten", L.Flatten()), ("dense", L.Dense(256, "relu")), ("dense_1", L.Dense(1, "sigmoid"))]
    return Sequential("vgg16_finetuned", tuple(steps), (150, 150, 3), "scale255", "cats_dogs")


def _small_cnn(
    name: str,
    convs: Sequence[int],
    padding: str,
    input_shape: Shape,
    dense: Sequence[tuple[int, str]],
    dropout: float,
    dropout_after_flatten: bool,
    labels: str,
) -> Sequential:
    """The books' small convnets: Conv2D/MaxPool pairs, Flatten, dense layers with one Dropout."""
    steps: list[tuple[str, nn.Module]] = []

    def keras_name(base: str, i: int) -> str:
        return base if i == 0 else f"{base}_{i}"

    for i, features in enumerate(convs):
        steps += [(keras_name("conv2d", i), L.Conv2D(features, 3, padding)), (keras_name("max_pooling2d", i), L.MaxPool2D())]
    steps.append(("flatten", L.Flatten()))
    if dropout_after_flatten:
        steps.append(("dropout", L.Dropout(dropout)))
    for i, (features, act) in enumerate(dense):
        steps.append((keras_name("dense", i), L.Dense(features, act)))
        if i == 0 and not dropout_after_flatten:
            steps.append(("dropout", L.Dropout(dropout)))
    return Sequential(name, tuple(steps), input_shape, "scale255", labels)


cats_dogs_small = functools.partial(
    _small_cnn, "cats_dogs_small", (32, 64, 128, 128), "valid", (150, 150, 3), ((512, "relu"), (1, "sigmoid")),
    0.5, True, "cats_dogs",
)
cats_dogs_small.__doc__ = "*Deep Learning with Python* 5.2 convnet, 150x150x3, 3,453,121 parameters."

fashion_cnn = functools.partial(
    _small_cnn, "fashion_cnn", (32, 64), "same", (28, 28, 1), ((100, "relu"), (10, "softmax")), 0.4, False, "fashion",
)
fashion_cnn.__doc__ = "Seed 004's Fashion-MNIST CNN, 28x28x1, 333,526 parameters."

digits_cnn = functools.partial(
    _small_cnn, "digits_cnn", (32, 64), "same", (28, 28, 1), ((100, "relu"), (10, "softmax")), 0.4, False, "digits",
)
digits_cnn.__doc__ = "The fashion_cnn architecture trained on scikit-learn's handwritten digits."

fruits_cnn = functools.partial(
    _small_cnn, "fruits_cnn", (32, 64), "same", (28, 28, 1), ((100, "relu"), (3, "softmax")), 0.4, False, "fruits",
)
fruits_cnn.__doc__ = "The fashion_cnn architecture with 3 classes, for the book's fruit photos (apple, pineapple, banana)."

MODELS: dict[str, Callable[[], Sequential]] = {
    "vgg16": functools.partial(vgg16, include_top=True),
    "vgg16_notop": functools.partial(vgg16, include_top=False),
    "vgg16_finetuned": vgg16_finetuned,
    "cats_dogs_small": cats_dogs_small,
    "fashion_cnn": fashion_cnn,
    "digits_cnn": digits_cnn,
    "fruits_cnn": fruits_cnn,
}


def get_model(name: str) -> Sequential:
    """Build a registered architecture by name; an unknown name lists the valid ones."""
    try:
        build = MODELS[name]
    except KeyError:
        raise unknown("model", name, sorted(MODELS)) from None
    return build()
