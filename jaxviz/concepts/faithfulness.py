"""Concept faithfulness (Fel et al. 2023): C-Deletion, C-Insertion and C-μFidelity, each beside a
random-order baseline, on a concept head ``g(U)`` (see :mod:`jaxviz.concepts.importance`).

- C-Deletion: concepts removed (codes zeroed) in decreasing importance, the class probability after
  0 .. K removals; the area under that curve (:func:`jaxviz.methods.metrics.auc`, the trapezoid over
  i / K, as pixel deletion). Lower is more faithful.
- C-Insertion: from all codes zero, concepts added in decreasing importance; higher is more faithful.
- C-μFidelity: for ``subsets`` random subsets of the concepts (each kept with probability 1/2), the
  Pearson correlation over the subsets between the summed importance of the removed concepts and the
  score drop ``g(U) - g(U without them)``; per image.

Random baselines: the same with a random order (deletion/insertion) or random importances (μFidelity).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxviz.methods.metrics import auc

Array = Any


def _step_masks(order: Array, insert: bool) -> Array:
    """Per image (B x K order) the K+1 masks (B, K+1, K): step i keeps (deletion) the concepts not among
    the first i of the order; insertion keeps exactly the first i."""
    K = order.shape[-1]
    rank = jnp.argsort(order, -1)  # rank[b, k]: position of concept k in the order
    steps = jnp.arange(K + 1)
    first = rank[:, None, :] < steps[None, :, None]
    return (first if insert else ~first).astype(jnp.float32)


def _per_image_scores(head: Callable[[Array], Array], codes: Array, masks: Array, chunk: int) -> Array:
    """head on each image's codes under its own masks (B, M, K) -> (B, M)."""
    B, M, K = masks.shape
    chunk = max(1, min(int(chunk), M))
    calls = -(-M // chunk)
    pad = jnp.concatenate([masks, jnp.ones((B, calls * chunk - M, K), masks.dtype)], 1)

    def one(ms):  # B chunk K
        shape = (B, chunk) + (1,) * (codes.ndim - 2) + (K,)
        u = codes[:, None] * ms.reshape(shape)
        return head(u.reshape((B * chunk,) + codes.shape[1:])).reshape(B, chunk)

    out = jax.lax.map(one, jnp.moveaxis(pad.reshape(B, calls, chunk, K), 1, 0))
    return jnp.moveaxis(out, 0, 1).reshape(B, -1)[:, :M]


def c_curve(head, codes: Array, importance: Array, insert: bool = False, chunk: int = 64) -> Array:
    """Class probability (B x K+1) as concepts are removed (or inserted) in decreasing importance."""
    order = jnp.argsort(-importance, -1)
    return _per_image_scores(head, codes, _step_masks(order, insert), chunk)


def c_deletion(head, codes, importance, chunk: int = 64) -> Array:
    """Area under the C-Deletion curve per image (B)."""
    return auc(c_curve(head, codes, importance, False, chunk))


def c_insertion(head, codes, importance, chunk: int = 64) -> Array:
    """Area under the C-Insertion curve per image (B)."""
    return auc(c_curve(head, codes, importance, True, chunk))


def c_mufidelity(head, codes, importance, key: Array, subsets: int = 32, chunk: int = 64) -> Array:
    """C-μFidelity per image (B): correlation of summed removed importance with the score drop."""
    B, K = importance.shape
    keep = jax.random.bernoulli(key, 0.5, (B, subsets, K)).astype(jnp.float32)
    masks = jnp.concatenate([jnp.ones((B, 1, K)), keep], 1)
    s = _per_image_scores(head, codes, masks, chunk)
    drop = s[:, :1] - s[:, 1:]
    attr = jnp.einsum("bsk,bk->bs", 1 - keep, importance)
    da, dd = attr - attr.mean(1, keepdims=True), drop - drop.mean(1, keepdims=True)
    den = jnp.sqrt(jnp.sum(da * da, 1) * jnp.sum(dd * dd, 1))
    return jnp.where(den > 0, jnp.sum(da * dd, 1) / jnp.where(den > 0, den, 1.0), 0.0)


def faithfulness(head, codes: Array, importance: Array, key: Array, chunk: int = 64) -> dict:
    """``{c-deletion, c-insertion, c-mufidelity}`` and ``.../random`` per image (B each)."""
    k1, k2, k3 = jax.random.split(key, 3)
    B, K = importance.shape
    rnd = jax.random.uniform(k1, (B, K))
    return {"c-deletion": c_deletion(head, codes, importance, chunk),
            "c-deletion/random": c_deletion(head, codes, rnd, chunk),
            "c-insertion": c_insertion(head, codes, importance, chunk),
            "c-insertion/random": c_insertion(head, codes, rnd, chunk),
            "c-mufidelity": c_mufidelity(head, codes, importance, k2, chunk=chunk),
            "c-mufidelity/random": c_mufidelity(head, codes, jax.random.uniform(k3, (B, K)), k2, chunk=chunk)}
