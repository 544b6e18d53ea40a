"""Objectives: what the ascent maximises, ``objective(taps, index) -> one value per image``.

:class:`Objective` wraps such a function with the layers it reads; objectives combine with ``+ - * /``,
unary ``-`` and numbers (``channel() + 0.5 * neuron("block5a", 3)``), as lucid's and lucent's do.
Builders: :func:`channel`, :func:`channel_interior`, :func:`neuron`, :func:`class_logit`,
:func:`class_logprob`, :func:`direction`; the diversity measure :func:`gram_similarity`; and the image
penalties ``image -> scalar`` :func:`total_variation`, :func:`l2`.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

Taps = Mapping[Any, jax.Array]

# The name under which an objective reads the model's output before its last activation (Forward.logits).
LOGITS = "<logits>"
DIVERSITY = "<diversity>"  # where the runner puts the diversity layer's activation


def _operator(op, sym: str, swap: bool = False):
    """An Objective's arithmetic dunder (``swap``: the reflected one, ``2 * obj``)."""
    return lambda self, other: self._combine(other, op, sym, swap)


class Objective:
    """Something to maximise: ``objective(taps, index)`` -> one value per image of the batch (N,).

    ``taps`` maps layer names to activations (N x H x W x C, or N x C) and :data:`LOGITS` to the
    output's logits; ``None`` is the target layer of the call (the ``layer`` of :func:`filter_patterns`),
    and ``index`` is the unit the call is about (its filters, or classes, are vmapped). ``layers`` lists
    what the objective reads; ``own_channel`` says it reads only channel ``index`` of the target, so a
    conv target may compute that one filter. Objectives combine with ``+ - * /``, unary ``-`` and numbers.
    """

    def __init__(self, fn: Callable[[Taps, jax.Array], jax.Array], layers: Sequence[Any] = (None,),
                 own_channel: bool = False, border: int = 0, name: str = "objective"):
        self.fn, self.layers, self.own_channel, self.border, self.name = fn, tuple(layers), own_channel, border, name

    def __call__(self, taps: Taps, index: jax.Array) -> jax.Array:
        return self.fn(taps, index)

    def __repr__(self) -> str:
        return self.name

    def _combine(self, other, op, sym: str, swap: bool = False) -> "Objective":
        if isinstance(other, (int, float)):
            c = float(other)
            fn = (lambda t, i: op(c, self(t, i))) if swap else (lambda t, i: op(self(t, i), c))
            name = f"{c:g} {sym} {self}" if swap else f"({self}) {sym} {c:g}"
            return Objective(fn, self.layers, self.own_channel, self.border, name)
        if not isinstance(other, Objective):
            return NotImplemented
        a, b = (other, self) if swap else (self, other)
        return Objective(lambda t, i: op(a(t, i), b(t, i)), tuple(dict.fromkeys(a.layers + b.layers)),
                         a.own_channel and b.own_channel, max(a.border, b.border), f"({a}) {sym} ({b})")

    __add__, __radd__ = _operator(operator.add, "+"), _operator(operator.add, "+", True)
    __sub__, __rsub__ = _operator(operator.sub, "-"), _operator(operator.sub, "-", True)
    __mul__, __rmul__ = _operator(operator.mul, "*"), _operator(operator.mul, "*", True)
    __truediv__ = _operator(operator.truediv, "/")

    def __neg__(self):
        return self._combine(-1.0, operator.mul, "*", True)


def _select(act: jax.Array, n: jax.Array) -> jax.Array:
    """Channel ``n`` of (N, H, W, C) or (N, C), or the only channel when the tap holds just one."""
    if act.shape[-1] == 1:
        return act[..., 0]
    return jnp.take(act, n, axis=-1)


def _per_image_mean(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1).mean(axis=1)


def channel(layer: str | None = None, n: int | None = None) -> Objective:
    """Mean activation of channel ``n`` of ``layer`` (default: the call's target layer and unit;
    Listing 5.32: ``K.mean(layer_output[:, :, :, f])``)."""
    own = layer is None and n is None
    return Objective(lambda t, i: _per_image_mean(_select(t[layer], i if n is None else n)), (layer,), own,
                     name=f"channel({layer or 'target'}, {'unit' if n is None else n})")


def channel_interior(border: int = 2, layer: str | None = None, n: int | None = None) -> Objective:
    """Mean of one channel without a ``border``-pixel frame (seed 002: ``activation[:, 2:-2, 2:-2, f]``)."""

    def fn(t, i):
        a = _select(t[layer], i if n is None else n)
        return _per_image_mean(a[:, border:-border, border:-border])

    # the border is checked against the layer's output size before anything runs
    return Objective(fn, (layer,), layer is None and n is None, border, f"channel_interior({border})")


def neuron(layer: str | None = None, n: int | None = None, *, y: int | None = None, x: int | None = None) -> Objective:
    """One spatial position (default: the centre) of one channel (default: the target unit)."""

    def fn(t, i):
        a = _select(t[layer], i if n is None else n)
        h, w = a.shape[1:3]
        return a[:, h // 2 if y is None else y, w // 2 if x is None else x]

    return Objective(fn, (layer,), layer is None and n is None, name=f"neuron({layer or 'target'})")


def class_logit(n: int | None = None) -> Objective:
    """The model's score for class ``n`` (default: the call's unit) before its last activation
    (pre-softmax): class visualisation."""
    return Objective(lambda t, i: _select(t[LOGITS], i if n is None else n), (LOGITS,),
                     name=f"class_logit({'unit' if n is None else n})")


def class_logprob(n: int | None = None) -> Objective:
    """The log-probability of class ``n`` (default: the call's unit), log-softmax of the logits: it also
    pushes the other classes down (with :func:`class_logit`, a picture the model is sure of)."""
    return Objective(lambda t, i: _select(jax.nn.log_softmax(t[LOGITS], axis=-1), i if n is None else n), (LOGITS,),
                     name=f"class_logprob({'unit' if n is None else n})")


logit = class_logit  # the name before composable objectives


def direction(layer: str | None, vec: Sequence[float], cossim_pow: float = 0.0) -> Objective:
    """A direction in ``layer``'s channel space: the mean over positions of ``act . vec`` (lucid's
    ``direction``); with ``cossim_pow`` > 0 each dot product is weighted by its cosine similarity
    (floored at 0.1) to that power, which favours the direction over sheer magnitude."""
    v = jnp.asarray(vec, jnp.float32)

    def fn(t, i):
        a = t[layer]
        dot = a @ v
        if cossim_pow:
            cos = dot / (1e-6 + jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(v))
            dot = dot * jnp.maximum(cos, 0.1) ** cossim_pow
        return _per_image_mean(dot)

    return Objective(fn, (layer,), name=f"direction({layer or 'target'})")


def as_objective(obj: Objective | Callable) -> Objective:
    """An :class:`Objective`, or a plain ``f(act, index) -> scalar`` on the target layer (a batch of one)."""
    if isinstance(obj, Objective):
        return obj
    return Objective(lambda t, i: jax.vmap(lambda a: obj(a[None], i))(t[None]), (None,), True,
                     getattr(obj, "border", 0), getattr(obj, "__name__", "objective"))


def gram_similarity(act: jax.Array) -> jax.Array:
    """lucid's diversity measure of a batch (N x H x W x C, N >= 2): the mean cosine similarity between
    the images' Gram matrices (channel co-occurrence, position-free). Subtracting it makes the images differ."""
    n = act.shape[0]
    flat = act.reshape(n, -1, act.shape[-1])
    grams = jnp.einsum("npc,npd->ncd", flat, flat).reshape(n, -1)
    grams = grams / jnp.maximum(jnp.linalg.norm(grams, axis=1, keepdims=True), 1e-10)
    sim = grams @ grams.T
    return (jnp.sum(sim) - jnp.trace(sim)) / (n * (n - 1))


def total_variation(img: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(img[1:] - img[:-1])) + jnp.mean(jnp.abs(img[:, 1:] - img[:, :-1]))


def l2(img: jax.Array) -> jax.Array:
    return jnp.mean(img * img)
