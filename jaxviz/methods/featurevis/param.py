"""Image parameterisations: :class:`Param` ``(init(key, shape), to_image(p), resize(p, shape))``.

:func:`pixels` (the image itself is the parameter, as the seeds) and :func:`fft_decorrelated`
(lucid's unitary, 1/f-scaled Fourier spectrum with decorrelated colours, through a sigmoid).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError


class Param(NamedTuple):
    """An image parameterisation: ``init(key, (H, W, C)) -> p``, ``to_image(p) -> (H, W, C)`` pixels and
    ``resize(p, (H, W, C)) -> p`` (the same picture at another size: octaves). ``p`` is any pytree."""

    init: Callable
    to_image: Callable
    resize: Callable


def pixels(init: Callable[[jax.Array, tuple], jax.Array]) -> Param:
    """The image itself is the parameter (the seeds)."""
    return Param(init, lambda p: p, lambda p, shape: jax.image.resize(p, shape, "bilinear"))


def uniform_start(low: float, high: float) -> Callable:
    return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, low, high)


# lucid's colour correlation of ImageNet (square root of the covariance, from its SVD)
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR_SQRT /= np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["coeffs"], meta_fields=["width"])
@dataclasses.dataclass
class Spectrum:
    """The FFT parameters of one image: ``coeffs`` 2 (real, imaginary) x C x H x (W // 2 + 1 + W % 2),
    and the image's width (static: an odd width keeps one column more, as lucid does, and is cropped)."""

    coeffs: jax.Array
    width: int


def _columns(w: int) -> int:
    return w // 2 + 1 + w % 2


def _freq_scale(h: int, w: int, decay: float = 1.0) -> jax.Array:
    """lucid's spectrum weights: 1/|f|^decay (|f| floored at one cycle per image) times sqrt(h*w), which
    makes the inverse transform unitary, so an optimiser's step is a step of that size in pixel space
    whatever the image size (without it, Adam at 0.05 barely moves a 128x128 picture)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, : _columns(w)]  # odd w: the extra column is -(w // 2) / w, as lucid's
    freq = np.sqrt(fx * fx + fy * fy)
    return jnp.asarray(np.sqrt(h * w) / np.maximum(freq, 1.0 / max(h, w)) ** decay, jnp.float32)


def fft_decorrelated(sd: float = 0.01, decay: float = 1.0) -> Param:
    """lucid's parameterisation: a 1/f-scaled, unitary Fourier spectrum, decorrelated colours, then a
    sigmoid. Output pixels are in [0, 1]. Single-channel images skip the colour step.

    The spectrum has the columns of an even width ``we`` (``w``, or ``w + 1`` for odd ``w``); the inverse
    transform gives ``h x we`` pixels, cropped to ``h x w``.
    """

    def init(key, shape):
        h, w, c = shape
        return Spectrum(sd * jax.random.normal(key, (2, c, h, _columns(w)), jnp.float32), int(w))

    def to_image(p: Spectrum):
        _, c, h, wf = p.coeffs.shape
        spec = (p.coeffs[0] + 1j * p.coeffs[1]) * _freq_scale(h, p.width, decay)
        img = jnp.fft.irfft2(spec, s=(h, 2 * (wf - 1)))[:, :, : p.width].transpose(1, 2, 0) / 4.0
        if c == 3:
            img = img @ jnp.asarray(_COLOR_SQRT).T
        return jax.nn.sigmoid(img)

    def resize(p: Spectrum, shape):
        # Band-limited upsampling: the spectrum zero-padded to the new size, rescaled for the DFT length
        # and the new weights, so the new (uncropped) image is the old one interpolated.
        big_h, big_w, _ = shape
        _, c, h, wf = p.coeffs.shape
        big_wf = _columns(big_w)
        if (big_h, big_w) == (h, p.width):
            return p
        if big_h < h or big_wf < wf:
            raise JaxvizError(f"an FFT image grows between octaves; cannot go from {h}x{p.width} to {big_h}x{big_w}")
        spec = (p.coeffs[0] + 1j * p.coeffs[1]) * _freq_scale(h, p.width, decay)
        if big_wf > wf:  # the old Nyquist column becomes an ordinary one, which irfft2 counts twice
            spec = spec.at[..., -1].multiply(0.5)
        pos = (h + 1) // 2  # rows of non-negative vertical frequency; the rest are negative
        out = jnp.zeros((c, big_h, big_wf), spec.dtype)
        out = out.at[:, :pos, :wf].set(spec[:, :pos]).at[:, big_h - (h - pos):, :wf].set(spec[:, pos:])
        if h % 2 == 0 and big_h > h:  # the old Nyquist row (at -1/2) is split between +1/2 and -1/2
            out = out.at[:, h // 2, :wf].set(0.5 * spec[:, h // 2]).at[:, big_h - h // 2, :wf].multiply(0.5)
        w_even, big_w_even = 2 * (wf - 1), 2 * (big_wf - 1)
        out = out * (big_h * big_w_even) / (h * w_even) / _freq_scale(big_h, big_w, decay)
        return Spectrum(jnp.stack([out.real, out.imag]).astype(p.coeffs.dtype), int(big_w))

    return Param(init, to_image, resize)
