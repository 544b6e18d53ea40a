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


@jax.custom_vjp
def guided_relu6(x: jax.Array) -> jax.Array:
    """ReLU6 with the guided gradient: it passes where ``0 < x < 6`` and the incoming gradient is positive."""
    return jax.nn.relu6(x)


def _guided6_fwd(x):
    return jax.nn.relu6(x), x


def _guided6_bwd(x, g):
    return (jnp.where((x > 0) & (x < 6) & (g > 0), g, 0.0),)


guided_relu6.defvjp(_guided6_fwd, _guided6_bwd)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "guided_relu": guided_relu,
    "guided_relu6": guided_relu6,
    "relu6": jax.nn.relu6,
    "swish": jax.nn.swish,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "sigmoid": jax.nn.sigmoid,
}

# Keras's defaults: glorot_uniform kernels, zero biases.
_kernel_init = nn.initializers.glorot_uniform()
_bias_init = nn.initializers.zeros_init()


def conv(x: jax.Array, kernel: jax.Array, strides: int, padding: str, groups: int = 1) -> jax.Array:
    # "SAME" pads as TensorFlow does (the odd extra pixel at the bottom/right), so strided
    # Keras and TF-ported PyTorch convolutions agree.
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (strides, strides), padding.upper(),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )


def _depthwise(x: jax.Array, kernel: jax.Array, strides: int, padding: str) -> jax.Array:
    """Depth multiplier 1: kernel k x k x C x 1 (Keras's layout), one k x k filter per channel."""
    k, c = kernel.shape[0], x.shape[-1]
    return conv(x, kernel.reshape(k, k, 1, c), strides, padding, groups=c)


def _bias_activation(layer: nn.Module, y: jax.Array, features: int, logits: bool) -> jax.Array:
    """The end every conv layer shares: ``+ bias`` if it has one, then its activation unless ``logits``."""
    if layer.use_bias:
        y = y + layer.param("bias", _bias_init, (features,)).astype(y.dtype)
    return y if logits else ACTIVATIONS[layer.activation](y)


def _with_bias(layer: nn.Module, shapes: dict[str, Shape], features: int) -> dict[str, Shape]:
    return {**shapes, "bias": (features,)} if layer.use_bias else shapes


def _conv_out(shape: Shape, k: int, strides: int, padding: str, features: int) -> Shape:
    h, w, _ = shape
    if padding == "valid":
        h, w = (h - k) // strides + 1, (w - k) // strides + 1
    else:
        h, w = -(-h // strides), -(-w // strides)
    return (h, w, features)


class Conv2D(nn.Module):
    """Keras ``Conv2D`` including its activation; params ``kernel`` (HWIO) and ``bias`` (if ``use_bias``)."""

    features: int
    kernel_size: int = 3
    padding: str = "valid"
    activation: str = "relu"
    strides: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", _kernel_init, (k, k, x.shape[-1], self.features))
        return _bias_activation(self, conv(x, kernel, self.strides, self.padding), self.features, logits)

    def out_shape(self, shape: Shape) -> Shape:
        return _conv_out(shape, self.kernel_size, self.strides, self.padding, self.features)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        k = self.kernel_size
        return _with_bias(self, {"kernel": (k, k, shape[-1], self.features)}, self.features)


class DepthwiseConv2D(nn.Module):
    """Keras ``DepthwiseConv2D`` (depth multiplier 1): ``depthwise_kernel`` k x k x C x 1, optional ``bias``."""

    kernel_size: int = 3
    padding: str = "same"
    activation: str = "linear"
    strides: int = 1
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        c, k = x.shape[-1], self.kernel_size
        dw = self.param("depthwise_kernel", _kernel_init, (k, k, c, 1))
        return _bias_activation(self, _depthwise(x, dw, self.strides, self.padding), c, logits)

    def out_shape(self, shape: Shape) -> Shape:
        return _conv_out(shape, self.kernel_size, self.strides, self.padding, shape[-1])

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        k, c = self.kernel_size, shape[-1]
        return _with_bias(self, {"depthwise_kernel": (k, k, c, 1)}, c)


class SeparableConv2D(nn.Module):
    """Keras ``SeparableConv2D``: a depthwise k x k conv (``depthwise_kernel`` k x k x C x 1), then a
    1 x 1 conv (``pointwise_kernel`` 1 x 1 x C x F), optional ``bias``, then the activation."""

    features: int
    kernel_size: int = 3
    padding: str = "same"
    activation: str = "linear"
    strides: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        c, k = x.shape[-1], self.kernel_size
        dw = self.param("depthwise_kernel", _kernel_init, (k, k, c, 1))
        pw = self.param("pointwise_kernel", _kernel_init, (1, 1, c, self.features))
        y = conv(_depthwise(x, dw, self.strides, self.padding), pw, 1, "valid")
        return _bias_activation(self, y, self.features, logits)

    def out_shape(self, shape: Shape) -> Shape:
        return _conv_out(shape, self.kernel_size, self.strides, self.padding, self.features)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        k, c = self.kernel_size, shape[-1]
        return _with_bias(self, {"depthwise_kernel": (k, k, c, 1), "pointwise_kernel": (1, 1, c, self.features)},
                          self.features)


class BatchNormalization(nn.Module):
    """Keras ``BatchNormalization`` in inference mode (moving statistics, also when ``train=True``):
    params ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``, computed as Keras does,
    ``x * (gamma * rsqrt(var + eps)) + (beta - mean * gamma * rsqrt(var + eps))``."""

    epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones_init(), (c,))
        beta = self.param("beta", nn.initializers.zeros_init(), (c,))
        mean = self.param("moving_mean", nn.initializers.zeros_init(), (c,))
        var = self.param("moving_variance", nn.initializers.ones_init(), (c,))
        inv = jax.lax.rsqrt(var + self.epsilon) * gamma
        return x * inv.astype(x.dtype) + (beta - mean * inv).astype(x.dtype)

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        c = shape[-1]
        return {"gamma": (c,), "beta": (c,), "moving_mean": (c,), "moving_variance": (c,)}


class Activation(nn.Module):
    """Keras ``Activation`` (``relu``, ``relu6``, ``swish``...); ``logits=True`` skips it."""

    activation: str = "relu"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x if logits else ACTIVATIONS[self.activation](x)

    def out_shape(self, shape: Shape) -> Shape:
        return shape


class Add(nn.Module):
    """Keras ``Add``: the sum of its inputs (the residual connection); reads two named steps."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def out_shape(self, *shapes: Shape) -> Shape:
        if len(set(shapes)) != 1:
            raise ValueError(f"Add needs equal shapes, got {shapes}")
        return shapes[0]


class GlobalAveragePooling2D(nn.Module):
    """Keras ``GlobalAveragePooling2D``: the mean over H and W, N x C."""

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x.mean(axis=(1, 2))

    def out_shape(self, shape: Shape) -> Shape:
        return (shape[-1],)


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
    """Keras ``MaxPooling2D``. The default 2x2, stride 2, 'valid' (an odd last row/column is dropped)
    uses :func:`max_pool`; other windows (Xception's 3x3, stride 2, 'same') use ``reduce_window``,
    whose gradient (select-and-scatter) also goes to the first maximum."""

    pool: int = 2
    strides: int | None = None
    padding: str = "valid"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        s = self.strides or self.pool
        if s == self.pool and self.padding == "valid":
            return max_pool(x, self.pool)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, self.pool, self.pool, 1), (1, s, s, 1),
                                     self.padding.upper())

    def out_shape(self, shape: Shape) -> Shape:
        return _conv_out(shape, self.pool, self.strides or self.pool, self.padding, shape[-1])


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

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        return {"kernel": (shape[-1], self.features), "bias": (self.features,)}


class Dropout(nn.Module):
    """Keras ``Dropout``: identity at inference; with ``train=True`` needs a ``'dropout'`` rng."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return nn.Dropout(self.rate, deterministic=not train)(x)

    def out_shape(self, shape: Shape) -> Shape:
        return shape


_KINDS = {
    Conv2D: "conv", SeparableConv2D: "conv", DepthwiseConv2D: "conv", BatchNormalization: "norm",
    Activation: "act", Add: "add", MaxPool2D: "pool", GlobalAveragePooling2D: "global_pool",
    Flatten: "flatten", Dense: "dense", Dropout: "dropout",
}


def has_params(layer: nn.Module) -> bool:
    return hasattr(layer, "param_shapes")


def kind(layer: nn.Module) -> str:
    """'conv' (also separable and depthwise), 'norm', 'act', 'add', 'pool', 'global_pool',
    'flatten', 'dense' or 'dropout'."""
    return _KINDS[type(layer)]


def param_shapes(layer: nn.Module, in_shape: Shape) -> dict[str, Shape]:
    """Parameter shapes of ``layer`` for an input of shape ``in_shape`` (no batch axis), in Keras's order."""
    return layer.param_shapes(in_shape) if has_params(layer) else {}
