"""Flax layers with Keras semantics (NHWC, float32, Keras parameter names and initialisers).

Every layer takes ``logits`` (skip the activation, e.g. softmax) and ``train`` (dropout on)
and knows its own output shape, so a model can check an input size before running anything.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Shape = tuple[int, ...]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "sigmoid": jax.nn.sigmoid,
}

# Keras's defaults: glorot_uniform kernels, zero biases.
_kernel_init = nn.initializers.glorot_uniform()
_bias_init = nn.initializers.zeros_init()


class Conv2D(nn.Module):
    """Keras ``Conv2D`` (stride 1) including its activation; params ``kernel`` (HWIO) and ``bias``."""

    features: int
    kernel_size: int = 3
    padding: str = "valid"
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", _kernel_init, (k, k, x.shape[-1], self.features))
        bias = self.param("bias", _bias_init, (self.features,))
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), (1, 1), self.padding.upper(),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ) + bias.astype(x.dtype)
        return y if logits else ACTIVATIONS[self.activation](y)

    def out_shape(self, shape: Shape) -> Shape:
        h, w, _ = shape
        if self.padding == "valid":
            h, w = h - self.kernel_size + 1, w - self.kernel_size + 1
        return (h, w, self.features)


class MaxPool2D(nn.Module):
    """Keras ``MaxPooling2D(2)``: 2x2 windows, stride 2, 'valid' (an odd last row/column is dropped).

    Written as crop-reshape-max rather than ``reduce_window``: same values, and its backward pass
    avoids XLA's select-and-scatter, which dominated the gradient-ascent step on CPU.
    """

    pool: int = 2

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        p = self.pool
        n, h, w, c = x.shape
        x = x[:, : h // p * p, : w // p * p]
        return x.reshape(n, h // p, p, w // p, p, c).max(axis=(2, 4))

    def out_shape(self, shape: Shape) -> Shape:
        h, w, c = shape
        return (h // self.pool, w // self.pool, c)


class Flatten(nn.Module):
    """Keras ``Flatten``: row-major over (H, W, C), so Keras Dense kernels apply unchanged."""

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x.reshape(x.shape[0], -1)

    def out_shape(self, shape: Shape) -> Shape:
        size = 1
        for d in shape:
            size *= d
        return (size,)


class Dense(nn.Module):
    """Keras ``Dense`` including its activation; ``logits=True`` returns the pre-activation."""

    features: int
    activation: str = "linear"

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        kernel = self.param("kernel", _kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", _bias_init, (self.features,))
        y = x @ kernel.astype(x.dtype) + bias.astype(x.dtype)
        return y if logits else ACTIVATIONS[self.activation](y)

    def out_shape(self, shape: Shape) -> Shape:
        return (self.features,)


class Dropout(nn.Module):
    """Keras ``Dropout``: identity at inference; with ``train=True`` needs a ``'dropout'`` rng."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return nn.Dropout(self.rate, deterministic=not train)(x)

    def out_shape(self, shape: Shape) -> Shape:
        return shape


def has_params(layer: nn.Module) -> bool:
    return isinstance(layer, (Conv2D, Dense))


def kind(layer: nn.Module) -> str:
    """'conv', 'pool', 'flatten', 'dense' or 'dropout'."""
    return {Conv2D: "conv", MaxPool2D: "pool", Flatten: "flatten", Dense: "dense", Dropout: "dropout"}[
        type(layer)
    ]


def param_shapes(layer: nn.Module, in_shape: Shape) -> dict[str, Shape]:
    """Parameter shapes of ``layer`` for an input of shape ``in_shape`` (no batch axis)."""
    if isinstance(layer, Conv2D):
        k = layer.kernel_size
        return {"kernel": (k, k, in_shape[-1], layer.features), "bias": (layer.features,)}
    if isinstance(layer, Dense):
        return {"kernel": (in_shape[-1], layer.features), "bias": (layer.features,)}
    return {}
