"""Transforms ``(key, image) -> image`` applied to the image before each ascent step (robustness),
as optax's transforms: small pure factories, composed left to right with :func:`compose`.

:func:`pad`, :func:`jitter`, :func:`random_crop`, :func:`random_scale`, :func:`random_rotate`, lucid's
standard set :func:`lucid_transforms`, and :func:`jitter_scale`, the perturbation the robustness
measure (:mod:`.quality`) applies to a finished pattern.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Transform = Callable[[jax.Array, jax.Array], jax.Array]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels of ``value`` (lucid pads 12 of grey: the pattern must work
    beside a plain border too)."""

    def apply(key, img):
        return jnp.pad(img, ((width, width), (width, width), (0, 0)), constant_values=value)

    return apply


def compose(*transforms: Transform) -> Transform:
    """Apply transforms left to right, each with its own key."""

    def apply(key, img):
        for i, t in enumerate(transforms):
            img = t(jax.random.fold_in(key, i), img)
        return img

    return apply


def jitter(d: int) -> Transform:
    """Shift by up to ``d`` pixels in each direction (wrapping)."""

    def apply(key, img):
        dy, dx = jax.random.randint(key, (2,), -d, d + 1)
        return jnp.roll(img, (dy, dx), axis=(0, 1))

    return apply


def random_crop(d: int) -> Transform:
    """lucid's jitter: a window ``d`` pixels smaller than the image, at a random offset (0..d each way)."""

    def apply(key, img):
        h, w, c = img.shape
        dy, dx = jax.random.randint(key, (2,), 0, d + 1)
        return jax.lax.dynamic_slice(img, (dy, dx, 0), (h - d, w - d, c))

    return apply


def random_scale(scales: Sequence[float]) -> Transform:
    """Zoom about the centre by a factor drawn from ``scales`` (same output size)."""
    scales_arr = np.asarray(scales, np.float32)  # numpy: building a recipe must not start a JAX backend

    def apply(key, img):
        s = jax.random.choice(key, jnp.asarray(scales_arr))
        h, w = img.shape[:2]
        t = jnp.array([(1 - s) * h / 2, (1 - s) * w / 2])
        return jax.image.scale_and_translate(img, img.shape, (0, 1), jnp.array([s, s]), t, "linear")

    return apply


def random_rotate(degrees: float) -> Transform:
    """Rotate about the centre by an angle in [-degrees, degrees] (bilinear, edges extended)."""

    def apply(key, img):
        a = jnp.deg2rad(jax.random.uniform(key, (), minval=-degrees, maxval=degrees))
        h, w = img.shape[:2]
        yy, xx = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")
        ys = jnp.cos(a) * yy - jnp.sin(a) * xx + (h - 1) / 2
        xs = jnp.sin(a) * yy + jnp.cos(a) * xx + (w - 1) / 2
        rot = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [ys, xs], order=1, mode="nearest")
        return jnp.stack([rot(img[..., c]) for c in range(img.shape[-1])], axis=-1)

    return apply


LUCID_ZOOM = tuple(1 + (i - 5) / 50 for i in range(11))  # lucid's random_scale: 0.9, 0.92, ..., 1.1


@functools.lru_cache(maxsize=64)  # one function per (size, zoom): equal recipes share their compiled ascent
def lucid_transforms(size: int = 128, zoom: tuple[float, ...] = LUCID_ZOOM) -> Transform:
    """lucid's ``standard_transforms`` scaled to the image side (these are its values at 128): pad 12 of
    grey, jitter 8 (a random crop, as lucid's), zoom by one of ``zoom`` (lucid: 0.9..1.1), rotate
    -10..10 degrees, jitter 4."""
    k = max(size / 128, 1 / 16)
    return compose(pad(round(12 * k)), random_crop(round(8 * k)), random_scale(tuple(zoom)), random_rotate(10.0),
                   random_crop(max(1, round(4 * k))))


# Class visualisations zoom in up to 1.75x (224/128) while they form, so the picture still reads as its
# class when shown larger: without it, 128-pixel pictures resized to 224 fell to p = 0.56..0.9.
CLASS_ZOOM = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.75)


def jitter_scale(key: jax.Array, img: jax.Array, shift: int, zoom: tuple[float, float] = (0.9, 1.1)) -> jax.Array:
    """``img`` (H x W x C) shifted by up to ``shift`` pixels each way and zoomed about its centre by a
    factor in ``zoom``, edges reflected: the robustness measure's perturbation."""
    h, w, _ = img.shape
    margin = shift + int(math.ceil(max(h, w) * (1 / zoom[0] - 1) / 2)) + 2
    padded = jnp.pad(img, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    k1, k2 = jax.random.split(key)
    s = jax.random.uniform(k1, (), minval=zoom[0], maxval=zoom[1])
    d = jax.random.randint(k2, (2,), -shift, shift + 1)
    # output pixel o samples padded coordinate (o - c) / s + c + margin + d
    centre = jnp.array([h / 2, w / 2])
    t = centre - s * (centre + margin + d)
    return jax.image.scale_and_translate(padded, img.shape, (0, 1), jnp.array([s, s]), t, "linear", antialias=False)
