"""Concept attribution maps: where each concept is present in an image (its code map resized to the
input, bilinear as the other attribution maps: :func:`jaxviz.methods.metrics.resize_linear`), a
class's importance-weighted map, and each image's strongest concepts with their maps (the per-image
section of the ``jaxviz concepts`` page)."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from jaxviz.concepts.dictionary import encode
from jaxviz.errors import JaxvizError
from jaxviz.methods.metrics import resize_linear

Array = Any


def code_maps(d, acts: Array, size: Sequence[int]) -> Array:
    """Code maps (N x K x H x W) of a layer's activations ``acts`` (N x h x w x C), resized to ``size``
    (H, W)."""
    return _resized(encode(d, acts), size)


def _resized(z: Array, size: Sequence[int]) -> Array:
    """Codes N x h x w x K -> maps N x K x H x W."""
    return resize_linear(jnp.moveaxis(z, -1, 1), tuple(size))


def class_map(maps: Array, importance: Array) -> Array:
    """The importance-weighted map (N x H x W) of code maps (N x K x H x W) and importances (N x K or K)."""
    w = importance if importance.ndim == 2 else importance[None]
    return jnp.einsum("nkhw,nk->nhw", maps, jnp.broadcast_to(w, maps.shape[:2]))


def crop_code_maps(d, model, params, layer: str, x: Array, boxes) -> Array:
    """Code maps (N x K x s x s) of one square crop per image, for CRAFT dictionaries: each preprocessed
    image of ``x`` (N x H x W x C) cut at its box (``boxes``, N x 4 top, left, bottom, right, all of one
    size s), resized to the input as the crops' rows are (:func:`jaxviz.concepts.rows.crops`), the codes
    of every position of the layer, resized back to the crop (s x s): where in the crop the concept is."""
    import jax

    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    s = int(boxes[0, 2] - boxes[0, 0]) if len(boxes) else 0
    if len(boxes) != x.shape[0] or s < 1 or np.any(boxes[:, 2:] - boxes[:, :2] != s):
        raise JaxvizError(f"boxes must be one square box of one size per image ({x.shape[0]}), got {boxes.tolist()}")
    b = jnp.asarray(boxes, jnp.int32)
    cut = jax.vmap(lambda im, t: jax.lax.dynamic_slice(im, (t[0], t[1], 0), (s, s, im.shape[-1])))(x, b)
    full = jax.image.resize(cut, x.shape, "bilinear")  # to the input size, as rows.crops does
    acts = model.run(params, full, taps=[layer], output=False).taps[layer]
    return code_maps(d, acts, (s, s))


def concept_maps(model, params, layer: str, d, x: Array, importance: Array | None = None):
    """For preprocessed images ``x``: the code maps at the input size and, with ``importance``, the class
    map; ``(maps, class_map | None)``."""
    acts = model.run(params, x, taps=[layer], output=False).taps[layer]
    maps = code_maps(d, acts, x.shape[1:3])
    return maps, (class_map(maps, importance) if importance is not None else None)


class TopConcepts(NamedTuple):
    """What :func:`top_concept_maps` returns for N images and the T strongest concepts of each.

    Attributes:
      concepts: N x T int32 concept indices, the largest weight first (equal weights: the lower index).
      weights: N x T, their weights (the importance given, or without one the image's mean code).
      maps: N x T x H x W, their code maps at the input size.
      class_map: N x H x W, the importance-weighted map over every concept (:func:`class_map`); None
        without importance.
      logits: N x classes, the model's output for the images.
    """

    concepts: Array
    weights: Array
    maps: Array
    class_map: Array | None
    logits: Array


def top_concept_maps(model, params, layer: str, d, x: Array, importance: Array | None = None,
                     top: int = 3) -> TopConcepts:
    """Each image's ``top`` concepts and their maps, for preprocessed images ``x`` (N x H x W x C).

    With ``importance`` (N x K: each image's importance for the class it is explained as) the concepts
    are ranked by it and the class map is the importance-weighted sum of all K code maps; without, they
    are ranked by the image's mean code over the layer's positions (where the concept is most present)
    and there is no class map. One forward pass gives the codes and the logits."""
    out = model.run(params, x, taps=[layer])
    z = encode(d, out.taps[layer])  # N h w K
    maps = _resized(z, x.shape[1:3])
    w = jnp.mean(z, (1, 2)) if importance is None else jnp.asarray(importance, maps.dtype)
    order = jnp.argsort(-w, axis=-1, stable=True)[:, :min(int(top), w.shape[-1])]
    shown = jnp.take_along_axis(maps, order[:, :, None, None], 1)
    cmap = class_map(maps, w) if importance is not None else None
    return TopConcepts(order.astype(jnp.int32), jnp.take_along_axis(w, order, 1), shown, cmap, out.logits)
