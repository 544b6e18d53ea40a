"""Class activation heatmaps and gradient attributions, N images x K classes in one jitted call.

Two families share one driver (:func:`explain`):

* **layer maps** (``gradcam``, ``gradcam++``, ``scorecam``) weight the channels of a conv layer's
  output and return an ``h x w`` map at that layer's resolution. One forward pass (the model
  protocol's :meth:`~jaxviz.nn.protocol.Model.run`) gives the feature map and the class scores; the
  gradient at the layer is the gradient with respect to a zero perturbation added there (``jax.vjp``:
  the network runs forward once, backward once per class). A method only says how the channel
  weights are computed.
* **input maps** (``saliency``, ``smoothgrad``, ``ig``, ``guided``) differentiate the class score
  with respect to the input pixels and return an ``H x W`` map at the input's resolution.

Every map is non-negative and divided by its maximum, so it lies in [0, 1]; an all-zero map stays
zero (with a warning from :func:`explain`), never NaN.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError, unknown
from jaxviz.nn.protocol import Model, is_spatial, layer_shape, output_shape
from jaxviz.methods.sharding import batch_mesh, chunks, gather, pad_to, replicate, shard_batch

LAYER_METHODS = ("gradcam", "gradcam++", "scorecam")
INPUT_METHODS = ("saliency", "smoothgrad", "ig", "guided")
METHODS = LAYER_METHODS + INPUT_METHODS


class Cams(NamedTuple):
    heatmaps: np.ndarray  # N x K x h x w float32 in [0, 1]: layer resolution (CAMs) or input resolution
    classes: np.ndarray  # N x K int
    probs: np.ndarray  # N x classes (the model's output)


class Settings(NamedTuple):
    """Knobs of the methods that have them (hashable: part of the compilation key)."""

    samples: int = 25  # smoothgrad: noisy copies
    noise: float = 0.15  # smoothgrad: sigma as a fraction of the image's value range (the paper's 10-20%)
    steps: int = 32  # ig: Riemann steps (midpoint rule) from the baseline to the image
    chunk: int = 64  # scorecam: masked images per forward pass (bounds memory)


def _normalise(m: jax.Array) -> jax.Array:
    peak = m.max()
    return jnp.where(peak > 0, m / jnp.where(peak > 0, peak, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------
# Layer maps: channel weights from (feature map h x w x C, gradient of the score w.r.t. it)


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
    return _normalise(jax.nn.relu((feat * weights).mean(axis=-1)))


def _layer_gradient_method(weight_fn: Callable):
    def method(model, params, x, feats, grads, classes, key, cfg, logits):
        # feats: N h w C; grads: N K h w C (the gradient of each class score at the layer)
        def one(feat, g):
            return _weighted_map(feat, weight_fn(feat, g))

        return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(feats, grads)

    method.needs_grad = True
    return method


def _scorecam(model, params, x, feats, grads, classes, key, cfg, logits):
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


# ----------------------------------------------------------------------------------------------
# Input maps: gradients of the class score with respect to the (preprocessed) input


def _score(model: Model, params, x: jax.Array, logits: bool) -> jax.Array:
    out = model.run(params, x)
    return out.logits if logits else out.output


def _input_grad(model: Model, params, logits: bool):
    def grad(im, c):  # im: H W ch, one image
        return jax.grad(lambda z: _score(model, params, z[None], logits)[0, c])(im)

    return grad


def _abs_max_channels(g: jax.Array) -> jax.Array:
    return _normalise(jnp.abs(g).max(axis=-1))


def _saliency(model, params, x, feats, grads, classes, key, cfg, logits):
    """Simonyan et al. (2014): max over colour channels of |d score / d pixel|."""
    grad = _input_grad(model, params, logits)
    return jax.vmap(jax.vmap(lambda im, c: _abs_max_channels(grad(im, c)), in_axes=(None, 0)))(x, classes)


def _smoothgrad(model, params, x, feats, grads, classes, keys, cfg, logits):
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


def _ig(model, params, x, feats, grads, classes, key, cfg, logits):
    attr = integrated_gradients(model, params, x, classes, steps=cfg.steps, logits=logits)
    return jax.vmap(jax.vmap(lambda a: _normalise(jnp.abs(a.sum(axis=-1)))))(attr)


def _guided(model, params, x, feats, grads, classes, key, cfg, logits):
    """Springenberg et al. (2015): the input gradient with every ReLU's backward pass guided
    (:func:`jaxviz.nn.layers.guided_relu`, and ``guided_relu6`` for ReLU6 networks), |.| max over channels."""
    return _saliency(model.guided(), params, x, feats, grads, classes, key, cfg, logits)


_IMPLS: dict[str, Callable] = {
    "gradcam": _layer_gradient_method(gradcam_weights),
    "gradcam++": _layer_gradient_method(gradcampp_weights),
    "scorecam": _scorecam,
    "saliency": _saliency,
    "smoothgrad": _smoothgrad,
    "ig": _ig,
    "guided": _guided,
}


def compiled_explain(model: Model, input_shape: Sequence[int], method: str = "gradcam", layer: str | None = None,
                     score: str = "logit", settings: Settings = Settings(), top1: bool = False):
    """The one jitted call :func:`explain` makes per chunk, checked as :func:`explain` checks its arguments:
    ``run(params, x, classes, keys) -> (maps, probs, classes)`` for batches of ``input_shape`` (H, W, C)
    images, ``classes`` N x K int32, ``keys`` one per image; with ``top1`` the classes are each image's
    argmax, taken inside the same call, so nothing runs twice. For timing the method without
    :func:`explain`'s chunking and transfers (``benchmarks/``); equal arguments return the same function."""
    if method not in METHODS:
        raise unknown("method", method, METHODS)
    if score not in ("logit", "probability"):
        raise JaxvizError(f"score must be 'logit' or 'probability', got {score!r}")
    model.check_input((1,) + tuple(input_shape))
    check_classifier(model, input_shape, method)
    layer = cam_layer(model, layer, input_shape) if method in LAYER_METHODS else None
    return _compile(model, layer, method, score, settings, top1)


@functools.lru_cache(maxsize=32)
def _compile(model, layer, method, score, cfg, top1):
    impl = _IMPLS[method]
    logits = score == "logit"

    def run(params, x, classes, keys):  # keys: one per image (only smoothgrad draws noise)
        if layer is None:  # input maps: the output alone
            out = model.run(params, x)
            probs, feats, grads = out.output, None, None
            if top1:
                classes = jnp.argmax(probs, axis=-1).astype(jnp.int32)[:, None]
        else:  # one forward pass: features, scores, and the gradient at the layer by a zero perturbation
            def forward(delta):
                out = model.run(params, x, taps=(layer,), perturb={layer: delta})
                return (out.logits if logits else out.output), (out.taps[layer], out.output)

            zero = jnp.zeros(x.shape[:1] + layer_shape(model, layer, x.shape[1:]), x.dtype)
            scores, back, (feats, probs) = jax.vjp(forward, zero, has_aux=True)
            if top1:
                classes = jnp.argmax(probs, axis=-1).astype(jnp.int32)[:, None]
            grads = None
            if getattr(impl, "needs_grad", False):
                onehot = jax.nn.one_hot(classes, scores.shape[-1], dtype=scores.dtype)  # N K classes
                grads = jnp.moveaxis(jax.vmap(lambda e: back(e)[0], in_axes=1)(onehot), 0, 1)  # N K h w C
        return impl(model, params, x, feats, grads, classes, keys, cfg, logits), probs, classes

    return jax.jit(run)


def resolve_classes(model: Model, n: int, n_classes: int, classes) -> np.ndarray:
    """N x K class indices from per-image lists or one list for all images, checked against the range."""
    cls = np.asarray(classes, np.int64)
    if cls.ndim == 0:
        cls = cls[None]
    cls = np.broadcast_to(cls if cls.ndim == 2 else cls[None, :], (n, cls.shape[-1]))
    bad = cls[(cls < 0) | (cls >= n_classes)]
    if bad.size:
        raise JaxvizError(f"class index {int(bad[0])} out of range for {model.name}: valid 0..{n_classes - 1}")
    return cls


def explain(
    model: Model,
    params: Mapping,
    x: jax.Array,
    classes: Sequence[Sequence[int]] | Sequence[int] | int | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    score: str = "logit",
    key: jax.Array | None = None,
    settings: Settings = Settings(),
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Cams:
    """Heatmaps of ``method`` for a batch ``x`` (N, H, W, C, preprocessed) and K classes per image.

    ``classes``: per image a list of K class indices, one list for all images, or None for each
    image's top-1. ``layer``: the conv layer of the layer maps (default the last conv layer); input
    maps ignore it. ``score``: ``logit`` (pre-softmax, as in the Grad-CAM paper) or ``probability``
    (the post-softmax output, as the seeds' Listing 5.42). ``key``: the noise of ``smoothgrad``.
    ``batch_size``: images per compiled call (bounds memory for a folder of photos; default: all on
    accelerators, calls of 16, 4 and 1 images on CPUs, :func:`jaxviz.methods.sharding.chunks`); each
    call's images are split evenly over ``devices`` (default all of ``jax.devices()``). The maps do not
    depend on the chunking beyond float32 rounding.
    """
    if method not in METHODS:  # the method's name before the input's shape, as always
        raise unknown("method", method, METHODS)
    x = jnp.asarray(x, jnp.float32)
    model.check_input(x.shape)
    top1 = classes is None
    run = compiled_explain(model, x.shape[1:], method, layer, score, settings, top1)  # checks every argument
    n_classes = output_shape(model, x.shape[1:])[0]
    cls = np.zeros((x.shape[0], 1), np.int32) if top1 else resolve_classes(model, x.shape[0], n_classes, classes)
    key = jax.random.key(0) if key is None else key
    mesh = batch_mesh(devices)
    params = replicate(mesh, params)
    x, cls = np.asarray(x), np.asarray(cls, np.int32)
    keys = jax.random.split(key, x.shape[0])  # image i's noise depends on i only, not on the chunking
    parts = []
    for start, b in chunks(x.shape[0], batch_size, mesh):  # per device: CPUs in cache-sized calls
        n = min(b, x.shape[0] - start)
        xs, cs, ks = shard_batch(mesh, pad_to(x[start:start + b], b), pad_to(cls[start:start + b], b),
                                 pad_to(keys[start:start + b], b))
        parts.append([gather(a)[:n] for a in run(params, xs, cs, ks)])
    heat, probs, cls = (np.concatenate(p) for p in zip(*parts))
    heat = np.asarray(heat, np.float32)
    if np.any(heat.reshape(heat.shape[0] * heat.shape[1], -1).max(axis=1) == 0):
        why = ("every weighted channel is negative" if method in LAYER_METHODS else
               "the image equals the zero baseline, e.g. a black image" if method == "ig" else "the gradient is zero")
        warnings.warn(f"some {method} maps are all zero ({why}); returned as zeros")
    return Cams(heat, np.asarray(cls), np.asarray(probs, np.float32))


def check_classifier(model: Model, input_shape: Sequence[int], method: str = "gradcam") -> int:
    """The number of classes of the model's output; a model without a class-score output raises."""
    out = output_shape(model, input_shape)
    if len(out) != 1:
        raise JaxvizError(f"{method} needs class scores, but {model.name} ends in {model.resolve(model.layer_names[-1])!r}"
                          f" with output shape {out}; use a model with its classifier (e.g. without _notop)")
    return int(out[0])


def cam_layer(model: Model, layer: str | None, input_shape: Sequence[int]) -> str:
    """The layer of the layer maps (default the model's :meth:`~jaxviz.nn.protocol.Model.cam_layer`),
    checked: it must have a spatial map (H x W x C)."""
    layer = model.resolve(layer) if layer else model.cam_layer()
    shapes = model.shapes(input_shape)
    if not is_spatial(dict(shapes)[layer]):
        spatial = [n for n, s in shapes if is_spatial(s)]
        raise JaxvizError(f"layer {layer!r} of {model.name} has output shape {dict(shapes)[layer]}, no spatial map "
                          f"for a class activation map; choose a layer with one, e.g. {', '.join(spatial[-4:])}")
    return layer


def gradcam(model: Model, params: Any, x: jax.Array, classes=None, layer: str | None = None,
            score: str = "logit") -> Cams:
    """Grad-CAM (:func:`explain` with ``method="gradcam"``)."""
    return explain(model, params, x, classes, method="gradcam", layer=layer, score=score)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (ties get their average rank)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def randomization_check(key: jax.Array, model: Model, params: Any, x: jax.Array, classes=None, *,
                        method: str = "gradcam", layer: str | None = None, **kw) -> np.ndarray:
    """Adebayo et al. (2018) model-parameter randomisation test: re-initialise every layer above
    ``layer`` (default the last conv layer) and return, per image and class, the Spearman rank
    correlation between the maps before and after. A method that explains the model gives a low
    value; one that mostly reflects the image (guided backprop is the known case) stays high.
    ``key`` draws the fresh weights (and the noise of ``smoothgrad``)."""
    layer = model.resolve(layer) if layer else model.cam_layer()
    names = model.layer_names
    above = names[names.index(layer) + 1:]
    k_init, kw["key"] = jax.random.split(key)
    randomized = model.reinit(params, k_init, above, np.shape(x)[1:])
    before = explain(model, params, x, classes, method=method, layer=layer, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = explain(model, randomized, x, before.classes, method=method, layer=layer, **kw)
    n, k = before.classes.shape
    return np.array([[spearman(before.heatmaps[i, j], after.heatmaps[i, j]) for j in range(k)] for i in range(n)])
