"""Layer maps (the CAM family): a method weighs a conv layer's output (h x w x C) per channel or per
position, and the map is the ReLU of the weighted activations summed over channels (or, with
``eigen_smooth``, projected on their first principal component) at the layer's resolution, divided by
its maximum.

Each function here is the ``fn`` of one :class:`jaxviz.methods.attribution.Method` record:
``fn(model, params, x, feats, grads, classes, keys, cfg, logits, layer) -> N x K x h x w`` maps in [0, 1]
(``feats`` N x h x w x C, ``grads`` N x K x h x w x C, each class score's gradient at ``layer``).
The formulas follow pytorch-grad-cam (``pytorch_grad_cam/*.py``) and the papers cited per method.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def normalise(m: jax.Array) -> jax.Array:
    peak = m.max()
    return jnp.where(peak > 0, m / jnp.where(peak > 0, peak, 1.0), 0.0)


def project(a: jax.Array) -> jax.Array:
    """``h x w x C`` -> ``h x w``: the positions' projection on the first principal component of the
    channels (pytorch-grad-cam's ``get_2d_projection``: centred per channel, first right-singular
    vector). The SVD leaves the sign free (LAPACK picks one); here it is the sign that makes the
    projection correlate positively with the channel sum (the component's loadings sum >= 0)."""
    h, w, c = a.shape
    m = a.reshape(h * w, c)
    m = m - m.mean(axis=0)
    v = jnp.linalg.svd(m, full_matrices=False)[2][0]
    v = jnp.where(v.sum() < 0, -v, v)
    return (m @ v).reshape(h, w)


def _cam(weighted: jax.Array, eigen: bool) -> jax.Array:
    # The channel mean (the seed's); after division by the max it equals pytorch-grad-cam's sum.
    return normalise(jax.nn.relu(project(weighted) if eigen else weighted.mean(axis=-1)))


# -- how each method weighs the activations A (h w C) given a class's gradient g (h w C) --------------
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


def xgradcam_weights(feat: jax.Array, grad: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Fu et al. (2020), XGrad-CAM: ``sum_hw(A g) / (sum_hw A + eps)`` per channel."""
    return (grad * feat).sum(axis=(0, 1)) / (feat.sum(axis=(0, 1)) + eps)


def channel(weight_fn: Callable) -> Callable:
    """A per-channel weighting as a weighting of the activations: ``A * w(A, g)``."""
    return lambda feat, grad: feat * weight_fn(feat, grad)


def hirescam(feat, grad):
    """Draelos & Carin (2020), HiResCAM: the element-wise product ``A g`` (no spatial averaging)."""
    return feat * grad


def gradcam_elementwise(feat, grad):
    """pytorch-grad-cam's GradCAMElementWise: ``ReLU(A g)`` element-wise before the channel sum."""
    return jax.nn.relu(feat * grad)


def layercam(feat, grad):
    """Jiang et al. (2021), LayerCAM: ``ReLU(g) A`` per position."""
    return jax.nn.relu(grad) * feat


def layer_gradient_method(weighting: Callable, eigen: bool | None = None):
    """The record ``fn`` of a gradient method: ``weighting(A, g) -> h w C`` weighted activations per class;
    ``eigen``: True always projects (EigenGrad-CAM), None follows ``cfg.eigen_smooth``."""

    def method(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
        smooth = bool(cfg.eigen_smooth) if eigen is None else eigen

        def one(feat, g):
            return _cam(weighting(feat, g), smooth)

        return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(feats, grads)

    return method


def eigencam(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    """Muhammad & Yeasin (2020), Eigen-CAM: the activations' first principal component, the same map for
    every class (it reads no gradient)."""
    maps = jax.vmap(lambda f: normalise(jax.nn.relu(project(f))))(feats)
    return jnp.broadcast_to(maps[:, None], (maps.shape[0], classes.shape[1]) + maps.shape[1:])


def scorecam(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
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
        return jax.vmap(lambda k: _cam(feat * score[:, k], bool(cfg.eigen_smooth)))(cls)

    return jax.vmap(one)(feats, scores, classes)


def ablationcam(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    """Desai & Ramaswamy (2020), Ablation-CAM: channel k's weight is ``(y_c - y_c^k) / y_c``, the
    relative drop of the class score when channel k of ``layer`` is set to zero (the paper's ablation;
    pytorch-grad-cam's default ratio 1.0: every channel). The N x C ablated passes run in chunks of
    ``cfg.chunk`` inside the compiled call (memory: ``chunk`` images, whatever N and C)."""
    n, h, w, c = feats.shape

    def score(out):
        return out.logits if logits else out.output

    base = score(model.run(params, x))  # N classes
    items = (jnp.repeat(jnp.arange(n), c), jnp.tile(jnp.arange(c), n))

    def ablated(item):
        i, k = item
        zero = -feats[i] * jax.nn.one_hot(k, c, dtype=feats.dtype)  # adds -A_k: channel k becomes 0
        return score(model.run(params, x[i][None], perturb={layer: zero[None]}))[0]

    drop = jax.lax.map(ablated, items, batch_size=cfg.chunk).reshape(n, c, -1)  # N C classes

    def one(feat, y, yk, cls):
        def per_class(k):
            yc = y[k]
            w_ = jnp.where(yc != 0, (yc - yk[:, k]) / jnp.where(yc != 0, yc, 1.0), 0.0)
            return _cam(feat * w_, bool(cfg.eigen_smooth))

        return jax.vmap(per_class)(cls)

    return jax.vmap(one)(feats, base, drop, classes)
