"""Layer maps (the CAM family): a method weighs the channels of a conv layer's output (h x w x C) and
the map is the ReLU of the weighted channel mean at the layer's resolution, divided by its maximum.

Each function here is the ``fn`` of one :class:`jaxviz.methods.attribution.Method` record:
``fn(model, params, x, feats, grads, classes, keys, cfg, logits) -> N x K x h x w`` maps in [0, 1].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def normalise(m: jax.Array) -> jax.Array:
    peak = m.max()
    return jnp.where(peak > 0, m / jnp.where(peak > 0, peak, 1.0), 0.0)



def gradcam_weights(feat: jax.Array, grad: jax.Array) -> jax.Array:
    """Listing 5.42 / Selvaraju et al.: the spatial mean of the gradient per channel."""
    return grad.mean(axis=(0, 1))


def gradcampp_weights(feat: jax.Array, grad: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Chattopadhyay et al. (2018), eq. 19 with the exponential-score closed form: per-position
    coefficients ``g^2 / (2 g^2 + sum(A) g^3)`` on the positive gradients."""
    g2 = grad**2
    a = g2 / (2 * g2 + feat.sum(axis=(0, 1)) * g2 * grad + eps)
    a = jnp.where(grad != 0, a, 0.0)
    return (a * jax.nn.relu(grad)).sum(axis=(0, 1))


def _weighted_map(feat: jax.Array, weights: jax.Array) -> jax.Array:
    # The seed takes the channel mean; after division by the max it equals the paper's sum.
    return normalise(jax.nn.relu((feat * weights).mean(axis=-1)))


def layer_gradient_method(weight_fn: Callable):
    def method(model, params, x, feats, grads, classes, key, cfg, logits):
        # feats: N h w C; grads: N K h w C (the gradient of each class score at the layer)
        def one(feat, g):
            return _weighted_map(feat, weight_fn(feat, g))

        return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(feats, grads)

    return method


def scorecam(model, params, x, feats, grads, classes, key, cfg, logits):
    """Wang et al. (2020): each channel, upsampled to the input and min-max scaled, masks the image;
    the channel's weight is the class probability of the masked image. All N x C masked images go
    through the model in chunks of ``cfg.chunk`` inside the same compiled call."""
    n, h, w, c = feats.shape
    masks = jax.image.resize(feats, (n, x.shape[1], x.shape[2], c), "bilinear")
    lo = masks.min(axis=(1, 2), keepdims=True)
    span = masks.max(axis=(1, 2), keepdims=True) - lo
    masks = jnp.where(span > 0, (masks - lo) / jnp.where(span > 0, span, 1.0), 0.0)
    masked = x[:, None] * jnp.moveaxis(masks, -1, 1)[..., None]  # N C H W ch
    flat = masked.reshape((n * c,) + x.shape[1:])
    scores = jax.lax.map(lambda im: model.run(params, im[None]).output[0], flat, batch_size=cfg.chunk)
    scores = scores.reshape(n, c, -1)  # N C classes

    def one(feat, score, cls):
        return jax.vmap(lambda k: _weighted_map(feat, score[:, k]))(cls)

    return jax.vmap(one)(feats, scores, classes)
