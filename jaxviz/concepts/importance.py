"""Concept importance for a class: Sobol total indices (CRAFT), gradient x code, occlusion.

Every method scores a *concept head* ``g(U) -> (B,)``: the class probability of the model when the
layer's activations are replaced by the decoded codes ``decode(d, U)`` (CRAFT's perturbation: the
reconstruction, not the activations plus a residual). ``U`` are the codes of one image's positions
(B x h x w x K, holistic) or of pooled rows (B x K).

- :func:`sobol_total`: CRAFT's estimator exactly (xplique ``craft.py`` / ``sobol_estimators.py``):
  an unscrambled Halton design of 2r dimensions, ``nb_design`` (32) points; matrices A, B and the r
  replicated matrices C_i (A with column i from B), in that order; the masks multiply the codes,
  broadcast over the positions; Jansen's estimator ``sum_j (f(A_j) - f(C_ij))² / (2 N Var(f(A)))``
  with the sample variance (ddof=1, floored at 1e-12).
- :func:`gradient_importance`: ``sum over positions of U * dg/dU`` (holistic CRAFT, Fel et al. 2023).
- :func:`occlusion_importance`: ``g(U) - g(U with concept k zeroed)`` for each k.

Each is one jitted function over images x designs; the designs run in chunks under ``lax.map`` so
memory does not grow with the number of designs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError

EPS = 1e-12
NB_DESIGN = 32

Array = Any


def halton_design(dim: int, nb_design: int = NB_DESIGN) -> np.ndarray:
    """The replicated design of CRAFT (xplique's ``HaltonSequenceRS``): ``nb_design * (dim + 2)`` x
    ``dim`` float32 masks in [0, 1): A, B, then C_1 .. C_dim."""
    from scipy.stats import qmc

    ab = qmc.Halton(2 * dim, scramble=False).random(nb_design).astype(np.float32)
    a, b = ab[:, :dim], ab[:, dim:]
    c = np.repeat(a[None], dim, 0)
    i = np.arange(dim)
    c[i, :, i] = b.T
    return np.concatenate([a, b, c.reshape(dim * nb_design, dim)], 0)


def jansen_total(outputs: Array, nb_design: int, dim: int) -> Array:
    """Jansen's total indices (..., dim) from outputs (..., nb_design * (dim + 2)) in design order."""
    a = outputs[..., :nb_design]
    c = outputs[..., 2 * nb_design:].reshape(outputs.shape[:-1] + (dim, nb_design))
    var = jnp.maximum(jnp.var(a, axis=-1, ddof=1), EPS)
    return jnp.sum((a[..., None, :] - c) ** 2, -1) / (2.0 * nb_design * var[..., None])


def _mask_codes(codes: Array, masks: Array) -> Array:
    """codes (B, ..., K) x masks (M, K) -> (B, M, ..., K), the masks broadcast over positions."""
    m = masks.reshape((1, masks.shape[0]) + (1,) * (codes.ndim - 2) + (masks.shape[1],))
    return codes[:, None] * m


def design_scores(head: Callable[[Array], Array], codes: Array, masks: Array, chunk: int = 64) -> Array:
    """``head`` (codes (n, ..., K) -> (n,)) on every image's codes under every mask: (B, M), the masks
    run ``chunk`` at a time (``lax.map``): memory is one chunk's images, whatever M is."""
    B, M = codes.shape[0], masks.shape[0]
    chunk = max(1, min(int(chunk), M))
    calls = -(-M // chunk)
    pad = jnp.concatenate([masks, jnp.ones((calls * chunk - M, masks.shape[1]), masks.dtype)])

    def one(ms):
        u = _mask_codes(codes, ms)  # B chunk ... K
        return head(u.reshape((B * chunk,) + codes.shape[1:])).reshape(B, chunk)

    out = jax.lax.map(one, pad.reshape(calls, chunk, -1))  # calls B chunk
    return jnp.moveaxis(out, 0, 1).reshape(B, -1)[:, :M]


def sobol_total(head: Callable[[Array], Array], codes: Array, nb_design: int = NB_DESIGN,
                chunk: int = 64) -> Array:
    """Sobol total indices (B x K) of each concept for each image's codes (B, ..., K) (CRAFT)."""
    K = codes.shape[-1]
    masks = jnp.asarray(halton_design(K, nb_design), codes.dtype)
    return jansen_total(design_scores(head, codes, masks, chunk), nb_design, K)


def gradient_importance(head: Callable[[Array], Array], codes: Array) -> Array:
    """Gradient x code summed over positions (B x K)."""
    g = jax.grad(lambda u: jnp.sum(head(u)))(codes)
    return jnp.sum((g * codes).reshape(codes.shape[0], -1, codes.shape[-1]), 1)


def occlusion_importance(head: Callable[[Array], Array], codes: Array, chunk: int = 64) -> Array:
    """Score drop when each concept is zeroed (B x K): ``g(U) - g(U, concept k = 0)``."""
    K = codes.shape[-1]
    masks = jnp.concatenate([jnp.ones((1, K), codes.dtype), 1 - jnp.eye(K, dtype=codes.dtype)])
    s = design_scores(head, codes, masks, chunk)
    return s[:, :1] - s[:, 1:]


IMPORTANCE = {"sobol": sobol_total, "gradient": gradient_importance, "occlusion": occlusion_importance}


def _tail(model, layer: str):
    """``model`` after ``layer`` through the model's own ``split(layer)`` (a graph of layers has one), or
    None for a model without it (adapted modules, wrappers) or that refuses to cut at ``layer`` (a
    :class:`~jaxviz.errors.JaxvizError`, as :meth:`~jaxviz.nn.graph.Sequential.split` raises for a name it
    does not know): then the head runs the whole network with the layer perturbed, the same function at
    several times the cost. Any other error from ``split`` is a bug and propagates."""
    split = getattr(model, "split", None)
    if split is None:
        return None
    try:
        return split(layer)[1]
    except JaxvizError:
        return None


def concept_head(model, params, layer: str, d, x: Array, cls: Array) -> Callable[[Array], Array]:
    """The concept head of images ``x`` (B x H x W x C, preprocessed) for classes ``cls`` (B): codes
    (B*m, ..., K) -> class probability with ``layer`` replaced by ``decode(d, codes)`` (m copies of each
    image, image-major). The forward to the layer is run once; per copy only the network after the layer
    runs (a graph split at ``layer``, fed the residual branches it reads), or, for a model that cannot be
    split, the whole network with the layer's output perturbed to ``decode(d, codes)``."""
    from jaxviz.concepts.dictionary import decode

    tail = _tail(model, layer)
    reads = tuple(tail.context_names) if tail is not None else ()
    fwd = model.run(params, x, taps=[layer, *reads], output=False).taps
    acts = jax.lax.stop_gradient(fwd[layer])
    ctx = {n: jax.lax.stop_gradient(fwd[n]) for n in reads}
    B = x.shape[0]

    def probability(logits, m):
        p = jax.nn.softmax(logits.astype(jnp.float32), -1)
        return jnp.take_along_axis(p, jnp.repeat(cls, m)[:, None], -1)[:, 0]

    def head(u):
        m = u.shape[0] // B
        a = decode(d, u).astype(acts.dtype)
        if tail is not None:
            out = tail.run(params, a, context={n: jnp.repeat(v, m, 0) for n, v in ctx.items()})
        else:
            out = model.run(params, jnp.repeat(x, m, 0), perturb={layer: a - jnp.repeat(acts, m, 0)})
        return probability(out.logits, m)

    return head


def importance(model, params, layer: str, d, x: Array, cls: Array, method: str = "sobol", *,
               codes: Array | None = None, nb_design: int = NB_DESIGN, chunk: int = 64) -> Array:
    """Per-image importance (B x K) of the concepts of ``d`` for classes ``cls`` (B) on preprocessed
    images ``x``, by ``method`` (``sobol`` | ``gradient`` | ``occlusion``). Jit it whole."""
    from jaxviz.concepts.dictionary import encode
    from jaxviz.errors import unknown

    if method not in IMPORTANCE:
        raise unknown("method", method, tuple(IMPORTANCE))
    if codes is None:
        acts = model.run(params, x, taps=[layer], output=False).taps[layer]
        codes = jax.lax.stop_gradient(encode(d, acts))
    head = concept_head(model, params, layer, d, x, cls)
    if method == "sobol":
        return sobol_total(head, codes, nb_design, chunk)
    if method == "gradient":
        return gradient_importance(head, codes)
    return occlusion_importance(head, codes, chunk)


def summarise(per_image: np.ndarray) -> dict:
    """Over the images (N x K): ``mean``, ``prevalence`` (share of images where each concept is the
    most important) and ``reliability`` (mean / standard deviation over the images)."""
    per_image = np.asarray(per_image, np.float64)
    n, K = per_image.shape
    if n == 0:
        z = np.zeros(K)
        return {"mean": z, "prevalence": z, "reliability": z}
    mean = per_image.mean(0)
    prev = np.bincount(per_image.argmax(1), minlength=K) / n
    sd = per_image.std(0)
    return {"mean": mean, "prevalence": prev, "reliability": np.where(sd > 0, mean / np.where(sd > 0, sd, 1), 0.0)}
