"""Class activation heatmaps: Grad-CAM on any conv layer, N images x K classes in one jitted call.

The model is split at the layer (never hooked or rebuilt): ``head`` gives the feature map, ``tail``
the class score, and ``jax.grad`` of the score with respect to the feature map gives the channel
weights. Only the ``dlwp``/paper Grad-CAM is here so far (see the issue tracker for the rest).
"""

from __future__ import annotations

import functools
import warnings
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.models import Sequential


class Cams(NamedTuple):
    heatmaps: np.ndarray  # N x K x h x w float32 in [0, 1], at the layer's resolution
    classes: np.ndarray  # N x K int
    probs: np.ndarray  # N x classes (the model's output)


@functools.lru_cache(maxsize=16)
def _compiled(model: Sequential, layer: str, score: str):
    head, tail = model.split(layer)
    logits = score == "logit"

    def one(params, feat, c):  # feat: h x w x C for one image
        g = jax.grad(lambda f: tail(params, f[None], logits=logits)[0, c])(feat)
        weights = g.mean(axis=(0, 1))  # Listing 5.42: pooled gradients per channel
        cam = jax.nn.relu((feat * weights).mean(axis=-1))
        peak = cam.max()
        return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)

    def run(params, x, classes):
        feats = head(params, x)
        probs = tail(params, feats)
        per_image = jax.vmap(one, in_axes=(None, None, 0))  # K classes of one image
        return jax.vmap(per_image, in_axes=(None, 0, 0))(params, feats, classes), probs

    return jax.jit(run)


def gradcam(
    model: Sequential,
    params: Mapping,
    x: jax.Array,
    classes: Sequence[Sequence[int]] | Sequence[int] | None = None,
    layer: str | None = None,
    score: str = "logit",
) -> Cams:
    """Grad-CAM heatmaps for a batch ``x`` (N, H, W, C, preprocessed).

    ``classes``: per image a list of K class indices, one list for all images, or None for each
    image's top-1. ``layer``: default the last conv layer. ``score``: ``logit`` (pre-softmax, as in the
    Grad-CAM paper) or ``probability`` (the post-softmax output, as the seeds' Listing 5.42).
    An all-zero map (every weighted channel negative) is returned as zeros with a warning.
    """
    if score not in ("logit", "probability"):
        raise JaxvizError(f"score must be 'logit' or 'probability', got {score!r}")
    layer = layer or model.last_conv
    model.index(layer)
    x = jnp.asarray(x)
    model.check_input(x.shape)
    n_classes = model.shapes(x.shape[1:])[-1][1][-1]
    fn = _compiled(model, layer, score)
    if classes is None:
        probs = np.asarray(model.jit_call(params, x))
        cls = probs.argmax(axis=-1)[:, None]
    else:
        cls = np.asarray(classes, np.int64)
        cls = np.broadcast_to(cls if cls.ndim == 2 else cls[None, :], (x.shape[0], cls.shape[-1]))
    bad = cls[(cls < 0) | (cls >= n_classes)]
    if bad.size:
        raise JaxvizError(f"class index {int(bad[0])} out of range for {model.name}: valid 0..{n_classes - 1}")
    heat, probs = fn(params, x, jnp.asarray(cls, jnp.int32))
    heat = np.asarray(heat, np.float32)
    if np.any(heat.reshape(heat.shape[0] * heat.shape[1], -1).max(axis=1) == 0):
        warnings.warn("some Grad-CAM maps are all zero (every weighted channel is negative); returned as zeros")
    return Cams(heat, np.asarray(cls), np.asarray(probs, np.float32))


def superimpose(photo: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Listing 5.44 done right: heatmap resized to the photo with OpenCV, JET colours, ``alpha`` x heatmap
    + photo, clipped to uint8, RGB in and RGB out (the seed wrote an unclipped BGR float)."""
    import cv2

    photo = np.asarray(photo)
    if photo.ndim == 3 and photo.shape[-1] == 1:
        photo = np.repeat(photo, 3, axis=-1)
    h, w = photo.shape[:2]
    heat = cv2.resize(np.asarray(heatmap, np.float32), (w, h))
    heat = np.uint8(255 * np.clip(heat, 0, 1))
    jet = cv2.applyColorMap(heat, cv2.COLORMAP_JET)[..., ::-1]  # OpenCV gives BGR
    return np.clip(jet.astype(np.float32) * alpha + photo.astype(np.float32), 0, 255).astype(np.uint8)
