"""Input maps: gradients of the class score with respect to the (preprocessed) input pixels; the map
has the input's resolution (H x W), is non-negative and divided by its maximum.

Each ``_name`` function here is the ``fn`` of one :class:`jaxviz.methods.attribution.Method` record:
``fn(model, params, x, feats, grads, classes, keys, cfg, logits, layer) -> N x K x H x W`` maps in [0, 1].

Methods that average over samples (noisy copies, path points, occluded or masked copies) go through
them in chunks of ``cfg.chunk`` per image and class (:func:`chunked_sum`, a ``lax.scan``), so memory
does not grow with the number of samples. Noise and masks are drawn from the image's key (``keys[i]``,
``jax.random.split(key, N)[i]`` in :func:`jaxviz.explain`): sample ``s`` uses ``fold_in(keys[i], s)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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


def saliency(model, params, x, feats, grads, classes, key, cfg, logits, layer=None):
    """Simonyan et al. (2014): max over colour channels of |d score / d pixel|."""
    grad = _input_grad(model, params, logits)
    return jax.vmap(jax.vmap(lambda im, c: _abs_max_channels(grad(im, c)), in_axes=(None, 0)))(x, classes)


def smoothgrad(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
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


def ig(model, params, x, feats, grads, classes, key, cfg, logits, layer=None):
    attr = integrated_gradients(model, params, x, classes, steps=cfg.steps, logits=logits)
    return jax.vmap(jax.vmap(lambda a: normalise(jnp.abs(a.sum(axis=-1)))))(attr)


def guided_backprop(model, params, x, feats, grads, classes, key, cfg, logits, layer=None):
    """Springenberg et al. (2015): the input gradient with every ReLU's backward pass guided
    (:func:`jaxviz.nn.layers.guided_relu`, and ``guided_relu6`` for ReLU6 networks), |.| max over channels."""
    return saliency(policy.guided(model), params, x, feats, grads, classes, key, cfg, logits)


# -- chunked sums over a sample axis ------------------------------------------------------------------
def chunked_sum(f, n: int, chunk: int):
    """``sum(f(i) for i in range(n))`` for a pytree-valued ``f`` of an int32 index, ``chunk`` samples
    vmapped at a time inside a ``lax.scan`` (memory: one chunk, whatever ``n``)."""
    chunk = max(1, min(int(chunk), int(n)))
    count = -(-int(n) // chunk)

    def body(acc, c):
        idx = c * chunk + jnp.arange(chunk, dtype=jnp.int32)
        vals = jax.vmap(f)(jnp.minimum(idx, n - 1))
        keep = idx < n
        part = jax.tree_util.tree_map(lambda v: jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0).sum(0),
                                      vals)
        return jax.tree_util.tree_map(jnp.add, acc, part), None

    zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape[1:], s.dtype),
                                  jax.eval_shape(jax.vmap(f), jnp.zeros(chunk, jnp.int32)))
    return jax.lax.scan(body, zero, jnp.arange(count))[0]


def chunked_moments(f, n: int, chunk: int):
    """Mean and population variance over ``i < n`` of an array-valued ``f(i)``, chunk by chunk (Chan et
    al.'s pairwise update, no ``E[g^2] - E[g]^2`` cancellation)."""
    chunk = max(1, min(int(chunk), int(n)))
    count = -(-int(n) // chunk)

    def body(carry, c):
        seen, mean, m2 = carry
        idx = c * chunk + jnp.arange(chunk, dtype=jnp.int32)
        vals = jax.vmap(f)(jnp.minimum(idx, n - 1))
        keep = (idx < n).reshape((-1,) + (1,) * (vals.ndim - 1))
        nb = jnp.sum(idx < n).astype(vals.dtype)
        mb = jnp.where(keep, vals, 0).sum(0) / nb
        m2b = jnp.where(keep, (vals - mb) ** 2, 0).sum(0)
        total = seen + nb
        delta = mb - mean
        return (total, mean + delta * nb / total, m2 + m2b + delta**2 * seen * nb / total), None

    shape = jax.eval_shape(f, jnp.int32(0))
    zero = jnp.zeros(shape.shape, shape.dtype)
    (seen, mean, m2), _ = jax.lax.scan(body, (jnp.zeros((), shape.dtype), zero, zero), jnp.arange(count))
    return mean, m2 / seen


def _per_image_class(one):
    """``one(im, c, k) -> map`` over N images (with their keys) and K classes."""
    return lambda x, classes, keys: jax.vmap(lambda im, cs, k: jax.vmap(lambda c: one(im, c, k))(cs))(x, classes, keys)


def _sum_channels_map(a: jax.Array) -> jax.Array:
    return normalise(jnp.abs(a.sum(axis=-1)))


# -- gradient x input and noise statistics -----------------------------------------------------------
def input_x_gradient(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    """Shrikumar et al. (2016) / captum's InputXGradient: ``x * d score / d x``; the map is |sum over
    colour channels| (as :func:`ig`, of which it is the one-step case with a zero baseline)."""
    grad = _input_grad(model, params, logits)
    return _per_image_class(lambda im, c, k: _sum_channels_map(im * grad(im, c)))(x, classes, keys)


def _noisy(im, k, s, noise):
    sigma = noise * (im.max() - im.min())
    return im + jax.random.normal(jax.random.fold_in(k, s), im.shape, im.dtype) * sigma


def vargrad(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    """Adebayo et al. (2018) / Hooker et al. (2019), VarGrad: the population variance of the input
    gradient over ``samples`` noisy copies (SmoothGrad's noise: sigma = ``noise`` x (max - min)),
    max over colour channels."""
    grad = _input_grad(model, params, logits)

    def one(im, c, k):
        var = chunked_moments(lambda s: grad(_noisy(im, k, s, cfg.noise), c), cfg.samples, cfg.chunk)[1]
        return normalise(var.max(axis=-1))

    return _per_image_class(one)(x, classes, keys)


def squaregrad(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    """Hooker et al. (2019), SmoothGrad-Squared (SquareGrad): the mean of the squared input gradient
    over ``samples`` noisy copies, max over colour channels."""
    grad = _input_grad(model, params, logits)

    def one(im, c, k):
        sq = chunked_sum(lambda s: grad(_noisy(im, k, s, cfg.noise), c) ** 2, cfg.samples, cfg.chunk)
        return normalise(sq.max(axis=-1) / cfg.samples)

    return _per_image_class(one)(x, classes, keys)


# -- Blur IG --------------------------------------------------------------------------------------
def _kernel(sigma: jax.Array, t: jax.Array, truncate: float):
    """scipy's unnormalised 1-d Gaussian at offsets ``t`` (zero beyond the radius ``int(truncate sigma + 0.5)``)."""
    safe = jnp.where(sigma > 0, sigma, 1.0)
    inside = jnp.abs(t) <= jnp.floor(truncate * sigma + 0.5)
    return jnp.where(inside, jnp.exp(-0.5 * t**2 / safe**2), 0.0), inside


def blur_matrices(n: int, sigma: jax.Array, step: float, max_radius: int, truncate: float = 4.0):
    """``(B(sigma), B(sigma + step) - B(sigma))``: the n x n matrix of ``scipy.ndimage.gaussian_filter1d(.,
    sigma, mode="constant")`` (kernel radius ``int(truncate sigma + 0.5)``, normalised over its full
    support, zeros outside the image; the identity for sigma 0) and its change over ``step``, the
    change computed from ``expm1`` of the exponents' difference, so no float32 cancellation.
    ``max_radius``: a static bound on the radius."""
    sigma = jnp.asarray(sigma, jnp.float32)
    up = sigma + step
    t = jnp.arange(-max_radius, max_radius + 1, dtype=jnp.float32)
    d = (jnp.arange(n)[:, None] - jnp.arange(n)[None, :]).astype(jnp.float32)

    def change(t):  # e(t, sigma + step) - e(t, sigma), accurately
        e0, in0 = _kernel(sigma, t, truncate)
        e1, in1 = _kernel(up, t, truncate)
        safe = jnp.where(sigma > 0, sigma, 1.0)
        both = e0 * jnp.expm1(-0.5 * t**2 * (1 / up**2 - 1 / safe**2))
        return jnp.where(in0 & (sigma > 0), both, jnp.where(in1, e1, 0.0) - jnp.where(in0, e0, 0.0)), e0, e1

    dt, e0t, e1t = change(t)
    n0, n1 = e0t.sum(), e1t.sum()
    dn = dt.sum()
    dd, e0, e1 = change(d)
    b0 = jnp.where(sigma > 0, e0 / n0, jnp.eye(n, dtype=jnp.float32))
    # e1/n1 - e0/n0 = (e1 - e0)/n1 - e0 (n1 - n0)/(n0 n1); at sigma 0, B(0) is the identity
    db = jnp.where(sigma > 0, dd / n1 - e0 * dn / (n0 * n1), e1 / n1 - jnp.eye(n, dtype=jnp.float32))
    return b0, db


def gaussian_blur(im: jax.Array, sigma: jax.Array, max_radius: int, step: float = 0.0):
    """PAIR's ``gaussian_blur``: ``scipy.ndimage.gaussian_filter(im, [sigma, sigma, 0], mode="constant")``;
    with ``step``, also ``gaussian_blur(im, sigma + step) - gaussian_blur(im, sigma)``."""
    bh, dh = blur_matrices(im.shape[0], sigma, step, max_radius)
    bw, dw = blur_matrices(im.shape[1], sigma, step, max_radius)
    blurred = jnp.einsum("ij,jkc,lk->ilc", bh, im, bw)
    # B'XB'^T - BXB^T = dB X B'^T + B X dB^T
    return blurred, jnp.einsum("ij,jkc,lk->ilc", dh, im, bw + dw) + jnp.einsum("ij,jkc,lk->ilc", bh, im, dw)


BLUR_GRAD_STEP = 0.01  # PAIR's grad_step: the finite difference of the blur in sigma


def blur_integrated_gradients(model: Model, params: Any, x: jax.Array, classes: jax.Array, steps: int = 32,
                              max_sigma: float = 50.0, logits: bool = True, chunk: int = 64) -> jax.Array:
    """Xu et al. (2020), Blur IG (PAIR's ``BlurIG.GetMask``, linear sigma spacing): integrated gradients
    along the path of ever stronger Gaussian blurs, from sigma ``max_sigma`` to 0 (left Riemann sum over
    ``steps`` sigmas ``i max_sigma / steps``). Returns N x K x H x W x ch attributions whose sum
    approaches ``score(x) - score(blur(x, max_sigma))`` (completeness)."""
    grad = _input_grad(model, params, logits)
    radius = int(4.0 * (max_sigma + BLUR_GRAD_STEP) + 0.5)
    dsigma = max_sigma / steps

    def one(im, c):
        def at(i):
            sigma = i.astype(jnp.float32) * dsigma
            blurred, change = gaussian_blur(im, sigma, radius, BLUR_GRAD_STEP)
            dblur = change / BLUR_GRAD_STEP
            return dsigma * dblur * grad(blurred, c)

        return -chunked_sum(at, steps, chunk)

    return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(x, classes)


def blurig(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    attr = blur_integrated_gradients(model, params, x, classes, cfg.steps, cfg.max_sigma, logits, cfg.chunk)
    return jax.vmap(jax.vmap(_sum_channels_map))(attr)


# -- Guided IG ------------------------------------------------------------------------------------
def _isclose(a, b, tol=1e-9):  # math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return jnp.abs(a - b) <= jnp.maximum(tol * jnp.maximum(jnp.abs(a), jnp.abs(b)), tol)


def guided_integrated_gradients(model: Model, params: Any, x: jax.Array, classes: jax.Array,
                                baseline: jax.Array | None = None, steps: int = 32, fraction: float = 0.25,
                                max_dist: float = 0.02, logits: bool = True) -> jax.Array:
    """Kapishnikov et al. (2021), Guided IG (PAIR's ``guided_ig_impl``): at each of ``steps`` steps the
    ``fraction`` of features with the smallest |gradient| move toward the input, every feature kept
    within ``max_dist`` (relative L1) of the straight path. Returns N x K x H x W x ch attributions
    whose sum approaches ``score(x) - score(baseline)`` (completeness); ``baseline`` defaults to zeros.
    The steps are a ``lax.scan``; each step's inner loop (PAIR's ``while gamma > 1``) a bounded
    ``lax.while_loop``."""
    base = jnp.zeros_like(x[0]) if baseline is None else jnp.asarray(baseline, x.dtype)
    grad = _input_grad(model, params, logits)
    size = x[0].size
    rank = math.floor(fraction * (size - 1))  # np.quantile(., fraction, method="lower")
    # each round moves the selected fraction (or, past that, every feature left) to its bound
    cap = 2 * (2 + math.ceil(1.0 / max(fraction, 1.0 / size)))

    def one(im, c):
        total = im - base
        l1_total = jnp.abs(total).sum()

        def step(carry, i):
            xs, attr = carry
            g_act = grad(xs, c)
            alpha = (i + 1.0) / steps
            a_min, a_max = jnp.maximum(alpha - max_dist, 0.0), jnp.minimum(alpha + max_dist, 1.0)
            x_min, x_max = base + total * a_min, base + total * a_max
            l1_target = l1_total * (1 - (i + 1.0) / steps)

            def cond(s):
                return (s[2] > 1.0) & ~s[3] & (s[4] < cap)

            def body(s):
                xs, attr, _, _, it = s
                x_old = xs
                x_alpha = jnp.where(total != 0, (xs - base) / jnp.where(total != 0, total, 1.0), a_max)
                xs = jnp.where(x_alpha < a_min, x_min, xs)
                l1_cur = jnp.abs(xs - im).sum()
                close = _isclose(l1_target, l1_cur)
                g = jnp.where(xs == x_max, jnp.inf, g_act)
                thr = jnp.sort(jnp.abs(g).ravel())[rank]
                sel = (jnp.abs(g) <= thr) & (g != jnp.inf)
                l1_s = (jnp.abs(xs - x_max) * sel).sum()
                gamma = jnp.where(l1_s > 0, (l1_cur - l1_target) / jnp.where(l1_s > 0, l1_s, 1.0), jnp.inf)
                moved = jnp.where(sel, jnp.where(gamma > 1.0, x_max, xs + (x_max - xs) * gamma), xs)
                xs = jnp.where(close, xs, moved)
                return xs, attr + (xs - x_old) * g_act, gamma, close, it + 1

            xs, attr, *_ = jax.lax.while_loop(cond, body, (xs, attr, jnp.inf, False, 0))
            return (xs, attr), None

        (_, attr), _ = jax.lax.scan(step, (base, jnp.zeros_like(im)), jnp.arange(steps))
        return jnp.where(l1_total == 0, 0.0, attr)

    return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(x, classes)


def guidedig(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    attr = guided_integrated_gradients(model, params, x, classes, steps=cfg.steps, fraction=cfg.fraction,
                                       max_dist=cfg.max_dist, logits=logits)
    return jax.vmap(jax.vmap(_sum_channels_map))(attr)


# -- Occlusion and RISE ---------------------------------------------------------------------------
def occlusion_windows(size: int, window: int, stride: int) -> list[int]:
    """captum's Occlusion starts along one axis: ``0, stride, ...`` until the window reaches the end
    (``ceil((size - window) / stride) + 1`` of them; the window is clipped to the image)."""
    window = min(window, size)
    return [i * stride for i in range(-(-(size - window) // stride) + 1)]


def _scores(model, params, x, logits):
    out = model.run(params, x)
    return out.logits if logits else out.output


def occlusion(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    """Zeiler & Fergus (2014) as captum's ``Occlusion`` (baseline 0): each ``window`` x ``window`` patch
    (all channels), slid by ``stride`` from the top-left corner, is set to 0; a pixel's attribution is
    the mean over the patches covering it of ``score(x) - score(occluded)``. The map is its ReLU (a
    patch whose removal raises the score is no evidence), divided by the max; pixels no patch covers
    (``stride > window``) are 0. The patches go through the model ``chunk`` at a time."""
    h, w = x.shape[1:3]
    rows = jnp.array(occlusion_windows(h, cfg.window, cfg.stride))
    cols = jnp.array(occlusion_windows(w, cfg.window, cfg.stride))
    wh, ww = min(cfg.window, h), min(cfg.window, w)
    n_win = rows.size * cols.size
    base = _scores(model, params, x, logits)

    def one(im, y, cls):
        def patch(j):
            r, c = rows[j // cols.size], cols[j % cols.size]
            ii, jj = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
            mask = ((ii >= r) & (ii < r + wh) & (jj >= c) & (jj < c + ww)).astype(im.dtype)
            drop = y[cls] - _scores(model, params, (im * (1 - mask)[..., None])[None], logits)[0, cls]
            return drop[:, None, None] * mask, mask

        total, count = chunked_sum(patch, n_win, cfg.chunk)
        attr = jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
        return jax.vmap(lambda a: normalise(jax.nn.relu(a)))(attr)

    return jax.vmap(one)(x, base, classes)


def rise_mask(key: jax.Array, shape: tuple[int, int], cells: int = 7, keep: float = 0.5) -> jax.Array:
    """One RISE mask (Petsiuk et al. 2018): a ``cells`` x ``cells`` grid of cells kept with probability
    ``keep``, upsampled bilinearly to ``(cells + 1) x ceil(H / cells)`` and cropped at a random shift
    below one cell; H x W in [0, 1]."""
    h, w = shape
    ch, cw = -(-h // cells), -(-w // cells)
    k_grid, k_dy, k_dx = jax.random.split(key, 3)
    grid = (jax.random.uniform(k_grid, (cells, cells)) < keep).astype(jnp.float32)
    big = jax.image.resize(grid, ((cells + 1) * ch, (cells + 1) * cw), "linear")
    dy, dx = jax.random.randint(k_dy, (), 0, ch), jax.random.randint(k_dx, (), 0, cw)
    return jax.lax.dynamic_slice(big, (dy, dx), (h, w))


def rise(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    """Petsiuk et al. (2018), RISE: ``sum_m score(x * M_m) M_m / (masks keep)`` over ``masks`` random
    masks (:func:`rise_mask`; mask m of image i from ``fold_in(keys[i], m)``), one forward pass per
    mask for all K classes, ``chunk`` masks at a time. The map is its ReLU divided by the max (the paper
    scores probabilities, ``score="probability"``; with logits a negative score counts against)."""
    h, w = x.shape[1:3]

    def one(im, cls, k):
        def masked(m):
            mask = rise_mask(jax.random.fold_in(k, m), (h, w), cfg.cells, cfg.keep)
            s = _scores(model, params, (im * mask[..., None])[None], logits)[0, cls]
            return s[:, None, None] * mask

        sal = chunked_sum(masked, cfg.masks, cfg.chunk) / (cfg.masks * cfg.keep)
        return jax.vmap(lambda a: normalise(jax.nn.relu(a)))(sal)

    return jax.vmap(one)(x, classes, keys)


# -- XRAI -----------------------------------------------------------------------------------------
FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)  # PAIR's _FELZENSZWALB_SCALE_VALUES
FELZENSZWALB_SIGMA = 0.8
FELZENSZWALB_SIZE = (224, 224)  # segmentation runs at this size, the segments resized back
FELZENSZWALB_MIN_SIZE = 150
XRAI_DILATION = 5
XRAI_MIN_PIXEL_DIFF = 50


def xrai_segments(im: np.ndarray) -> np.ndarray:
    """PAIR's ``_get_segments_felzenszwalb`` on the host: ``im`` (H, W, ch, the model's input) min-max
    scaled to [-1, 1] and resized to 224 x 224, scikit-image's Felzenszwalb at the six scales (sigma
    0.8, min size 150), each label map resized back (nearest), one mask per label, each dilated by a
    disk of radius 5. Returns M x H x W bool."""
    from skimage import segmentation
    from skimage.morphology import dilation, disk
    from skimage.transform import resize

    im = np.asarray(im, np.float64)
    shape = im.shape[:2]
    lo, hi = im.min(), im.max()
    im = (im - lo) / (hi - lo) if hi > lo else np.zeros_like(im)
    im = resize(im * 2.0 - 1.0, FELZENSZWALB_SIZE, order=3, mode="constant", preserve_range=True,
                anti_aliasing=True)
    masks = []
    for scale in FELZENSZWALB_SCALES:
        seg = segmentation.felzenszwalb(im, scale=scale, sigma=FELZENSZWALB_SIGMA, min_size=FELZENSZWALB_MIN_SIZE,
                                        channel_axis=-1)
        seg = resize(seg, shape, order=0, preserve_range=True, mode="constant", anti_aliasing=False).astype(int)
        masks += [seg == label for label in range(seg.min(), seg.max() + 1)]
    footprint = disk(XRAI_DILATION)
    return np.stack([dilation(m, footprint=footprint) for m in masks])


def max_segments(shape: tuple[int, int]) -> int:
    """A bound on :func:`xrai_segments`' mask count: Felzenszwalb's segments have at least
    ``min_size`` pixels of the 224 x 224 image, at most one per pixel of the image, per scale."""
    per_scale = min(FELZENSZWALB_SIZE[0] * FELZENSZWALB_SIZE[1] // FELZENSZWALB_MIN_SIZE, shape[0] * shape[1])
    return len(FELZENSZWALB_SCALES) * per_scale


def _padded_segments(im: np.ndarray) -> np.ndarray:
    masks = xrai_segments(im)
    out = np.zeros((max_segments(im.shape[:2]),) + im.shape[:2], bool)
    out[:len(masks)] = masks  # empty masks add nothing and are dropped at the first round
    return out


def xrai_greedy(attr: jax.Array, masks: jax.Array, min_pixel_diff: int = XRAI_MIN_PIXEL_DIFF) -> jax.Array:
    """PAIR's ``XRAI._xrai`` (area threshold 1.0): repeatedly add the mask whose new pixels have the
    highest mean attribution (masks adding fewer than ``min_pixel_diff`` pixels are dropped); every
    pixel gets the gain of the mask that added it, pixels no mask covers the mean attribution over
    them. ``attr`` H x W, ``masks`` M x H x W bool; a ``lax.while_loop`` of at most M rounds."""
    h, w = attr.shape
    flat = masks.reshape(masks.shape[0], h * w)
    a = attr.reshape(-1)
    mf = flat.astype(a.dtype)

    def cond(s):
        return s[3]

    def body(s):
        current, remaining, out, _ = s
        free = (~current).astype(a.dtype)
        diff = mf @ free
        remaining = remaining & (diff >= min_pixel_diff)
        gain = jnp.where(remaining, (mf @ (a * free)) / jnp.maximum(diff, 1.0), -jnp.inf)
        best = jnp.argmax(gain)
        go = remaining.any()
        added = flat[best] & ~current & go
        out = jnp.where(added, gain[best], out)
        return current | (flat[best] & go), remaining.at[best].set(False), out, go

    init = (jnp.zeros(h * w, bool), jnp.ones(masks.shape[0], bool), jnp.full(h * w, -jnp.inf, a.dtype), True)
    _, _, out, _ = jax.lax.while_loop(cond, body, init)
    left = out == -jnp.inf
    fill = jnp.where(left, a, 0).sum() / jnp.maximum(left.sum(), 1)
    return jnp.where(left, fill, out).reshape(h, w)


def xrai_attribution(model: Model, params: Any, x: jax.Array, classes: jax.Array, steps: int = 32,
                     logits: bool = True, chunk: int = 64) -> jax.Array:
    """XRAI's base attribution (PAIR's defaults): integrated gradients (``steps`` points of
    ``linspace(0, 1)``, PAIR's ``IntegratedGradients``) from two baselines, the image's minimum and its
    maximum everywhere, averaged; N x K x H x W x ch."""
    grad = _input_grad(model, params, logits)
    alphas = jnp.linspace(0.0, 1.0, steps)

    def one(im, c):
        bases = jnp.stack([jnp.full_like(im, im.min()), jnp.full_like(im, im.max())])

        def at(i):
            b = bases[i // steps]
            return (im - b) * grad(b + alphas[i % steps] * (im - b), c)

        return chunked_sum(at, 2 * steps, chunk) / (2 * steps)

    return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(x, classes)


def xrai(model, params, x, feats, grads, classes, keys, cfg, logits, layer=None):
    """Kapishnikov et al. (2019), XRAI (PAIR's ``XRAI.GetMask``, full algorithm): Felzenszwalb segments
    of the image (:func:`xrai_segments`, on the host through ``jax.pure_callback``, one image at a
    time) ranked greedily by the density of the base attribution (:func:`xrai_attribution`, max over
    colour channels) in their new pixels (:func:`xrai_greedy`). The map is its ReLU divided by the max."""
    h, w = x.shape[1:3]
    attr = xrai_attribution(model, params, x, classes, cfg.steps, logits, cfg.chunk).max(axis=-1)  # N K H W
    spec = jax.ShapeDtypeStruct((max_segments((h, w)), h, w), jnp.bool_)

    def one(item):
        im, a = item
        masks = jax.pure_callback(_padded_segments, spec, im)
        return jax.vmap(lambda m: normalise(jax.nn.relu(xrai_greedy(m, masks))))(a)

    return jax.lax.map(one, (x, attr))
