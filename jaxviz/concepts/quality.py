"""Dictionary quality: reconstruction, sparsity, dead concepts, stability and collinearity.

Streamable figures come from :class:`QualityStats`, summed over batches (``quality_stats`` per batch,
add them with ``jax.tree.map(jnp.add, ...)`` or ``psum``), so a whole collection never sits in memory.

Definitions (A rows x C, Z codes rows x K, D dictionary K x C, Â = Z D (+ pre-bias)):
  relative_error  ||A - Â||_F / ||A||_F
  r2_global       1 - ||A - Â||²_F / ||A - mean(A)||²_F with ONE scalar mean over every entry
                  (overcomplete's ``r2_score``); ``quality/r2`` in ``concepts.npz`` is this one.
  r2_per_feature  scikit-learn's ``r2_score(A, Â)`` (uniform average of the per-channel R², each with
                  its own channel mean; channels of zero variance count as 1 if reconstructed exactly,
                  else 0, as scikit-learn's ``force_finite``).
  l0              mean number of non-zero codes per row.
  hoyer           mean over rows of (sqrt(K) - |z|₁/|z|₂) / (sqrt(K) - 1) (1: one-hot, 0: flat; rows of
                  zeros count 1).
  dead            concepts never active (code > 0) on any row.
  collinearity    mean absolute cosine between distinct concepts (rows of D).
  stability       fit on two halves of the rows, match concepts by cosine with the Hungarian algorithm
                  (``scipy.optimize.linear_sum_assignment``), mean matched cosine (:func:`stability`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.concepts.dictionary import Dictionary, decode

Array = Any


class QualityStats(NamedTuple):
    """Summable sums over rows: ``n``, ``sum_a`` (C), ``sum_a2`` (C), ``sum_err2`` (C) the squared
    residual per channel, ``l0`` (sum of non-zero counts), ``hoyer`` (sum of per-row Hoyer), ``active``
    (K: rows where each concept is active)."""

    n: Array
    sum_a: Array
    sum_a2: Array
    sum_err2: Array
    l0: Array
    hoyer: Array
    active: Array


def _hoyer(z):
    K = z.shape[-1]
    l1, l2 = jnp.sum(jnp.abs(z), -1), jnp.linalg.norm(z, axis=-1)
    r = jnp.where(l2 > 0, l1 / jnp.where(l2 > 0, l2, 1.0), 1.0)
    return (jnp.sqrt(K) - r) / max(np.sqrt(K) - 1, 1e-12)


def quality_stats(d: Dictionary, a_b: Array, codes_b: Array, mask: Array | None = None) -> QualityStats:
    """The batch's :class:`QualityStats` (``mask``: False on padding rows)."""
    a_b = jnp.asarray(a_b)
    m = jnp.ones(a_b.shape[:1], bool) if mask is None else mask
    mf = m.astype(a_b.dtype)
    err = (a_b - decode(d, codes_b)) * mf[:, None]
    a0 = a_b * mf[:, None]
    on = (codes_b > 0) & m[:, None]
    return QualityStats(jnp.sum(mf), jnp.sum(a0, 0), jnp.sum(a0 * a0, 0), jnp.sum(err * err, 0),
                        jnp.sum(on).astype(a_b.dtype), jnp.sum(_hoyer(codes_b) * mf),
                        jnp.sum(on, 0).astype(a_b.dtype))


def quality_from_stats(s: QualityStats, d: Dictionary | None = None) -> dict:
    """The streamable figures from summed :class:`QualityStats` (``collinearity`` when ``d`` is given)."""
    n = s.n
    tot = jnp.sum(s.sum_a2)
    err = jnp.sum(s.sum_err2)
    var_c = s.sum_a2 - s.sum_a ** 2 / n
    mean_all = jnp.sum(s.sum_a) / (n * s.sum_a.shape[0])
    var_all = tot - n * s.sum_a.shape[0] * mean_all ** 2
    r2_c = jnp.where(var_c > 0, 1 - s.sum_err2 / jnp.where(var_c > 0, var_c, 1.0),
                     jnp.where(s.sum_err2 == 0, 1.0, 0.0))
    out = {"relative_error": jnp.sqrt(err / tot), "r2_global": 1 - err / var_all,
           "r2_per_feature": jnp.mean(r2_c), "l0": s.l0 / n, "hoyer": s.hoyer / n,
           "dead": jnp.sum(s.active == 0)}
    if d is not None:
        out["collinearity"] = collinearity(d.components)
    return out


def collinearity(components: Array) -> Array:
    """Mean absolute cosine between distinct rows of ``components`` (K x C)."""
    D = components / jnp.maximum(jnp.linalg.norm(components, axis=1, keepdims=True), 1e-12)
    G = jnp.abs(D @ D.T)
    K = G.shape[0]
    return (jnp.sum(G) - jnp.trace(G)) / max(K * (K - 1), 1)


def match_cosine(d1: Array, d2: Array) -> tuple[float, np.ndarray]:
    """Mean cosine of the Hungarian matching of the rows of ``d1`` and ``d2`` (K x C each) and the matched
    index of ``d2`` for each row of ``d1``."""
    from scipy.optimize import linear_sum_assignment

    n = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    cos = n(np.asarray(d1, np.float64)) @ n(np.asarray(d2, np.float64)).T
    r, c = linear_sum_assignment(-cos)
    order = np.empty(len(r), int)
    order[r] = c
    return float(cos[r, c].mean()), order


def stability(fit: Callable[[Array], Dictionary], a: Array, key: Array) -> float:
    """Fit on two random halves of the rows of ``a`` (``fit(rows) -> Dictionary``) and return the mean
    matched cosine of their concepts (:func:`match_cosine`; 1 = the same concepts)."""
    a = jnp.asarray(a)
    perm = jax.random.permutation(key, a.shape[0])
    h = a.shape[0] // 2
    return match_cosine(fit(a[perm[:h]]).components, fit(a[perm[h:2 * h]]).components)[0]


def quality(d: Dictionary, a_rows_or_stats: Array | QualityStats, codes: Array | None = None) -> dict:
    """Quality figures of ``d`` (module docstring): from activations ``a`` (rows x C) and their ``codes``
    (rows x K; default ``encode(d, a)``), or from summed :class:`QualityStats`. ``stability`` needs
    refits: see :func:`stability`. Values are Python floats / ints."""
    if isinstance(a_rows_or_stats, QualityStats):
        s = a_rows_or_stats
    else:
        if codes is None:
            from jaxviz.concepts.dictionary import encode

            codes = encode(d, a_rows_or_stats)
        s = quality_stats(d, a_rows_or_stats, codes)
    out = quality_from_stats(s, d)
    return {k: (int(v) if k == "dead" else float(v)) for k, v in out.items()}
