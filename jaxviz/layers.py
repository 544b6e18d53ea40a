"""Flax layers with Keras semantics (NHWC, float32, Keras parameter names and initialisers).

Every layer takes ``logits`` (skip the activation, e.g. softmax) and ``train`` (dropout on)
and knows its own output shape, so a model can check an input size before running anything.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Shape = tuple[int, ...]

@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose gradient passes only where the input was positive *and* the incoming gradient is
    positive (guided backpropagation, Springenberg et al. 2015)."""
    return jax.nn.relu(x)


def _guided_fwd(x):
    return jax.nn.relu(x), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, 0.0),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "guided_relu": guided_relu,
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, p: int) -> jax.Array:
    """p x p max pooling, stride p, 'valid', of N x H x W x C, by crop-reshape-max.

    The gradient goes to the *first* maximum of each window in row-major order, as TensorFlow's
    and XLA's select-and-scatter do (``jnp.max`` would split it among tied maxima, e.g. the zeros
    after a ReLU, which changes per-pixel gradients though not their sums). Computing it from a
    one-hot argmax avoids select-and-scatter, which dominated the gradient-ascent step on CPU.
    """
    return _pool_windows(x, p).max(axis=-1)


def _pool_windows(x: jax.Array, p: int) -> jax.Array:
    n, h, w, c = x.shape
    x = x[:, : h // p * p, : w // p * p].reshape(n, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, h // p, w // p, c, p * p)


def _max_pool_fwd(x, p):
    win = _pool_windows(x, p)
    return win.max(axis=-1), (jnp.argmax(win, axis=-1), x.shape)


def _max_pool_bwd(p, res, g):
    first, (n, h, w, c) = res
    win = jax.nn.one_hot(first, p * p, dtype=g.dtype) * g[..., None]  # n h/p w/p c p*p
    dx = win.reshape(n, h // p, w // p, c, p, p).transpose(0, 1, 4, 2, 5, 3).reshape(n, h // p * p, w // p * p, c)
    return (jnp.pad(dx, ((0, 0), (0, h - h // p * p), (0, w - w // p * p), (0, 0))),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class MaxPool2D(nn.Module):
    """Keras ``MaxPooling2D(2)``: 2x2 windows, stride 2, 'valid' (an odd last row/column is dropped);
    see :func:`max_pool` for its gradient."""

    pool: int = 2

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return max_pool(x, self.pool)

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
