"""A layer's activations as rows of a matrix, streamed through the model.

- holistic: every spatial position of the layer's map is a row (N x h x w x C -> N*h*w x C);
- crops (CRAFT): square crops of ``size`` at a stride of ``0.8 * size`` (:func:`crop_boxes`), each
  resized to the input size, its activations spatially averaged: one row per crop;
- pooled: one row per image, the spatial mean.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError

Array = Any


def crop_boxes(height: int, width: int, size: int) -> np.ndarray:
    """(n, 4) ``top, left, bottom, right`` of the square crops of ``size`` at a stride of 0.8 x size
    truncated to an integer as CRAFT's ``int(patch_size * 0.80)`` (and, beyond CRAFT, a last row and
    column clamped to the border, so the crops cover the whole input)."""
    if not 1 <= size <= min(height, width):
        raise JaxvizError(f"crops={size} must be between 1 and the input's smaller side {min(height, width)}")
    stride = max(1, int(size * 0.80))

    def starts(n):
        s = list(range(0, n - size + 1, stride))
        if s[-1] != n - size:
            s.append(n - size)
        return s

    return np.array([(t, l, t + size, l + size) for t in starts(height) for l in starts(width)], np.int32)


def crops(x: Array, boxes: np.ndarray) -> Array:
    """The crops (N * n x H x W x C) of images ``x`` at static ``boxes``, resized to the input size
    (bilinear), image-major."""
    N, H, W, C = x.shape
    out = [jax.image.resize(x[:, t:b, l:r], (N, H, W, C), "bilinear") for t, l, b, r in boxes]
    return jnp.stack(out, 1).reshape(N * len(boxes), H, W, C)


def layer_rows(model, params, layer: str, x: Array, mode: str = "holistic", boxes: np.ndarray | None = None):
    """Rows of preprocessed images ``x`` (N): ``holistic`` (N x h x w x C, every position),
    ``crops`` (N x n x C) or ``pooled`` (N x C)."""
    if mode == "crops":
        x = crops(x, boxes)
    a = model.run(params, x, taps=[layer], output=False).taps[layer]
    if mode == "holistic":
        return a
    a = a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)
    return a.reshape(-1, len(boxes), a.shape[-1]) if mode == "crops" else a


def check_positive(minimum: float, method: str, layer: str) -> None:
    """NMF needs non-negative activations: one line pointing to semi-NMF or a post-ReLU layer."""
    if method == "nmf" and minimum < 0:
        raise JaxvizError(f"method='nmf' needs non-negative activations but layer {layer!r} has values down to "
                          f"{minimum:.3g}; use method='seminmf' or a layer after a ReLU")
