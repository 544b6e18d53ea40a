"""Input maps: gradients of the class score with respect to the (preprocessed) input pixels; the map
has the input's resolution (H x W), is non-negative and divided by its maximum.

Each ``_name`` function here is the ``fn`` of one :class:`jaxviz.methods.attribution.Method` record:
``fn(model, params, x, feats, grads, classes, keys, cfg, logits) -> N x K x H x W`` maps in [0, 1].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxviz.methods.layer_maps import normalise
from jaxviz.nn import policy
from jaxviz.nn.protocol import Model


def _score(model: Model, params, x: jax.Array, logits: bool) -> jax.Array:
    out = model.run(params, x)
    return out.logits if logits else out.output


def _input_grad(model: Model, params, logits: bool):
    def grad(im, c):  # im: H W ch, one image
        return jax.grad(lambda z: _score(model, params, z[None], logits)[0, c])(im)

    return grad


def _abs_max_channels(g: jax.Array) -> jax.Array:
    return normalise(jnp.abs(g).max(axis=-1))


def saliency(model, params, x, feats, grads, classes, key, cfg, logits):
    """Simonyan et al. (2014): max over colour channels of |d score / d pixel|."""
    grad = _input_grad(model, params, logits)
    return jax.vmap(jax.vmap(lambda im, c: _abs_max_channels(grad(im, c)), in_axes=(None, 0)))(x, classes)


def smoothgrad(model, params, x, feats, grads, classes, keys, cfg, logits):
    """Smilkov et al. (2017): the gradient averaged over ``samples`` copies with Gaussian noise of
    sigma = ``noise`` x (max - min of the image), then |.| max over channels. ``keys``: one per image
    (split from the caller's key by image index, so chunking and sharding do not change the noise)."""
    grad = _input_grad(model, params, logits)

    def one(im, c, k):
        sigma = cfg.noise * (im.max() - im.min())
        eps = jax.random.normal(k, (cfg.samples,) + im.shape, im.dtype) * sigma
        return _abs_max_channels(jax.vmap(lambda e: grad(im + e, c))(eps).mean(axis=0))

    return jax.vmap(lambda im, cs, k: jax.vmap(lambda c: one(im, c, k))(cs))(x, classes, keys)


def integrated_gradients(model: Model, params: Any, x: jax.Array, classes: jax.Array,
                         baseline: jax.Array | None = None, steps: int = 32, logits: bool = True) -> jax.Array:
    """Sundararajan et al. (2017): ``(x - baseline) * mean of the gradients along the straight path``
    (midpoint rule, ``steps`` points). Returns N x K x H x W x ch attributions whose sum approaches
    ``score(x) - score(baseline)`` (completeness). ``baseline`` defaults to zeros (the preprocessed
    black or mean image)."""
    base = jnp.zeros_like(x[0]) if baseline is None else jnp.asarray(baseline, x.dtype)
    grad = _input_grad(model, params, logits)
    alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps

    def one(im, c):
        path = base + alphas[:, None, None, None] * (im - base)
        return (im - base) * jax.vmap(lambda z: grad(z, c))(path).mean(axis=0)

    return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(x, classes)


def ig(model, params, x, feats, grads, classes, key, cfg, logits):
    attr = integrated_gradients(model, params, x, classes, steps=cfg.steps, logits=logits)
    return jax.vmap(jax.vmap(lambda a: normalise(jnp.abs(a.sum(axis=-1)))))(attr)


def guided_backprop(model, params, x, feats, grads, classes, key, cfg, logits):
    """Springenberg et al. (2015): the input gradient with every ReLU's backward pass guided
    (:func:`jaxviz.nn.layers.guided_relu`, and ``guided_relu6`` for ReLU6 networks), |.| max over channels."""
    return saliency(policy.guided(model), params, x, feats, grads, classes, key, cfg, logits)
