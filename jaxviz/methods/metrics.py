"""Faithfulness metrics: how well an attribution map ranks the pixels the model relies on.

Every metric takes ``(model, params, images, maps, classes)``: ``images`` N x H x W x C pixels 0..255
(RGB, before the model's preprocessing, which runs inside the compiled call), ``maps`` N x h x w
relevance maps at any resolution (a layer map is resized to H x W, see below), ``classes`` N int (the
explained class of each image). Each returns per-image scores; all perturbations of all images go
through the model in one jitted call (the perturbation steps vmapped, the step axis cut into chunks
of :attr:`Definitions.chunk` to bound memory, images batched).

**Definitions** (the defaults of :class:`Definitions`, each a field there), so numbers compare across
papers and tools:

* *resize*: a map is resized to the input with bilinear interpolation exactly as OpenCV's
  ``cv2.resize(..., interpolation=INTER_LINEAR)`` (pytorch-grad-cam's ``scale_cam_image``): half-pixel
  centres, source coordinates clamped to the edge, no antialiasing when shrinking
  (:func:`resize_linear`; ``jax.image.resize(..., 'linear')`` differs: it antialiases when shrinking).
* *ranking*: pixels by descending relevance, ties by row-major index (a stable sort of ``-map``).
* *steps* S = 100: at step i = 0..S the top ``round(i * H * W / S)`` pixels are changed (round half to
  even, as Python's ``round``).
* *deletion* (Petsiuk et al. 2018, RISE): those pixels are set to 0 in pixel space (black, before the
  preprocessing); *insertion*: the canvas is the image blurred by ``cv2.GaussianBlur(img, (11, 11),
  sigmaX=5)`` (border ``BORDER_REFLECT_101``; :func:`gaussian_blur`) and those pixels are restored.
* *score*: the softmax probability of the explained class (softmax of the model's logits).
* *AUC*: the trapezoid rule over i / S in [0, 1]. Deletion: lower is better; insertion: higher.
* *ROAD* (Rong et al. 2022): at each fraction f of :attr:`Definitions.road_fractions` (0.1..0.9, as
  pytorch-grad-cam's ROAD averagers) the top (``road_morf``, most relevant first) or the bottom
  (``road_lerf``, least relevant first) ``round(f * H * W)`` pixels of the ranking are replaced by the
  paper's noisy linear imputation (:func:`impute`): each removed pixel is the weighted mean of its 8
  neighbours (1/6 direct, 1/12 diagonal, weights of neighbours outside the image dropped), solved for
  all removed pixels at once, then Gaussian noise of sigma ``road_noise`` = 0.01 is added to them in
  the model's input space (the paper's and pytorch-grad-cam's normalised tensor). The imputation is
  linear with weights summing to one, so imputing the pixels and then preprocessing equals imputing
  the preprocessed image. The score is the mean class probability over the fractions; ``road`` is
  ``(road_lerf - road_morf) / 2`` (pytorch-grad-cam's ``ROADCombined``; higher is better).
  The system is solved by Jacobi-preconditioned conjugate gradients to a relative residual of
  ``road_tol`` (pytorch-grad-cam solves it exactly with ``scipy.sparse.linalg.spsolve``).
* *Average Drop*, *Increase in Confidence* (Chattopadhyay et al. 2018, Grad-CAM++) and *Average Gain*
  (Zhang et al. 2023, Opti-CAM): the image is multiplied by its map (resized, in [0, 1]) in pixel
  space; with Y the class probability of the image and O that of the masked image, per image
  ``100 * max(0, Y - O) / Y``, ``100 * [O > Y]`` and ``100 * max(0, O - Y) / (1 - Y)``; their means are
  the papers' percentages.
* *pointing game* (Zhang et al. 2016): a hit (1) when the map's maximum (the first in row-major order)
  lies within ``tolerance`` = 15 pixels of the object's box or mask, else 0; NaN for an image without one.

Randomness is explicit: ROAD's noise for image i comes from ``jax.random.fold_in(key, i)`` (fraction j of
``road_morf`` from ``fold_in(that, j)``, of ``road_lerf`` from ``fold_in(that, F + j)``, F fractions), so
it does not depend on the batch or the devices.

:data:`METRICS` lists every metric (name, which way is better, what it needs); the model-randomisation
check (Adebayo et al. 2018) is :func:`jaxviz.methods.attribution.randomization_check`, which
:func:`jaxviz.methods.evaluate.evaluate` reports as the ``randomization`` metric.

Why one module of ~500 lines: every metric shares the ranking, the resize and the perturbation
schedule defined here (the Definitions); one file keeps the definitions and their uses side by side.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError, unknown
from jaxviz.nn.finite import is_finite_number
from jaxviz.nn.preprocess import preprocess
from jaxviz.nn.protocol import Model
from jaxviz.nn.jit import jit


class Definitions(NamedTuple):
    """The metrics' settings (hashable: part of the compilation key); the defaults are the module's
    definitions.

    Attributes:
      steps: S, perturbation steps of deletion and insertion (S + 1 model calls per image), 1..10000.
      blur_ksize, blur_sigma: the insertion canvas, ``cv2.GaussianBlur(img, (k, k), sigmaX=sigma)``.
      road_fractions: the shares of pixels ROAD removes (each in (0, 1)).
      road_noise: sigma of the noise on imputed pixels, in the model's input space.
      road_tol: relative residual at which the imputation's conjugate gradients stop.
      tolerance: the pointing game's tolerance in input pixels.
      chunk: at most this many perturbed copies of each image per model call (bounds memory; the
        step axis is cut into equal chunks).
      random_grid: the random-map baseline of :func:`jaxviz.methods.evaluate.evaluate` is uniform noise on a
        ``random_grid`` x ``random_grid`` grid resized like a layer map (7: a CAM layer of a 224 input).
        Not per-pixel noise: scattered black pixels act as adversarial noise and drive the class
        probability down faster than any smooth map (EfficientNet-Lite0, 4 photos: deletion AUC 0.025
        for per-pixel noise against 0.116 for Grad-CAM), so such a baseline would rank every method below it.
    """

    steps: int = 100
    blur_ksize: int = 11
    blur_sigma: float = 5.0
    road_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    road_noise: float = 0.01
    road_tol: float = 1e-6
    tolerance: float = 15.0
    chunk: int = 34
    random_grid: int = 7


class Metric(NamedTuple):
    """One metric: its name, whether a higher score is better, and what it needs beyond the map
    (``regions``: a box or mask per image; ``method``: the attribution method itself)."""

    name: str
    higher_is_better: bool
    description: str
    needs: str = ""


METRICS: tuple[Metric, ...] = (
    Metric("deletion", False, "deletion AUC: class probability as the most relevant pixels turn black"),
    Metric("insertion", True, "insertion AUC: class probability as the most relevant pixels return to a blurred image"),
    Metric("road_morf", False, "ROAD, most relevant first: mean probability after imputing the top pixels"),
    Metric("road_lerf", True, "ROAD, least relevant first: mean probability after imputing the bottom pixels"),
    Metric("road", True, "ROAD combined: (road_lerf - road_morf) / 2"),
    Metric("average_drop", False, "Average Drop %: the probability lost when the image is multiplied by its map"),
    Metric("increase_in_confidence", True, "Increase in Confidence %: how often the masked image scores higher"),
    Metric("average_gain", True, "Average Gain %: the probability gained by the masked image, of what could be"),
    Metric("pointing_game", True, "pointing game: the map's peak within tolerance of the object's box or mask",
           "regions"),
    Metric("randomization", False, "Adebayo randomisation: Spearman correlation with the map of a model whose "
                                   "layers above the CAM layer are re-initialised", "method"),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
METRIC_NAMES = tuple(BY_NAME)
MAP_METRICS = tuple(m.name for m in METRICS if m.needs != "method")
"""The metrics computed from a map (all but ``randomization``, which re-runs the method)."""


def metric_record(name: str) -> Metric:
    """The record of metric ``name``; an unknown name raises an error that lists the valid ones."""
    if name not in BY_NAME:
        raise unknown("metric", name, METRIC_NAMES)
    return BY_NAME[name]


def check_definitions(d: Definitions) -> None:
    """Raise unless every field of ``d`` is in range."""
    def num(name, v, lo, hi):
        if not is_finite_number(v) or not lo <= v <= hi:
            raise JaxvizError(f"definitions.{name} must be {lo}..{hi}, got {v}")

    num("steps", d.steps, 1, 10_000)
    num("blur_ksize", d.blur_ksize, 1, 255)
    if int(d.blur_ksize) % 2 != 1:
        raise JaxvizError(f"definitions.blur_ksize must be odd (as cv2.GaussianBlur's), got {d.blur_ksize}")
    num("blur_sigma", d.blur_sigma, 1e-3, 1000)
    num("road_noise", d.road_noise, 0, 100)
    num("road_tol", d.road_tol, 1e-12, 1e-1)
    num("tolerance", d.tolerance, 0, 1e6)
    num("chunk", d.chunk, 1, 65_536)
    num("random_grid", d.random_grid, 1, 4096)
    if not d.road_fractions or not all(is_finite_number(f) and 0 < f < 1 for f in d.road_fractions):
        raise JaxvizError(f"definitions.road_fractions must be shares strictly between 0 and 1, got "
                          f"{d.road_fractions}")


# -- resize and blur, as OpenCV does them ---------------------------------------------------------------
def linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The n_out x n_in matrix of ``cv2.resize(..., INTER_LINEAR)`` along one axis: output index d reads
    source coordinate ``(d + 0.5) * n_in / n_out - 0.5`` (float32, as OpenCV), clamped to the edge."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), np.float64)
    for d in range(n_out):
        f = float(np.float32((d + 0.5) * scale - 0.5))
        s = math.floor(f)
        f -= s
        if s < 0:
            s, f = 0, 0.0
        if s >= n_in - 1:
            s, f = n_in - 1, 0.0
        m[d, s] += 1 - f
        if f:
            m[d, s + 1] += f
    return m.astype(np.float32)


def resize_linear(maps: jax.Array, size: Sequence[int]) -> jax.Array:
    """``maps`` (..., h, w) resized to ``size`` (H, W) as ``cv2.resize(m, (W, H), interpolation=INTER_LINEAR)``
    on float32 maps (traceable; the interpolation matrices are constants)."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    my, mx = linear_matrix(h, size[0]), linear_matrix(w, size[1])
    return jnp.einsum("yh,...hw,xw->...yx", my, maps, mx, precision=jax.lax.Precision.HIGHEST)


def gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    """``cv2.getGaussianKernel(ksize, sigma, CV_32F)`` for sigma > 0: exp(-x^2 / 2 sigma^2), normalised."""
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(pixels: jax.Array, ksize: int = 11, sigma: float = 5.0) -> jax.Array:
    """``cv2.GaussianBlur(img, (ksize, ksize), sigmaX=sigma)`` of (..., H, W, C) float images: the
    separable kernel of :func:`gaussian_kernel`, border ``BORDER_REFLECT_101`` (numpy's ``reflect``)."""
    k = jnp.asarray(gaussian_kernel(ksize, sigma))
    r = ksize // 2
    lead = pixels.ndim - 3
    pad = [(0, 0)] * lead + [(r, r), (r, r), (0, 0)]
    x = jnp.pad(pixels, pad, mode="reflect")
    h, w = pixels.shape[-3:-1]
    x = sum(k[i] * x[..., i:i + h, :, :] for i in range(ksize))  # rows, then columns (as cv2's sepFilter2D)
    return sum(k[i] * x[..., :, i:i + w, :] for i in range(ksize))


# -- ranking and the perturbation curves ------------------------------------------------------------------
def ranks(maps: jax.Array) -> jax.Array:
    """Each pixel's place (0 = most relevant) in the ranking by descending relevance, ties by row-major
    index: int32 (..., H, W) for maps (..., H, W)."""
    flat = maps.reshape(maps.shape[:-2] + (-1,))
    order = jnp.argsort(0.0 - flat, axis=-1, stable=True)  # 0.0 - 0.0 is +0.0: -0.0 sorts first in XLA
    return jnp.argsort(order, axis=-1).astype(jnp.int32).reshape(maps.shape)  # the inverse permutation


def step_counts(steps: int, pixels: int) -> np.ndarray:
    """Pixels changed at each step i = 0..S: ``round(i * pixels / S)`` (half to even, as Python)."""
    return np.array([round(i * pixels / steps) for i in range(steps + 1)], np.int32)


def _chunks(total: int, most: int) -> tuple[int, int]:
    """(calls, size): ``total`` items in equal calls of at most ``most``."""
    calls = -(-total // most)
    return calls, -(-total // calls)


def class_prob(model: Model, params: Any, pixels: jax.Array, classes: jax.Array) -> jax.Array:
    """Softmax probability of ``classes`` (B) for pixel images (B x H x W x C, 0..255)."""
    out = model.run(params, preprocess(pixels, model.preprocessing))
    p = jax.nn.softmax(out.logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(p, classes[:, None], axis=-1)[:, 0]


def _curves(model, params, pixels, rank, classes, counts, canvas, restore, chunk):
    """Class probability at each count: N x len(counts). Step image = where(rank < count, A, B) with
    (A, B) = (canvas, image) for deletion and (image, canvas) for insertion (``restore``)."""
    n = pixels.shape[0]
    calls, size = _chunks(len(counts), chunk)
    padded = np.concatenate([counts, np.repeat(counts[-1:], calls * size - len(counts))]).reshape(calls, size)

    def one_call(ks):  # ks: size counts -> N x size probabilities, one model call of N * size images
        changed = (rank[:, None] < ks[None, :, None, None])[..., None]  # N size H W 1
        a, b = (pixels[:, None], canvas[:, None]) if restore else (canvas[:, None], pixels[:, None])
        x = jnp.where(changed, a, b).reshape((n * size,) + pixels.shape[1:])
        return class_prob(model, params, x, jnp.repeat(classes, size)).reshape(n, size)

    probs = jax.lax.map(one_call, jnp.asarray(padded))  # calls N size
    return jnp.moveaxis(probs, 0, 1).reshape(n, -1)[:, :len(counts)]


def auc(curve: jax.Array) -> jax.Array:
    """Trapezoid rule over i / S in [0, 1] of curves (..., S + 1)."""
    s = curve.shape[-1] - 1
    return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * s)


# -- ROAD's noisy linear imputation ------------------------------------------------------------------------
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))
"""ROAD's neighbour weights ((row, column) offset, weight), from the paper's code."""


def _shift(z: jax.Array, dy: int, dx: int) -> jax.Array:
    """out[y, x] = z[y + dy, x + dx], zero outside (z: H x W x ...)."""
    h, w = z.shape[:2]
    p = jnp.pad(z, [(1, 1), (1, 1)] + [(0, 0)] * (z.ndim - 2))
    return p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def _neighbour_sum(z: jax.Array) -> jax.Array:
    return sum(w * _shift(z, dy, dx) for (dy, dx), w in NEIGHBOURS)


def impute(pixels: jax.Array, removed: jax.Array, tol: float = 1e-6, maxiter: int | None = None) -> jax.Array:
    """ROAD's linear imputation (without noise) of one image: every ``removed`` pixel (bool H x W) becomes
    the weighted mean of its 8 neighbours (:data:`NEIGHBOURS`; neighbours outside the image dropped),
    known or removed, solved for all removed pixels at once per channel (``pixels`` H x W x C).

    The system (the paper's) is symmetric positive definite whenever a pixel is kept; it is solved by
    conjugate gradients with a Jacobi preconditioner, from the mean of the kept pixels, to a relative
    residual of ``tol`` (at most ``maxiter`` iterations, default ``10 * (H + W)``)."""
    h, w, c = pixels.shape
    u = removed.astype(pixels.dtype)[..., None]  # H W 1
    s = _neighbour_sum(jnp.ones((h, w, 1), pixels.dtype))  # the weights of the neighbours inside the image
    known = pixels * (1 - u)
    b = u * _neighbour_sum(known)

    def a(z):  # on removed pixels s*z - sum w z_neighbour(removed); identity on kept ones
        return u * (s * z - _neighbour_sum(u * z)) + (1 - u) * z

    count = jnp.maximum((1 - u).sum(), 1.0)
    x0 = u * (known.sum((0, 1), keepdims=True) / count)
    inv = u / s + (1 - u)
    maxiter = maxiter or 10 * (h + w)
    z, _ = jax.scipy.sparse.linalg.cg(a, b, x0=x0, tol=tol, atol=0.0, maxiter=maxiter, M=lambda r: inv * r)
    return jnp.where(u > 0, z, pixels)


def _road(model, params, pixels, rank, classes, keys, d: Definitions):
    """N x 2 x F class probabilities (MoRF, LeRF) at each of the F fractions."""
    n, h, w, c = pixels.shape
    hw = h * w
    counts = jnp.asarray([round(f * hw) for f in d.road_fractions], jnp.int32)
    f = len(d.road_fractions)
    mode = model.preprocessing

    def one(img, rk, key, cls):
        removed = jnp.concatenate([rk[None] < counts[:, None, None], rk[None] >= hw - counts[:, None, None]])  # 2F H W
        # one solve after another (lax.map): each stops at its own convergence, where a vmap would run
        # every system for as many iterations as the slowest needs
        filled = jax.lax.map(lambda r: impute(img, r, d.road_tol), removed)
        noise = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), (h, w, c)))(jnp.arange(2 * f))
        x = preprocess(filled, mode) + d.road_noise * noise * removed[..., None]
        return x, jnp.repeat(cls, 2 * f)

    x, cl = jax.lax.map(lambda a: one(*a), (pixels, rank, keys, classes))  # N 2F H W C (model input), N 2F
    calls, size = _chunks(2 * f, d.chunk)
    pad = calls * size - 2 * f
    x = jnp.concatenate([x, jnp.repeat(x[:, -1:], pad, axis=1)], 1) if pad else x
    cl = jnp.concatenate([cl, jnp.repeat(cl[:, -1:], pad, axis=1)], 1) if pad else cl

    def one_call(i):  # the i-th chunk of every image's imputed copies, one model call
        xs = jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1).reshape((n * size, h, w, c))
        cs = jax.lax.dynamic_slice_in_dim(cl, i * size, size, axis=1).reshape(-1)
        out = model.run(params, xs)
        p = jax.nn.softmax(out.logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(p, cs[:, None], axis=-1)[:, 0].reshape(n, size)

    p = jnp.moveaxis(jax.lax.map(one_call, jnp.arange(calls)), 0, 1).reshape(n, -1)[:, :2 * f]
    return p.reshape(n, 2, f)


# -- the scores ----------------------------------------------------------------------------------------------
def _pointing(maps, regions, tolerance):
    """1 hit / 0 miss / NaN without a region, per image (maps, regions: N x H x W)."""
    n, h, w = maps.shape
    peak = jnp.argmax(maps.reshape(n, -1), axis=-1)  # the first maximum in row-major order
    py, px = peak // w, peak % w
    yy, xx = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    near = (yy - py[:, None, None]) ** 2 + (xx - px[:, None, None]) ** 2 <= tolerance**2
    hit = jnp.any(near & regions, axis=(1, 2))
    return jnp.where(jnp.any(regions, axis=(1, 2)), hit.astype(jnp.float32), jnp.nan)


def scores(model: Model, params: Any, pixels: jax.Array, maps: jax.Array, classes: jax.Array, keys: jax.Array,
           regions: jax.Array | None, names: Sequence[str], d: Definitions) -> dict[str, jax.Array]:
    """The traceable core of every map metric: ``{name: N scores}`` for ``names`` (of :data:`MAP_METRICS`),
    plus ``deletion_curve`` / ``insertion_curve`` (N x S + 1) when those are asked. ``pixels`` N x H x W x C
    0..255, ``maps`` N x h x w, ``classes`` N int, ``keys`` one per image (ROAD's noise), ``regions`` N x H x W
    bool or None. Call it inside your own jit; :func:`faithfulness` is the compiled public form."""
    n, h, w, c = pixels.shape
    pixels = pixels.astype(jnp.float32)
    m = resize_linear(maps.astype(jnp.float32), (h, w))
    rank = ranks(m)
    classes = classes.astype(jnp.int32)
    out = {}
    counts = step_counts(d.steps, h * w)
    if "deletion" in names:
        curve = _curves(model, params, pixels, rank, classes, counts, jnp.zeros_like(pixels), False, d.chunk)
        out["deletion"], out["deletion_curve"] = auc(curve), curve
    if "insertion" in names:
        blurred = gaussian_blur(pixels, d.blur_ksize, d.blur_sigma)
        curve = _curves(model, params, pixels, rank, classes, counts, blurred, True, d.chunk)
        out["insertion"], out["insertion_curve"] = auc(curve), curve
    if {"road", "road_morf", "road_lerf"} & set(names):
        p = _road(model, params, pixels, rank, classes, keys, d).mean(-1)
        out.update(road_morf=p[:, 0], road_lerf=p[:, 1], road=(p[:, 1] - p[:, 0]) / 2)
    if {"average_drop", "increase_in_confidence", "average_gain"} & set(names):
        both = jnp.concatenate([pixels, pixels * m[..., None]])
        y, o = jnp.split(class_prob(model, params, both, jnp.concatenate([classes, classes])), 2)
        out["average_drop"] = 100 * jnp.where(y > 0, jnp.maximum(y - o, 0) / jnp.where(y > 0, y, 1), 0.0)
        out["increase_in_confidence"] = 100 * (o > y).astype(jnp.float32)
        out["average_gain"] = 100 * jnp.where(y < 1, jnp.maximum(o - y, 0) / jnp.where(y < 1, 1 - y, 1), 0.0)
    if "pointing_game" in names:
        reg = jnp.zeros((n, h, w), bool) if regions is None else regions.astype(bool)
        out["pointing_game"] = _pointing(m, reg, d.tolerance)
    return {k: v for k, v in out.items() if k in names or k.endswith("_curve")}


@functools.lru_cache(maxsize=32)
def _compile(model, names, d, with_regions):
    def run(params, pixels, maps, classes, keys, regions):
        return scores(model, params, pixels, maps, classes, keys, regions if with_regions else None, names, d)

    return jit(run)


def image_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
    """Image ``i``'s key: ``fold_in(key, i)`` (independent of the batch it comes in)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices, jnp.uint32))


def check_names(metrics: "str | Sequence[str]", allowed: Sequence[str] = METRIC_NAMES) -> tuple[str, ...]:
    """``"all"``, one name or several -> a tuple of metric names in :data:`METRICS` order (unknown: an error
    that lists the valid ones)."""
    names = list(allowed) if metrics == "all" else ([metrics] if isinstance(metrics, str) else list(metrics))
    if not names:
        raise JaxvizError("metrics is empty: name at least one metric, or 'all'")
    for n in names:
        metric_record(n)
        if n not in allowed:
            raise JaxvizError(f"metric {n!r} is not computed from a map here; valid: {', '.join(allowed)}")
    return tuple(m for m in allowed if m in names)


def faithfulness(model: Model, params: Any, images: jax.Array, maps: jax.Array, classes: "Sequence[int] | jax.Array",
                 metrics: "str | Sequence[str]" = "all", *, key: jax.Array | None = None,
                 regions: jax.Array | None = None, definitions: Definitions = Definitions()) -> dict[str, np.ndarray]:
    """Every asked map metric of every image in one jitted call.

    Args:
      images: N x H x W x C pixels 0..255 (before the model's preprocessing).
      maps: N x h x w relevance maps (resized to H x W as cv2 INTER_LINEAR; any non-negative scale).
      classes: N int, the class each map explains.
      metrics: ``"all"`` (every name of :data:`MAP_METRICS`) or names from it.
      key: ROAD's noise (default ``jax.random.key(0)``); image i's noise from ``fold_in(key, i)``.
      regions: N x H x W bool object masks for the pointing game (an image without one: all False, NaN score).
      definitions: the settings (:class:`Definitions`).

    Returns ``{metric: float32 N}`` plus ``deletion_curve`` / ``insertion_curve`` (N x S + 1) with those.
    """
    names = check_names(metrics, MAP_METRICS)
    check_definitions(definitions)
    x = jnp.asarray(images, jnp.float32)
    model.check_input(x.shape)
    if x.ndim != 4:
        raise JaxvizError(f"images must be N x H x W x C, got shape {x.shape}")
    m = jnp.asarray(maps, jnp.float32)
    if m.ndim != 3 or m.shape[0] != x.shape[0]:
        raise JaxvizError(f"maps must be N x h x w with N = {x.shape[0]} images, got shape {m.shape}")
    if not bool(jnp.all(jnp.isfinite(m))):
        raise JaxvizError("maps contain NaN or Inf")
    cls = jnp.asarray(np.broadcast_to(np.asarray(classes, np.int32), (x.shape[0],)))
    if regions is not None:
        regions = jnp.asarray(regions, bool)
        if regions.shape != x.shape[:3]:
            raise JaxvizError(f"regions must be N x H x W masks {x.shape[:3]}, got shape {regions.shape}")
    keys = image_keys(jax.random.key(0) if key is None else key, np.arange(x.shape[0]))
    run = _compile(model, names, definitions, regions is not None)
    dummy = regions if regions is not None else jnp.zeros((x.shape[0], 1, 1), bool)
    return {k: np.asarray(v) for k, v in run(params, x, m, cls, keys, dummy).items()}


def deletion(model, params, images, maps, classes, **kw) -> np.ndarray:
    """Deletion AUC per image (see the module's definitions)."""
    return faithfulness(model, params, images, maps, classes, ["deletion"], **kw)["deletion"]


def insertion(model, params, images, maps, classes, **kw) -> np.ndarray:
    """Insertion AUC per image (see the module's definitions)."""
    return faithfulness(model, params, images, maps, classes, ["insertion"], **kw)["insertion"]


def road(model, params, images, maps, classes, **kw) -> dict[str, np.ndarray]:
    """ROAD per image: ``road_morf``, ``road_lerf`` and ``road`` (see the module's definitions)."""
    return faithfulness(model, params, images, maps, classes, ["road_morf", "road_lerf", "road"], **kw)


def confidence(model, params, images, maps, classes, **kw) -> dict[str, np.ndarray]:
    """Average Drop, Increase in Confidence and Average Gain per image, in percent."""
    return faithfulness(model, params, images, maps, classes,
                        ["average_drop", "increase_in_confidence", "average_gain"], **kw)


def pointing_game(model, params, images, maps, classes, regions, **kw) -> np.ndarray:
    """1 (hit) / 0 (miss) / NaN (no region) per image (see the module's definitions)."""
    return faithfulness(model, params, images, maps, classes, ["pointing_game"], regions=regions,
                        **kw)["pointing_game"]


def boxes_to_masks(boxes: "np.ndarray | Sequence", shape: Sequence[int]) -> np.ndarray:
    """N boxes (top, left, bottom, right; bottom/right exclusive, input pixels; a row of -1 or NaN: no box)
    -> N x H x W bool masks."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = shape[:2]
    out = np.zeros((len(b), h, w), bool)
    for i, (t, l, bo, r) in enumerate(b):
        if np.all(np.isfinite([t, l, bo, r])) and min(t, l, bo, r) >= 0:
            out[i, int(max(t, 0)):int(min(bo, h)), int(max(l, 0)):int(min(r, w))] = True
    return out


def randomization(key: jax.Array, model: Model, params: Any, images: jax.Array, classes, *, method: str,
                  layer: str | None = None, settings: Any = None) -> np.ndarray:
    """The model-randomisation check (Adebayo et al. 2018) per image: Spearman correlation between the
    map of ``method`` and its map once the layers above ``layer`` are re-initialised
    (:func:`jaxviz.methods.attribution.randomization_check`; lower is better). ``images`` pixels 0..255."""
    from jaxviz.methods.attribution import randomization_check

    kw = {} if settings is None else {"settings": settings}
    x = preprocess(np.asarray(images, np.float32), model.preprocessing)
    cls = np.asarray(classes, np.int64).reshape(-1, 1)
    return randomization_check(key, model, params, x, cls, method=method, layer=layer, **kw)[:, 0]
