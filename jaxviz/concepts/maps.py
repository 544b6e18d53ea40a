"""Concept attribution maps: where each concept is present in an image (its code map resized to the
input, bilinear as the other attribution maps: :func:`jaxviz.methods.metrics.resize_linear`), and a
class's importance-weighted map."""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

from jaxviz.concepts.dictionary import encode
from jaxviz.methods.metrics import resize_linear

Array = Any


def code_maps(d, acts: Array, size: Sequence[int]) -> Array:
    """Code maps (N x K x H x W) of a layer's activations ``acts`` (N x h x w x C), resized to ``size``
    (H, W)."""
    z = encode(d, acts)  # N h w K
    return resize_linear(jnp.moveaxis(z, -1, 1), tuple(size))


def class_map(maps: Array, importance: Array) -> Array:
    """The importance-weighted map (N x H x W) of code maps (N x K x H x W) and importances (N x K or K)."""
    w = importance if importance.ndim == 2 else importance[None]
    return jnp.einsum("nkhw,nk->nhw", maps, jnp.broadcast_to(w, maps.shape[:2]))


def concept_maps(model, params, layer: str, d, x: Array, importance: Array | None = None):
    """For preprocessed images ``x``: the code maps at the input size and, with ``importance``, the class
    map; ``(maps, class_map | None)``."""
    acts = model.run(params, x, taps=[layer], output=False).taps[layer]
    maps = code_maps(d, acts, x.shape[1:3])
    return maps, (class_map(maps, importance) if importance is not None else None)
