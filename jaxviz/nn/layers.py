"""Flax layers with Keras semantics (NHWC, float32, Keras parameter names, order and initialisers).

Every layer takes ``logits`` (skip its built-in activation, e.g. softmax) and ``train`` (dropout and
noise on, with a ``'dropout'`` rng) and carries its own facts, so no caller needs ``isinstance``:

* ``kind``: ``conv``, ``pool``, ``global_pool``, ``dense``, ``norm``, ``act``, ``merge``, ``flatten``,
  ``reshape``, ``dropout``, ``identity``, ``pad``, ``resize`` or ``input_transform``;
* ``out_shape(*in_shapes)`` and ``param_shapes(*in_shapes)`` (no batch axis; parameters in the order
  Keras creates them, which is the order of a ``.keras`` file's ``vars/0, 1, ...``);
* ``keeps_spatial``: given a spatial input (H x W x C), the output is still a map over the same kind
  of grid (convs, pools, norms, activations, merges, per-pixel Dense...); False for flatten, global
  pooling without ``keepdims``, reshape and permute;
* ``weighted``: whether it has parameters;
* ``one_channel(x, index, *, logits=False)`` (run with ``apply(..., method="one_channel")``) on the
  conv layers only: output channel ``index`` alone, computed from that filter only and equal to the
  full layer's channel; the filter-pattern ascent uses it.

Layers with an ``activation`` field (``Conv2D``, ``Dense``, ``Activation``, ...) are the ones guided
backpropagation rewrites with ``clone(activation=...)``; the importer maps Keras's ``ReLU()`` and
``ReLU(max_value=6)`` onto ``Activation("relu")``/``Activation("relu6")`` so they take part.

Why one module of ~1,300 lines: one small Flax module per Keras layer class, each carrying its own
facts (kind, shape rule, parameters), registered in one LAYERS table that checkpoints serialise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Shape = tuple[int, ...]
Pair = int | tuple[int, int]


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose gradient passes only where the input was positive *and* the incoming gradient is
    positive (guided backpropagation, Springenberg et al. 2015)."""
    return jnp.maximum(x, 0)  # not jax.nn.relu: an adapted model's guided copy swaps that name for this


def _guided_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, 0.0),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def guided_relu6(x: jax.Array) -> jax.Array:
    """ReLU6 with the guided gradient: it passes where ``0 < x < 6`` and the incoming gradient is positive."""
    return jnp.clip(x, 0, 6)


def _guided6_fwd(x):
    return jnp.clip(x, 0, 6), x


def _guided6_bwd(x, g):
    return (jnp.where((x > 0) & (x < 6) & (g > 0), g, 0.0),)


guided_relu6.defvjp(_guided6_fwd, _guided6_bwd)


def _sparsemax(x: jax.Array, axis: int = -1) -> jax.Array:
    """Keras's sparsemax (Martins & Astudillo 2016), as its JAX backend computes it."""
    srt = -jnp.sort(-x, axis=axis)
    cum = jnp.cumsum(srt, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    r = jnp.arange(1, x.shape[axis] + 1).reshape(shape)
    support = srt - (cum - 1) / r > 0
    k = jnp.sum(support, axis=axis, keepdims=True)
    tau = (jnp.sum(jnp.where(support, cum, 0.0), axis=axis, keepdims=True) - 1) / k
    return jnp.maximum(x - tau, 0.0)


# Every activation Keras 3 can name in a config (keras.activations.ALL_OBJECTS_DICT), with Keras's own
# defaults (gelu exact, leaky_relu 0.2, elu/celu alpha 1, the shrinks 0.5, squareplus b=4), plus the
# guided ReLUs. ``threshold`` needs arguments and cannot be named in a config, so it is absent.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "guided_relu": guided_relu,
    "guided_relu6": guided_relu6,
    "relu6": jax.nn.relu6,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
    "sparsemax": _sparsemax,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "sparse_sigmoid": jax.nn.sparse_sigmoid,
    "log_sigmoid": jax.nn.log_sigmoid,
    "hard_silu": jax.nn.hard_silu,
    "hard_swish": jax.nn.hard_silu,
    "tanh": jnp.tanh,
    "hard_tanh": jax.nn.hard_tanh,
    "tanh_shrink": lambda x: x - jnp.tanh(x),
    "soft_shrink": lambda x: jnp.where(x > 0.5, x - 0.5, jnp.where(x < -0.5, x + 0.5, 0.0)),
    "hard_shrink": lambda x: jnp.where(jnp.abs(x) > 0.5, x, 0.0),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "celu": jax.nn.celu,
    "glu": lambda x: jax.nn.glu(x, axis=-1),
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "squareplus": lambda x: jax.nn.squareplus(x, 4),
    "sparse_plus": jax.nn.sparse_plus,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "exponential": jnp.exp,
}


def activation_shape(name: str, shape: Shape) -> Shape:
    """Output shape of activation ``name`` (``glu`` halves the channels, the rest keep the shape)."""
    if name == "glu":
        if shape[-1] % 2:
            raise ValueError(f"glu needs an even number of channels, got {shape[-1]}")
        return shape[:-1] + (shape[-1] // 2,)
    return shape


# Keras's defaults: glorot_uniform kernels, zero biases.
_kernel_init = nn.initializers.glorot_uniform()
_bias_init = nn.initializers.zeros_init()


def pair(v: Pair) -> tuple[int, int]:
    """``3 -> (3, 3)``; a pair stays as it is."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv(x: jax.Array, kernel: jax.Array, strides: Pair, padding: str, groups: int = 1, dilation: Pair = 1
         ) -> jax.Array:
    """Keras's convolution (HWIO kernel). "SAME" pads as TensorFlow does (the odd extra pixel at the
    bottom/right, for the dilated kernel), so strided Keras and TF-ported PyTorch convolutions agree."""
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), pair(strides), padding.upper(), rhs_dilation=pair(dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )


def _depthwise(x: jax.Array, kernel: jax.Array, strides: Pair, padding: str, dilation: Pair = 1) -> jax.Array:
    """Kernel kh x kw x C x M (Keras's layout): M filters per input channel, output channel c*M + m."""
    kh, kw, c, m = kernel.shape
    if jax.default_backend() == "cpu":  # XLA:CPU runs a grouped conv ~10x slower than these kh*kw products
        return _depthwise_shifted(x, kernel.reshape(kh, kw, c * m), strides, padding, dilation, m)
    return conv(x, kernel.reshape(kh, kw, 1, c * m), strides, padding, groups=c, dilation=dilation)


def _depthwise_shifted(x: jax.Array, k: jax.Array, strides: Pair, padding: str, dilation: Pair, m: int) -> jax.Array:
    """The depthwise conv as a sum of kh*kw shifted, strided slices times one kernel tap each (same
    padding as :func:`conv`: TensorFlow's, the odd pixel at the bottom/right)."""
    (kh, kw, _), (sh, sw), (dh, dw) = k.shape, pair(strides), pair(dilation)
    x = jnp.repeat(x, m, axis=-1) if m > 1 else x  # output channel c*M + m reads input channel c
    h, w = x.shape[1:3]
    if padding.lower() == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        ph, pw = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0), max((ow - 1) * sw + (kw - 1) * dw + 1 - w, 0)
        x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    k = k.astype(x.dtype)
    taps = [x[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw] * k[i, j]
            for i in range(kh) for j in range(kw)]
    return functools.reduce(jnp.add, taps)


def _conv_out(shape: Shape, k: Pair, strides: Pair, padding: str, features: int, dilation: Pair = 1) -> Shape:
    (kh, kw), (sh, sw), (dh, dw) = pair(k), pair(strides), pair(dilation)
    h, w = shape[0], shape[1]
    if padding == "valid":
        h, w = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    else:
        h, w = -(-h // sh), -(-w // sw)
    return (h, w, features)


class Layer(nn.Module):
    """What every jaxviz layer knows about itself (see the module docstring); no fields, no parameters."""

    kind = "identity"
    keeps_spatial = True
    weighted = False

    def out_shape(self, *shapes: Shape) -> Shape:
        return shapes[0]

    def param_shapes(self, *shapes: Shape) -> dict[str, Shape]:
        return {}


class _ConvBase(Layer):
    """The end every conv layer shares: ``+ bias`` if it has one, then its activation unless ``logits``."""

    kind = "conv"
    weighted = True

    def _finish(self, y: jax.Array, features: int, logits: bool, bias: jax.Array | None = None) -> jax.Array:
        if self.use_bias:
            if bias is None:
                bias = self.param("bias", _bias_init, (features,))
            y = y + bias.astype(y.dtype)
        return y if logits else ACTIVATIONS[self.activation](y)

    def _bias_shapes(self, shapes: dict[str, Shape], features: int) -> dict[str, Shape]:
        return {**shapes, "bias": (features,)} if self.use_bias else shapes

    def _channel_bias(self, index: jax.Array) -> jax.Array | None:
        p = self.variables["params"]
        return jax.lax.dynamic_slice_in_dim(p["bias"], index, 1, axis=0) if self.use_bias else None


class Conv2D(_ConvBase):
    """Keras ``Conv2D`` including its activation; params ``kernel`` (kh x kw x C/groups x F) and ``bias``
    (if ``use_bias``). ``kernel_size``, ``strides`` and ``dilation``: an int or (h, w)."""

    features: int
    kernel_size: Pair = 3
    padding: str = "valid"
    activation: str = "relu"
    strides: Pair = 1
    use_bias: bool = True
    dilation: Pair = 1
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        kernel = self.param("kernel", _kernel_init, self.param_shapes(x.shape[1:])["kernel"])
        y = conv(x, kernel, self.strides, self.padding, self.groups, self.dilation)
        return self._finish(y, self.features, logits)

    def one_channel(self, x: jax.Array, index: jax.Array, *, logits: bool = False) -> jax.Array:
        """Output channel ``index`` only (N, H, W, 1): one filter of the kernel (and, with groups, only
        the input channels of its group)."""
        kernel = jax.lax.dynamic_slice_in_dim(self.variables["params"]["kernel"], index, 1, axis=3)
        if self.groups > 1:
            cin = kernel.shape[2]
            group = index // (self.features // self.groups)
            x = jax.lax.dynamic_slice_in_dim(x, group * cin, cin, axis=3)
        y = conv(x, kernel, self.strides, self.padding, 1, self.dilation)
        return self._finish(y, 1, logits, self._channel_bias(index))

    def out_shape(self, shape: Shape) -> Shape:
        if shape[-1] % self.groups or self.features % self.groups:
            raise ValueError(f"groups={self.groups} must divide the {shape[-1]} input channels and "
                             f"{self.features} filters")
        return activation_shape(self.activation, _conv_out(shape, self.kernel_size, self.strides, self.padding,
                                                           self.features, self.dilation))

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        kh, kw = pair(self.kernel_size)
        return self._bias_shapes({"kernel": (kh, kw, shape[-1] // self.groups, self.features)}, self.features)


class DepthwiseConv2D(_ConvBase):
    """Keras ``DepthwiseConv2D``: ``depthwise_kernel`` kh x kw x C x M (M = ``depth_multiplier``),
    output channel ``c * M + m``; optional ``bias`` (C*M,)."""

    kernel_size: Pair = 3
    padding: str = "same"
    activation: str = "linear"
    strides: Pair = 1
    use_bias: bool = False
    depth_multiplier: int = 1
    dilation: Pair = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        dw = self.param("depthwise_kernel", _kernel_init, self.param_shapes(x.shape[1:])["depthwise_kernel"])
        y = _depthwise(x, dw, self.strides, self.padding, self.dilation)
        return self._finish(y, x.shape[-1] * self.depth_multiplier, logits)

    def one_channel(self, x: jax.Array, index: jax.Array, *, logits: bool = False) -> jax.Array:
        """Output channel ``index`` only: filter ``index % M`` of input channel ``index // M``."""
        m = self.depth_multiplier
        dw = self.variables["params"]["depthwise_kernel"]
        kh, kw, c, _ = dw.shape
        k = jax.lax.dynamic_slice(dw, (0, 0, index // m, index % m), (kh, kw, 1, 1))
        xc = jax.lax.dynamic_slice_in_dim(x, index // m, 1, axis=3)
        y = conv(xc, k, self.strides, self.padding, 1, self.dilation)
        return self._finish(y, 1, logits, self._channel_bias(index))

    def out_shape(self, shape: Shape) -> Shape:
        c = shape[-1] * self.depth_multiplier
        return activation_shape(self.activation, _conv_out(shape, self.kernel_size, self.strides, self.padding, c,
                                                           self.dilation))

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        (kh, kw), c = pair(self.kernel_size), shape[-1]
        return self._bias_shapes({"depthwise_kernel": (kh, kw, c, self.depth_multiplier)}, c * self.depth_multiplier)


class SeparableConv2D(_ConvBase):
    """Keras ``SeparableConv2D``: a depthwise conv (``depthwise_kernel`` kh x kw x C x M), then a 1 x 1
    conv (``pointwise_kernel`` 1 x 1 x C*M x F), optional ``bias``, then the activation."""

    features: int
    kernel_size: Pair = 3
    padding: str = "same"
    activation: str = "linear"
    strides: Pair = 1
    use_bias: bool = True
    depth_multiplier: int = 1
    dilation: Pair = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        shapes = self.param_shapes(x.shape[1:])
        dw = self.param("depthwise_kernel", _kernel_init, shapes["depthwise_kernel"])
        pw = self.param("pointwise_kernel", _kernel_init, shapes["pointwise_kernel"])
        y = conv(_depthwise(x, dw, self.strides, self.padding, self.dilation), pw, 1, "valid")
        return self._finish(y, self.features, logits)

    def one_channel(self, x: jax.Array, index: jax.Array, *, logits: bool = False) -> jax.Array:
        """Output channel ``index`` only: the whole depthwise step, then one column of the 1 x 1 conv."""
        p = self.variables["params"]
        pw = jax.lax.dynamic_slice_in_dim(p["pointwise_kernel"], index, 1, axis=3)
        y = conv(_depthwise(x, p["depthwise_kernel"], self.strides, self.padding, self.dilation), pw, 1, "valid")
        return self._finish(y, 1, logits, self._channel_bias(index))

    def out_shape(self, shape: Shape) -> Shape:
        return activation_shape(self.activation, _conv_out(shape, self.kernel_size, self.strides, self.padding,
                                                           self.features, self.dilation))

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        (kh, kw), c, m = pair(self.kernel_size), shape[-1], self.depth_multiplier
        return self._bias_shapes({"depthwise_kernel": (kh, kw, c, m), "pointwise_kernel": (1, 1, c * m, self.features)},
                                 self.features)


def _transpose_pads(k: int, s: int, d: int, padding: str, output_padding: int | None) -> tuple[int, int]:
    """Keras's (JAX backend) padding of a transposed convolution along one axis."""
    k = (k - 1) * d + 1
    if padding == "valid":
        op = max(k, s) - k if output_padding is None else output_padding
        return k - 1, k - 1 + op
    pad = s + k - 2 if output_padding is None else k + k % 2 - 2 + output_padding
    left = min(pad // 2 + pad % 2, k - 1)
    return left, pad - left


class Conv2DTranspose(_ConvBase):
    """Keras ``Conv2DTranspose``: ``kernel`` kh x kw x F x C (Keras's layout), optional ``bias``;
    ``output_padding`` None or (h, w)."""

    features: int
    kernel_size: Pair = 3
    padding: str = "valid"
    activation: str = "linear"
    strides: Pair = 1
    use_bias: bool = True
    dilation: Pair = 1
    output_padding: tuple[int, int] | None = None

    def _pads(self) -> list[tuple[int, int]]:
        ops = self.output_padding or (None, None)
        return [_transpose_pads(k, s, d, self.padding, o) for k, s, d, o in
                zip(pair(self.kernel_size), pair(self.strides), pair(self.dilation), ops)]

    def _apply(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jax.lax.conv_transpose(x, kernel.astype(x.dtype), pair(self.strides), self._pads(),
                                      rhs_dilation=pair(self.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      transpose_kernel=True)

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        kernel = self.param("kernel", _kernel_init, self.param_shapes(x.shape[1:])["kernel"])
        return self._finish(self._apply(x, kernel), self.features, logits)

    def one_channel(self, x: jax.Array, index: jax.Array, *, logits: bool = False) -> jax.Array:
        """Output channel ``index`` only: one output slice of the kernel."""
        kernel = jax.lax.dynamic_slice_in_dim(self.variables["params"]["kernel"], index, 1, axis=2)
        return self._finish(self._apply(x, kernel), 1, logits, self._channel_bias(index))

    def out_shape(self, shape: Shape) -> Shape:
        out = []
        for n, k, s, d, (lo, hi) in zip(shape[:2], pair(self.kernel_size), pair(self.strides), pair(self.dilation),
                                         self._pads()):
            out.append((n - 1) * s + 1 + lo + hi - (k - 1) * d)
        return activation_shape(self.activation, (out[0], out[1], self.features))

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        kh, kw = pair(self.kernel_size)
        return self._bias_shapes({"kernel": (kh, kw, self.features, shape[-1])}, self.features)


class BatchNormalization(Layer):
    """Keras ``BatchNormalization`` over the last axis in inference mode (moving statistics, also when
    ``train=True``): params ``gamma`` (if ``scale``), ``beta`` (if ``center``), ``moving_mean``,
    ``moving_variance``, computed as Keras does,
    ``x * (gamma * rsqrt(var + eps)) + (beta - mean * gamma * rsqrt(var + eps))``."""

    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True

    kind = "norm"
    weighted = True

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones_init(), (c,)) if self.scale else None
        beta = self.param("beta", nn.initializers.zeros_init(), (c,)) if self.center else None
        mean = self.param("moving_mean", nn.initializers.zeros_init(), (c,))
        var = self.param("moving_variance", nn.initializers.ones_init(), (c,))
        inv = jax.lax.rsqrt(var + self.epsilon)
        if gamma is not None:
            inv = inv * gamma
        res = -mean * inv
        if beta is not None:
            res = res + beta
        return x * inv.astype(x.dtype) + res.astype(x.dtype)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        c = (shape[-1],)
        names = ["gamma"] * self.scale + ["beta"] * self.center + ["moving_mean", "moving_variance"]
        return {n: c for n in names}


class LayerNormalization(Layer):
    """Keras ``LayerNormalization`` over ``axis`` (input axes without the batch, negative from the end):
    params ``gamma`` (if ``scale``), ``beta`` (if ``center``), shaped as those axes."""

    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    axis: tuple[int, ...] = (-1,)

    kind = "norm"
    weighted = True

    def _axes(self, ndim: int) -> list[int]:
        """Axes of an ``ndim``-dimensional batch (axis 0 = batch)."""
        return sorted(a if a > 0 else ndim + a for a in self.axis)

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        axes = self._axes(x.ndim)
        shapes = self.param_shapes(x.shape[1:])
        bshape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        mean = jnp.mean(x, axes, keepdims=True)
        var = jnp.var(x, axis=axes, keepdims=True)
        inv = jax.lax.rsqrt(var + self.epsilon)
        if self.scale:
            inv = inv * self.param("gamma", nn.initializers.ones_init(), shapes["gamma"]).reshape(bshape)
        res = -mean * inv
        if self.center:
            res = res + self.param("beta", nn.initializers.zeros_init(), shapes["beta"]).reshape(bshape)
        return x * inv + res

    def out_shape(self, shape: Shape) -> Shape:
        if any(not 0 < a < len(shape) + 1 for a in self._axes(len(shape) + 1)):
            raise ValueError(f"axis {self.axis} is out of range for inputs of shape {shape}")
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        full = (None,) + tuple(shape)
        s = tuple(full[a] for a in self._axes(len(full)))
        return {n: s for n in ["gamma"] * self.scale + ["beta"] * self.center}


class Activation(Layer):
    """Keras ``Activation`` (any name in :data:`ACTIVATIONS`); ``logits=True`` skips it."""

    activation: str = "relu"

    kind = "act"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x if logits else ACTIVATIONS[self.activation](x)

    def out_shape(self, shape: Shape) -> Shape:
        return activation_shape(self.activation, shape)


class ReLU(Layer):
    """Keras ``ReLU`` with a ceiling, a negative slope or a threshold (Keras's ``relu`` formula); the
    plain ``ReLU()`` and ``ReLU(6)`` are :class:`Activation` ``relu``/``relu6``."""

    max_value: float | None = None
    negative_slope: float = 0.0
    threshold: float = 0.0

    kind = "act"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        if logits:
            return x
        s, t = self.negative_slope, self.threshold
        if s != 0 and self.max_value is None and t == 0:
            return jax.nn.leaky_relu(x, s)
        negative = jax.nn.relu(-x + t) if (s != 0 and t != 0) else jax.nn.relu(-x) if s != 0 else None
        if t != 0:
            y = jnp.where(x > t, x, 0.0)
        elif self.max_value == 6:
            return self._slope(jax.nn.relu6(x), negative)
        else:
            y = jax.nn.relu(x)
        if self.max_value is not None:
            y = jnp.clip(y, 0.0, self.max_value)
        return self._slope(y, negative)

    def _slope(self, y: jax.Array, negative: jax.Array | None) -> jax.Array:
        return y if negative is None else y - self.negative_slope * negative


class LeakyReLU(Layer):
    """Keras ``LeakyReLU``: ``x`` if ``x >= 0`` else ``negative_slope * x``."""

    negative_slope: float = 0.3

    kind = "act"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x if logits else jax.nn.leaky_relu(x, self.negative_slope)


class ELU(Layer):
    """Keras ``ELU`` with ``alpha``."""

    alpha: float = 1.0

    kind = "act"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x if logits else jax.nn.elu(x, self.alpha)


class PReLU(Layer):
    """Keras ``PReLU``: ``relu(x) - alpha * relu(-x)``; param ``alpha`` shaped as the input, size 1 on
    ``shared_axes`` (1-based input axes, Keras's numbering)."""

    shared_axes: tuple[int, ...] = ()

    kind = "act"
    weighted = True

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        alpha = self.param("alpha", nn.initializers.zeros_init(), self.param_shapes(x.shape[1:])["alpha"])
        return x if logits else jax.nn.relu(x) + (-alpha.astype(x.dtype)) * jax.nn.relu(-x)

    def out_shape(self, shape: Shape) -> Shape:
        if any(not 1 <= a <= len(shape) for a in self.shared_axes):
            raise ValueError(f"shared_axes {self.shared_axes} out of range for inputs of shape {shape}")
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        return {"alpha": tuple(1 if i + 1 in self.shared_axes else d for i, d in enumerate(shape))}


class Softmax(Layer):
    """Keras ``Softmax`` over ``axis`` (one axis or several, numbered as Keras does, batch = 0)."""

    axis: tuple[int, ...] = (-1,)

    kind = "act"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        if logits:
            return x
        if len(self.axis) > 1:
            return jnp.exp(x - jax.nn.logsumexp(x, axis=self.axis, keepdims=True))
        return jax.nn.softmax(x, axis=self.axis[0])

    def out_shape(self, shape: Shape) -> Shape:
        if any(a == 0 or a == -len(shape) - 1 or abs(a) > len(shape) for a in self.axis):
            raise ValueError(f"softmax axis {self.axis} is out of range (or the batch axis) for shape {shape}")
        return shape


class Dense(Layer):
    """Keras ``Dense`` including its activation, on the last axis (rank-2 and per-pixel on rank-4
    inputs); params ``kernel`` (in x out) and ``bias`` (if ``use_bias``); ``logits=True`` returns the
    pre-activation."""

    features: int
    activation: str = "linear"
    use_bias: bool = True

    kind = "dense"
    weighted = True

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        kernel = self.param("kernel", _kernel_init, (x.shape[-1], self.features))
        y = x @ kernel.astype(x.dtype)
        if self.use_bias:
            y = y + self.param("bias", _bias_init, (self.features,)).astype(x.dtype)
        return y if logits else ACTIVATIONS[self.activation](y)

    def out_shape(self, shape: Shape) -> Shape:
        return activation_shape(self.activation, tuple(shape[:-1]) + (self.features,))

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        p = {"kernel": (shape[-1], self.features)}
        return {**p, "bias": (self.features,)} if self.use_bias else p


class Dropout(Layer):
    """Keras ``Dropout``: identity at inference; with ``train=True`` needs a ``'dropout'`` rng."""

    rate: float

    kind = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return nn.Dropout(self.rate, deterministic=not train)(x)


class SpatialDropout2D(Layer):
    """Keras ``SpatialDropout2D``: identity at inference; in training drops whole channels."""

    rate: float

    kind = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return nn.Dropout(self.rate, broadcast_dims=(1, 2), deterministic=not train)(x)


class GaussianNoise(Layer):
    """Keras ``GaussianNoise``: identity at inference; in training adds N(0, stddev²) noise."""

    stddev: float

    kind = "dropout"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        if not train or self.stddev <= 0:
            return x
        return x + self.stddev * jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)


class GaussianDropout(Layer):
    """Keras ``GaussianDropout``: identity at inference; in training multiplies by N(1, rate/(1-rate))."""

    rate: float

    kind = "dropout"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        if not train or self.rate <= 0:
            return x
        sd = math.sqrt(self.rate / (1.0 - self.rate))
        return x * (1.0 + sd * jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype))


class Identity(Layer):
    """Keras ``Identity``."""

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x


# -- merges -------------------------------------------------------------------------------------


class _Merge(Layer):
    """An elementwise merge of several named steps (Keras broadcasts equal-rank shapes)."""

    kind = "merge"

    def out_shape(self, *shapes: Shape) -> Shape:
        if len(shapes) < 2 or len({len(s) for s in shapes}) != 1:
            raise ValueError(f"{type(self).__name__} needs at least two inputs of equal rank, got {shapes}")
        out = []
        for dims in zip(*shapes):
            big = set(dims) - {1}
            if len(big) > 1:
                raise ValueError(f"{type(self).__name__} cannot combine shapes {shapes}")
            out.append(big.pop() if big else 1)
        return tuple(out)


class Add(_Merge):
    """Keras ``Add``: the sum of its inputs (the residual connection)."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Subtract(_Merge):
    """Keras ``Subtract``: first input minus the second."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        return xs[0] - xs[1]

    def out_shape(self, *shapes: Shape) -> Shape:
        if len(shapes) != 2:
            raise ValueError(f"Subtract needs exactly two inputs, got {len(shapes)}")
        return super().out_shape(*shapes)


class Multiply(_Merge):
    """Keras ``Multiply``: the elementwise product."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Average(_Merge):
    """Keras ``Average``: the sum divided by the number of inputs."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out / len(xs)


class Maximum(_Merge):
    """Keras ``Maximum``: the elementwise maximum."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        return functools.reduce(jnp.maximum, xs)


class Minimum(_Merge):
    """Keras ``Minimum``: the elementwise minimum."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        return functools.reduce(jnp.minimum, xs)


class Concatenate(Layer):
    """Keras ``Concatenate`` along ``axis`` (Keras's numbering, batch = 0; default the channels)."""

    axis: int = -1

    kind = "merge"

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        return jnp.concatenate(xs, axis=self.axis)

    def out_shape(self, *shapes: Shape) -> Shape:
        rank = len(shapes[0])
        a = self.axis - 1 if self.axis > 0 else rank + self.axis
        if len({len(s) for s in shapes}) != 1 or not 0 <= a < rank or self.axis == 0 or \
                any(s[:a] + s[a + 1:] != shapes[0][:a] + shapes[0][a + 1:] for s in shapes):
            raise ValueError(f"Concatenate(axis={self.axis}) cannot join shapes {shapes}")
        return shapes[0][:a] + (sum(s[a] for s in shapes),) + shapes[0][a + 1:]


# -- pooling ------------------------------------------------------------------------------------


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


class _Pool(Layer):
    kind = "pool"

    def _window(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        (ph, pw) = pair(self.pool)
        sh, sw = pair(self.strides) if self.strides is not None else (ph, pw)
        return (1, ph, pw, 1), (1, sh, sw, 1)

    def out_shape(self, shape: Shape) -> Shape:
        return _conv_out(shape, self.pool, self.strides or self.pool, self.padding, shape[-1])


class MaxPool2D(_Pool):
    """Keras ``MaxPooling2D`` (``pool``/``strides``: an int or (h, w); ``strides`` None = the pool).
    The square p x p, stride p, 'valid' case (an odd last row/column is dropped) uses :func:`max_pool`;
    other windows (Xception's 3x3, stride 2, 'same') use ``reduce_window``, whose gradient
    (select-and-scatter) also goes to the first maximum."""

    pool: Pair = 2
    strides: Pair | None = None
    padding: str = "valid"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        window, strides = self._window()
        if window[1] == window[2] == strides[1] == strides[2] and self.padding == "valid":
            return max_pool(x, window[1])
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, self.padding.upper())


class AveragePooling2D(_Pool):
    """Keras ``AveragePooling2D``; with ``same`` padding a border window averages only the pixels inside
    the image, as Keras does."""

    pool: Pair = 2
    strides: Pair | None = None
    padding: str = "valid"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        window, strides = self._window()
        pad = self.padding.upper()
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
        if self.padding == "valid":
            return total / (window[1] * window[2])
        ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
        return total / jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)


class _GlobalPool(Layer):
    kind = "global_pool"

    @property
    def keeps_spatial(self) -> bool:  # a 1 x 1 map with keepdims, a vector without
        return self.keepdims

    def out_shape(self, shape: Shape) -> Shape:
        return (1, 1, shape[-1]) if self.keepdims else (shape[-1],)


class GlobalAveragePooling2D(_GlobalPool):
    """Keras ``GlobalAveragePooling2D``: the mean over H and W, N x C (N x 1 x 1 x C with ``keepdims``)."""

    keepdims: bool = False

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x.mean(axis=(1, 2), keepdims=self.keepdims)


class GlobalMaxPooling2D(_GlobalPool):
    """Keras ``GlobalMaxPooling2D``: the maximum over H and W."""

    keepdims: bool = False

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x.max(axis=(1, 2), keepdims=self.keepdims)


# -- shape changes ------------------------------------------------------------------------------


class Flatten(Layer):
    """Keras ``Flatten``: row-major over (H, W, C), so Keras Dense kernels apply unchanged."""

    kind = "flatten"
    keeps_spatial = False

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x.reshape(x.shape[0], -1)

    def out_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)


class Reshape(Layer):
    """Keras ``Reshape`` to ``target_shape`` (no batch axis; one entry may be -1)."""

    target_shape: tuple[int, ...]

    kind = "reshape"
    keeps_spatial = False

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x.reshape((x.shape[0],) + self.out_shape(x.shape[1:]))

    def out_shape(self, shape: Shape) -> Shape:
        size, known = math.prod(shape), math.prod(d for d in self.target_shape if d != -1)
        unknown = [d for d in self.target_shape if d == -1]
        if len(unknown) > 1 or any(d < -1 or d == 0 for d in self.target_shape) or known == 0 \
                or (size != known if not unknown else size % known):
            raise ValueError(f"cannot reshape {shape} to {self.target_shape}")
        return tuple(size // known if d == -1 else d for d in self.target_shape)


class Permute(Layer):
    """Keras ``Permute``: ``dims`` is a permutation of 1..rank (the batch axis stays)."""

    dims: tuple[int, ...]

    kind = "reshape"
    keeps_spatial = False

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x.transpose((0,) + tuple(self.dims))

    def out_shape(self, shape: Shape) -> Shape:
        if sorted(self.dims) != list(range(1, len(shape) + 1)):
            raise ValueError(f"Permute dims {self.dims} are not a permutation of 1..{len(shape)}")
        return tuple(shape[d - 1] for d in self.dims)


class ZeroPadding2D(Layer):
    """Keras ``ZeroPadding2D``: ``padding`` ((top, bottom), (left, right))."""

    padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))

    kind = "pad"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return jnp.pad(x, ((0, 0),) + tuple(self.padding) + ((0, 0),))

    def out_shape(self, shape: Shape) -> Shape:
        (t, b), (l, r) = self.padding
        return (shape[0] + t + b, shape[1] + l + r) + tuple(shape[2:])


class Cropping2D(Layer):
    """Keras ``Cropping2D``: ``cropping`` ((top, bottom), (left, right))."""

    cropping: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))

    kind = "pad"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        (t, b), (l, r) = self.cropping
        return x[:, t:x.shape[1] - b, l:x.shape[2] - r]

    def out_shape(self, shape: Shape) -> Shape:
        (t, b), (l, r) = self.cropping
        return (shape[0] - t - b, shape[1] - l - r) + tuple(shape[2:])


def _resize(x: jax.Array, h: int, w: int, method: str, antialias: bool = False) -> jax.Array:
    """Keras's (JAX backend) image resize."""
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method=method, antialias=antialias)


class UpSampling2D(Layer):
    """Keras ``UpSampling2D``: ``size`` (h, w) times; ``nearest`` repeats pixels, the others
    (``bilinear``, ``bicubic``, ``lanczos3``, ``lanczos5``) resize as Keras does."""

    size: tuple[int, int] = (2, 2)
    interpolation: str = "nearest"

    kind = "resize"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        sh, sw = self.size
        if self.interpolation == "nearest":
            return jnp.repeat(jnp.repeat(x, sh, axis=1), sw, axis=2)
        return _resize(x, x.shape[1] * sh, x.shape[2] * sw, self.interpolation)

    def out_shape(self, shape: Shape) -> Shape:
        return (shape[0] * self.size[0], shape[1] * self.size[1]) + tuple(shape[2:])


# -- raw Keras operations and the layers keras.applications ships -----------------------------

# Functions of one tensor that a raw Keras operation in a functional graph computes (``x + 3.0``,
# ``1.0 - x``, ``ops.sqrt(x)``, ``ops.clip(x, 0, 6)``), as Keras's JAX backend computes them: name ->
# (how many numbers it takes besides the tensor, the function). The operations that equal a Keras
# activation (``ops.relu``, ``ops.hard_sigmoid``, ...) are imported as :class:`Activation` instead.
ELEMENTWISE: dict[str, tuple[int, Callable[..., jax.Array]]] = {
    "add": (1, jnp.add),
    "subtract": (1, jnp.subtract),
    "multiply": (1, jnp.multiply),
    "divide": (1, jnp.true_divide),
    "power": (1, jnp.power),
    "maximum": (1, jnp.maximum),
    "minimum": (1, jnp.minimum),
    "clip": (2, jnp.clip),
    "negative": (0, jnp.negative),
    "absolute": (0, jnp.abs),
    "square": (0, jnp.square),
    "sqrt": (0, jnp.sqrt),
    "rsqrt": (0, jax.lax.rsqrt),
    "reciprocal": (0, jnp.reciprocal),
    "exp": (0, jnp.exp),
    "expm1": (0, jnp.expm1),
    "log": (0, jnp.log),
    "log1p": (0, jnp.log1p),
    "sign": (0, jnp.sign),
    "floor": (0, jnp.floor),
    "ceil": (0, jnp.ceil),
    "erf": (0, jax.lax.erf),
    "gelu_tanh": (0, lambda x: jax.nn.gelu(x, approximate=True)),
    "celu": (1, lambda x, alpha: jax.nn.celu(x, alpha)),
}
_ACTIVATION_LIKE = ("gelu_tanh", "celu")  # skipped with ``logits=True``, as :class:`Activation` is


class Elementwise(Layer):
    """A raw Keras operation on one tensor: ``fn`` of :data:`ELEMENTWISE` applied to ``x`` and the
    numbers ``constants`` (``x + 3.0`` is ``Elementwise("add", (3.0,))``); ``constant_first`` puts the
    number before the tensor (``1.0 - x``: ``Elementwise("subtract", (1.0,), constant_first=True)``).
    Only the activation-like ``gelu_tanh`` and ``celu`` are skipped with ``logits=True``."""

    fn: str
    constants: tuple[float, ...] = ()
    constant_first: bool = False

    kind = "act"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        if logits and self.fn in _ACTIVATION_LIKE:
            return x
        f = ELEMENTWISE[self.fn][1]
        c = [jnp.asarray(v, x.dtype) for v in self.constants]
        return f(c[0], x) if self.constant_first else f(x, *c)

    def out_shape(self, shape: Shape) -> Shape:
        if self.fn not in ELEMENTWISE or len(self.constants) != ELEMENTWISE[self.fn][0] or \
                (self.constant_first and len(self.constants) != 1):
            raise ValueError(f"{self.fn}({', '.join(map(str, self.constants))}) is not an elementwise operation "
                             f"jaxviz knows")
        return shape


class Divide(_Merge):
    """A raw Keras ``x / y`` between two tensors (``ops.divide``/``true_divide``), broadcast as Keras does."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        return jnp.true_divide(xs[0], xs[1])

    def out_shape(self, *shapes: Shape) -> Shape:
        if len(shapes) != 2:
            raise ValueError(f"Divide needs exactly two inputs, got {len(shapes)}")
        return super().out_shape(*shapes)


class Power(_Merge):
    """A raw Keras ``x ** y`` between two tensors (``ops.power``), broadcast as Keras does."""

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        return jnp.power(xs[0], xs[1])

    def out_shape(self, *shapes: Shape) -> Shape:
        if len(shapes) != 2:
            raise ValueError(f"Power needs exactly two inputs, got {len(shapes)}")
        return super().out_shape(*shapes)


_REDUCTIONS: dict[str, Callable[..., jax.Array]] = {"mean": jnp.mean, "sum": jnp.sum, "max": jnp.max,
                                                   "min": jnp.min}


class Reduce(Layer):
    """A raw Keras reduction (``ops.mean``/``sum``/``max``/``min``) over ``axis`` (Keras's numbering,
    batch = 0, never reduced), ``keepdims`` as Keras. Over the image's rows or columns (axes 1, 2 of
    an N x H x W x C batch) it is a ``global_pool`` (``ops.mean(x, [1, 2], keepdims=True)``, a 1 x 1 map
    with ``keepdims``); over the channels only it is pointwise in space (kind ``act``, a map with one
    channel with ``keepdims``)."""

    fn: str
    axis: tuple[int, ...]
    keepdims: bool = False

    @property
    def kind(self) -> str:
        return "global_pool" if any(a % 4 in (1, 2) for a in self.axis) else "act"

    @property
    def keeps_spatial(self) -> bool:
        return self.keepdims

    def _axes(self, rank: int) -> tuple[int, ...]:
        """The reduced axes of a batch of rank ``rank``; ValueError for the batch axis or one out of range."""
        axes = tuple(sorted({a % rank if -rank <= a < rank else -1 for a in self.axis}))
        if not axes or axes[0] < 1 or len(axes) != len(self.axis):
            raise ValueError(f"axis {self.axis} is out of range, repeated or the batch axis for a batch of rank {rank}")
        return axes

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return _REDUCTIONS[self.fn](x, axis=self._axes(x.ndim), keepdims=self.keepdims)

    def out_shape(self, shape: Shape) -> Shape:
        if self.fn not in _REDUCTIONS:
            raise ValueError(f"{self.fn!r} is not a reduction jaxviz knows ({', '.join(_REDUCTIONS)})")
        axes = {a - 1 for a in self._axes(len(shape) + 1)}
        return tuple(1 if i in axes else d for i, d in enumerate(shape) if self.keepdims or i not in axes)


class LayerScale(Layer):
    """``keras.applications.convnext.LayerScale``: ``x * gamma``, one learned factor per channel; param
    ``gamma`` (``projection_dim``,)."""

    projection_dim: int

    kind = "norm"
    weighted = True

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(1e-6), self.param_shapes(x.shape[1:])["gamma"])
        return x * gamma.astype(x.dtype)

    def out_shape(self, shape: Shape) -> Shape:
        if shape[-1] != self.projection_dim:
            raise ValueError(f"LayerScale of {self.projection_dim} channels cannot take {shape[-1]} channels")
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        return {"gamma": (self.projection_dim,)}


class CustomScaleLayer(_Merge):
    """``keras.applications.inception_resnet_v2.CustomScaleLayer``: ``x + r * scale`` (the residual
    ``r``, the second input, scaled and added to the first)."""

    scale: float = 1.0

    def __call__(self, *xs: jax.Array, logits: bool = False, train: bool = False) -> jax.Array:
        return xs[0] + xs[1] * jnp.asarray(self.scale, xs[1].dtype)

    def out_shape(self, *shapes: Shape) -> Shape:
        if len(shapes) != 2:
            raise ValueError(f"CustomScaleLayer needs exactly two inputs, got {len(shapes)}")
        return super().out_shape(*shapes)


class StochasticDepth(Layer):
    """``keras.applications.convnext.StochasticDepth``: the identity at inference; with ``train=True``
    (and a ``'dropout'`` rng) each example's whole residual branch is dropped with probability ``rate``
    and the kept ones scaled by ``1 / (1 - rate)``, as Keras does."""

    rate: float

    kind = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return nn.Dropout(self.rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=not train)(x)


# -- input transforms ---------------------------------------------------------------------------


class Rescaling(Layer):
    """Keras ``Rescaling``: ``x * scale + offset`` (a number, or one per channel)."""

    scale: float | tuple[float, ...] = 1.0
    offset: float | tuple[float, ...] = 0.0

    kind = "input_transform"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        return x * jnp.asarray(self.scale, x.dtype) + jnp.asarray(self.offset, x.dtype)


class Normalization(Layer):
    """Keras ``Normalization``: ``(x - mean) / max(sqrt(variance), 1e-7)`` (``invert``: the inverse),
    with ``mean``/``variance`` either from the config (fields) or from the file (params ``mean``,
    ``variance``, shaped as the kept ``axis``)."""

    axis: tuple[int, ...] = (-1,)
    mean: tuple[float, ...] | float | None = None
    variance: tuple[float, ...] | float | None = None
    invert: bool = False

    kind = "input_transform"

    @property
    def weighted(self) -> bool:
        return self.mean is None

    def _keep(self, ndim: int) -> list[int]:
        return sorted(a if a >= 0 else ndim + a for a in self.axis)

    def _broadcast(self, v: jax.Array, shape: Shape) -> jax.Array:
        keep = self._keep(len(shape))
        target = [shape[d] if d in keep else 1 for d in range(len(shape))]
        if v.ndim == 0:
            return jnp.broadcast_to(v, target)
        expanded = [1] * len(shape)
        for i in range(1, v.ndim + 1):
            expanded[keep[-i]] = v.shape[-i]
        return jnp.broadcast_to(v.reshape(expanded), target)

    @nn.compact
    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        if self.mean is None:
            shapes = self.param_shapes(x.shape[1:])
            mean = self.param("mean", nn.initializers.zeros_init(), shapes["mean"])
            var = self.param("variance", nn.initializers.ones_init(), shapes["variance"])
        else:
            mean, var = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.variance, jnp.float32)
        mean, var = self._broadcast(mean, x.shape).astype(x.dtype), self._broadcast(var, x.shape).astype(x.dtype)
        std = jnp.maximum(jnp.sqrt(var), 1e-7)
        return mean + x * std if self.invert else (x - mean) / std

    def out_shape(self, shape: Shape) -> Shape:
        if any(not 1 <= a <= len(shape) for a in self._keep(len(shape) + 1)):
            raise ValueError(f"Normalization axis {self.axis} is out of range (or the batch axis) for {shape}")
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        if self.mean is not None:
            return {}
        full = (None,) + tuple(shape)
        s = tuple(full[d] for d in self._keep(len(full)))
        return {"mean": s, "variance": s}


class Resizing(Layer):
    """Keras ``Resizing`` to ``height`` x ``width`` (``interpolation``, ``antialias``, and the optional
    centre crop or constant ``fill_value`` pad to the target's aspect ratio, as Keras does)."""

    height: int
    width: int
    interpolation: str = "bilinear"
    crop_to_aspect_ratio: bool = False
    pad_to_aspect_ratio: bool = False
    fill_value: float = 0.0
    antialias: bool = False

    kind = "input_transform"

    def __call__(self, x: jax.Array, *, logits: bool = False, train: bool = False) -> jax.Array:
        h, w = x.shape[1:3]
        th, tw = self.height, self.width
        if self.crop_to_aspect_ratio:
            ch = max(min(h, int(float(w * th) / tw)), 1)
            cw = max(min(w, int(float(h * tw) / th)), 1)
            top, left = int(float(h - ch) / 2), int(float(w - cw) / 2)
            x = x[:, top:top + ch, left:left + cw]
        elif self.pad_to_aspect_ratio:
            ph, pw = max(h, int(float(w * th) / tw)), max(w, int(float(h * tw) / th))
            top, left = int(float(ph - h) / 2), int(float(pw - w) / 2)
            if top > 0:
                x = jnp.pad(x, ((0, 0), (top, top), (0, 0), (0, 0)), constant_values=self.fill_value)
            if left > 0:
                x = jnp.pad(x, ((0, 0), (0, 0), (left, left), (0, 0)), constant_values=self.fill_value)
        return _resize(x, th, tw, self.interpolation, self.antialias)

    def out_shape(self, shape: Shape) -> Shape:
        return (self.height, self.width) + tuple(shape[2:])


# -- the facts, for callers that hold a layer ---------------------------------------------------

LAYERS: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (
        Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, BatchNormalization, LayerNormalization,
        Activation, ReLU, LeakyReLU, ELU, PReLU, Softmax, Dense, Dropout, SpatialDropout2D, GaussianNoise,
        GaussianDropout, Identity, Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, MaxPool2D,
        AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten, Reshape, Permute, ZeroPadding2D,
        Cropping2D, UpSampling2D, Rescaling, Normalization, Resizing, Elementwise, Divide, Power, Reduce,
        LayerScale, CustomScaleLayer, StochasticDepth,
    )
}
"""Every layer class by name (what a saved graph may name; nothing else is ever constructed from a file)."""


def has_params(layer: nn.Module) -> bool:
    """Whether ``layer`` has parameters (``layer.weighted``)."""
    return bool(layer.weighted)


def kind(layer: nn.Module) -> str:
    """``layer.kind``: 'conv' (also separable, depthwise and transposed), 'norm', 'act', 'merge', 'pool',
    'global_pool', 'flatten', 'reshape', 'dense', 'dropout', 'identity', 'pad', 'resize' or
    'input_transform'."""
    return layer.kind


def param_shapes(layer: nn.Module, in_shape: Shape) -> dict[str, Shape]:
    """Parameter shapes of ``layer`` for an input of shape ``in_shape`` (no batch axis), in Keras's order."""
    return layer.param_shapes(in_shape) if has_params(layer) else {}


def layer_fields(layer: nn.Module) -> dict[str, object]:
    """The settings of ``layer`` (its dataclass fields without Flax's ``name``/``parent``)."""
    return {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer) if f.name not in ("name", "parent")}
