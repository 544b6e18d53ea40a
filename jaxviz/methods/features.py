"""Feature visualisation by gradient ascent in input space: many units of a layer in one compiled call.

Pieces compose as pure functions (as optax transforms do; the objectives as lucid's and lucent's do):
  * objectives :class:`Objective` (``objective(taps, index) -> one value per image``), built by
    :func:`channel`, :func:`channel_interior`, :func:`neuron`, :func:`class_logit`, :func:`direction`
    and combined with ``+``, ``-``, ``*``, ``/`` and numbers (``channel() + 0.5 * neuron("block5a", 3)``);
  * parameterisations :class:`Param` ``(init(key, shape), to_image(p), resize(p, shape))``:
    :func:`pixels`, :func:`fft_decorrelated`;
  * transforms ``(key, image) -> image``: :func:`pad`, :func:`jitter`, :func:`random_crop`,
    :func:`random_scale`, :func:`random_rotate`, :func:`compose`;
  * penalties ``image -> scalar``: :func:`total_variation`, :func:`l2`;
  * optimisers: optax transforms; the seeds' gradient normalisations are :func:`normalize_rms`, :func:`normalize_l2`;
  * a diversity term (:func:`gram_similarity`) across ``per_filter`` images of the same unit, and lucid's
    pass-through gradient at the target layer's activation for the first ``passthrough`` steps.

A :class:`Recipe` bundles them; :data:`RECIPES` holds the named presets ``dlwp1`` (seed 001), ``dlwp2``
(seed 002), both in the model's input space exactly as the seeds, and ``lucid`` (pixels in [0, 1] that
always go through the model's own preprocessing). :func:`filter_patterns` runs one recipe for N units: the
ascent of a chunk of units is one ``jax.jit`` of a ``jax.vmap`` over unit indices, with the network run
only as far as it must (for a conv target and a one-channel objective, only that filter's output channel),
and it measures each pattern (:class:`Patterns`): its activation against the strongest of the bundled
photos (:data:`PHOTOS`), its robustness to jitter and scaling, and its high-frequency energy.

Every model is reached through the model protocol only (:meth:`jaxviz.nn.protocol.Model.run`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.errors import JaxvizError
from jaxviz.nn.protocol import Model, layer_shape
from jaxviz.nn.preprocess import preprocess
from jaxviz.methods.sharding import batch_mesh, chunk_size, gather, pad_to, replicate, shard_batch

Transform = Callable[[jax.Array, jax.Array], jax.Array]
Taps = Mapping[Any, jax.Array]

# The name under which an objective reads the model's output before its last activation (Forward.logits).
LOGITS = "<logits>"
DIVERSITY = "<diversity>"  # where the runner puts the diversity layer's activation

# ----------------------------------------------------------------------------------- objectives


def _operator(op, sym: str, swap: bool = False):
    """An Objective's arithmetic dunder (``swap``: the reflected one, ``2 * obj``)."""
    return lambda self, other: self._combine(other, op, sym, swap)


class Objective:
    """Something to maximise: ``objective(taps, index)`` -> one value per image of the batch (N,).

    ``taps`` maps layer names to activations (N x H x W x C, or N x C) and :data:`LOGITS` to the
    output's logits; ``None`` is the target layer of the call (the ``layer`` of :func:`filter_patterns`),
    and ``index`` is the unit the call is about (its filters, or classes, are vmapped). ``layers`` lists
    what the objective reads; ``own_channel`` says it reads only channel ``index`` of the target, so a
    conv target may compute that one filter. Objectives combine with ``+ - * /``, unary ``-`` and numbers.
    """

    def __init__(self, fn: Callable[[Taps, jax.Array], jax.Array], layers: Sequence[Any] = (None,),
                 own_channel: bool = False, border: int = 0, name: str = "objective"):
        self.fn, self.layers, self.own_channel, self.border, self.name = fn, tuple(layers), own_channel, border, name

    def __call__(self, taps: Taps, index: jax.Array) -> jax.Array:
        return self.fn(taps, index)

    def __repr__(self) -> str:
        return self.name

    def _combine(self, other, op, sym: str, swap: bool = False) -> "Objective":
        if isinstance(other, (int, float)):
            c = float(other)
            fn = (lambda t, i: op(c, self(t, i))) if swap else (lambda t, i: op(self(t, i), c))
            name = f"{c:g} {sym} {self}" if swap else f"({self}) {sym} {c:g}"
            return Objective(fn, self.layers, self.own_channel, self.border, name)
        if not isinstance(other, Objective):
            return NotImplemented
        a, b = (other, self) if swap else (self, other)
        return Objective(lambda t, i: op(a(t, i), b(t, i)), tuple(dict.fromkeys(a.layers + b.layers)),
                         a.own_channel and b.own_channel, max(a.border, b.border), f"({a}) {sym} ({b})")

    __add__, __radd__ = _operator(operator.add, "+"), _operator(operator.add, "+", True)
    __sub__, __rsub__ = _operator(operator.sub, "-"), _operator(operator.sub, "-", True)
    __mul__, __rmul__ = _operator(operator.mul, "*"), _operator(operator.mul, "*", True)
    __truediv__ = _operator(operator.truediv, "/")

    def __neg__(self):
        return self._combine(-1.0, operator.mul, "*", True)


def _select(act: jax.Array, n: jax.Array) -> jax.Array:
    """Channel ``n`` of (N, H, W, C) or (N, C), or the only channel when the tap holds just one."""
    if act.shape[-1] == 1:
        return act[..., 0]
    return jnp.take(act, n, axis=-1)


def _per_image_mean(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1).mean(axis=1)


def channel(layer: str | None = None, n: int | None = None) -> Objective:
    """Mean activation of channel ``n`` of ``layer`` (default: the call's target layer and unit;
    Listing 5.32: ``K.mean(layer_output[:, :, :, f])``)."""
    own = layer is None and n is None
    return Objective(lambda t, i: _per_image_mean(_select(t[layer], i if n is None else n)), (layer,), own,
                     name=f"channel({layer or 'target'}, {'unit' if n is None else n})")


def channel_interior(border: int = 2, layer: str | None = None, n: int | None = None) -> Objective:
    """Mean of one channel without a ``border``-pixel frame (seed 002: ``activation[:, 2:-2, 2:-2, f]``)."""

    def fn(t, i):
        a = _select(t[layer], i if n is None else n)
        return _per_image_mean(a[:, border:-border, border:-border])

    # the border is checked against the layer's output size before anything runs
    return Objective(fn, (layer,), layer is None and n is None, border, f"channel_interior({border})")


def neuron(layer: str | None = None, n: int | None = None, *, y: int | None = None, x: int | None = None) -> Objective:
    """One spatial position (default: the centre) of one channel (default: the target unit)."""

    def fn(t, i):
        a = _select(t[layer], i if n is None else n)
        h, w = a.shape[1:3]
        return a[:, h // 2 if y is None else y, w // 2 if x is None else x]

    return Objective(fn, (layer,), layer is None and n is None, name=f"neuron({layer or 'target'})")


def class_logit(n: int | None = None) -> Objective:
    """The model's score for class ``n`` (default: the call's unit) before its last activation
    (pre-softmax): class visualisation."""
    return Objective(lambda t, i: _select(t[LOGITS], i if n is None else n), (LOGITS,),
                     name=f"class_logit({'unit' if n is None else n})")


def class_logprob(n: int | None = None) -> Objective:
    """The log-probability of class ``n`` (default: the call's unit), log-softmax of the logits: it also
    pushes the other classes down (with :func:`class_logit`, a picture the model is sure of)."""
    return Objective(lambda t, i: _select(jax.nn.log_softmax(t[LOGITS], axis=-1), i if n is None else n), (LOGITS,),
                     name=f"class_logprob({'unit' if n is None else n})")


logit = class_logit  # the name before composable objectives


def direction(layer: str | None, vec: Sequence[float], cossim_pow: float = 0.0) -> Objective:
    """A direction in ``layer``'s channel space: the mean over positions of ``act . vec`` (lucid's
    ``direction``); with ``cossim_pow`` > 0 each dot product is weighted by its cosine similarity
    (floored at 0.1) to that power, which favours the direction over sheer magnitude."""
    v = jnp.asarray(vec, jnp.float32)

    def fn(t, i):
        a = t[layer]
        dot = a @ v
        if cossim_pow:
            cos = dot / (1e-6 + jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(v))
            dot = dot * jnp.maximum(cos, 0.1) ** cossim_pow
        return _per_image_mean(dot)

    return Objective(fn, (layer,), name=f"direction({layer or 'target'})")


def as_objective(obj: Objective | Callable) -> Objective:
    """An :class:`Objective`, or a plain ``f(act, index) -> scalar`` on the target layer (a batch of one)."""
    if isinstance(obj, Objective):
        return obj
    return Objective(lambda t, i: jax.vmap(lambda a: obj(a[None], i))(t[None]), (None,), True,
                     getattr(obj, "border", 0), getattr(obj, "__name__", "objective"))


def gram_similarity(act: jax.Array) -> jax.Array:
    """lucid's diversity measure of a batch (N x H x W x C, N >= 2): the mean cosine similarity between
    the images' Gram matrices (channel co-occurrence, position-free). Subtracting it makes the images differ."""
    n = act.shape[0]
    flat = act.reshape(n, -1, act.shape[-1])
    grams = jnp.einsum("npc,npd->ncd", flat, flat).reshape(n, -1)
    grams = grams / jnp.maximum(jnp.linalg.norm(grams, axis=1, keepdims=True), 1e-10)
    sim = grams @ grams.T
    return (jnp.sum(sim) - jnp.trace(sim)) / (n * (n - 1))


# ----------------------------------------------------------------------------- parameterisations


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


# ------------------------------------------------------------------------------------ transforms


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
    scales_arr = jnp.asarray(scales, jnp.float32)

    def apply(key, img):
        s = jax.random.choice(key, scales_arr)
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


# ------------------------------------------------------------------------------------- penalties


def total_variation(img: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(img[1:] - img[:-1])) + jnp.mean(jnp.abs(img[:, 1:] - img[:, :-1]))


def l2(img: jax.Array) -> jax.Array:
    return jnp.mean(img * img)


# ------------------------------------------------------------------------------------ optimisers


def normalize_rms(eps: float = 1e-5) -> optax.GradientTransformation:
    """Listing 5.34: ``g / (sqrt(mean(g**2)) + eps)``."""
    return optax.stateless(lambda g, _: jax.tree_util.tree_map(lambda u: u / (jnp.sqrt(jnp.mean(u * u)) + eps), g))


def normalize_l2(eps: float = 1e-12) -> optax.GradientTransformation:
    """``tf.math.l2_normalize``: ``g * rsqrt(max(sum(g**2), eps))``."""
    return optax.stateless(
        lambda g, _: jax.tree_util.tree_map(lambda u: u * jax.lax.rsqrt(jnp.maximum(jnp.sum(u * u), eps)), g)
    )


# ------------------------------------------------------------------------------------ deprocess


def deprocess_dlwp1(x: np.ndarray) -> np.ndarray:
    """Listing 5.37: centre, std 0.1, +0.5, clip [0, 1], x255, uint8."""
    x = np.array(x, np.float32)
    x -= x.mean()
    x /= x.std() + 1e-5
    x *= 0.1
    x += 0.5
    x = np.clip(x, 0, 1) * 255
    return np.clip(x, 0, 255).astype(np.uint8)


def deprocess_dlwp2(x: np.ndarray, crop: int = 25) -> np.ndarray:
    """Seed 002: centre, /std, x64, +128, clip, uint8, crop ``crop`` pixels per side (flat image: grey).

    A crop that would leave nothing is an error (e.g. ``--size 50`` with the seed's 25 pixels).
    """
    x = np.array(x, np.float32)
    x -= x.mean()
    std = x.std()
    x = x / std if std > 0 else np.zeros_like(x)
    x = np.clip(x * 64 + 128, 0, 255).astype(np.uint8)
    if crop and 2 * crop >= min(x.shape[:2]):
        raise JaxvizError(f"dlwp2 crops {crop} pixels per side, which leaves nothing of a {x.shape[0]}x{x.shape[1]} "
                          f"pattern; use --size {2 * crop + 1} or more")
    return x[crop:-crop, crop:-crop] if crop else x


def deprocess_unit(x: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] -> uint8."""
    return np.clip(np.asarray(x, np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- recipe


class Recipe(NamedTuple):
    """Everything one gradient-ascent run needs.

    ``input_scale``: ``None`` ascends in the model's input space and feeds the parameter's pixels as they
    are (the seeds do); ``'unit'``: the parameter gives pixels in [0, 1], which always go through the
    model's own preprocessing (x255, then its mode), so a [-1, 1] model never sees 0..255 pixels.
    ``per_filter`` images per unit, optimised together; ``diversity`` weighs :func:`gram_similarity` of
    their activations at ``diversity_layer`` (default the target layer) against the objective, relative
    to the objective's own size (the group's summed |objective|, held constant in the gradient), so one
    weight suits units of any scale (4 makes visibly different patterns; lucid's 1e2 was absolute).
    ``passthrough``: for that many first steps, an image whose target activation blocks every gradient
    (no position of the unit responds) gets the gradient as if that activation were the identity
    (lucid's redirected ReLU, at the target layer), so a unit that no pixel of the start excites still
    gets a direction.
    ``pre_activation``: the objective reads its layers before their built-in activation (``Model.run``'s
    ``logits=True``; a dense target always is). A capped activation (ReLU6, as in EfficientNet-Lite0 and
    MobileNet) stops rewarding an image once the unit sits at its ceiling everywhere, so several
    patterns tie at 6 and the ascent stops short of what the unit responds to most; the quality figures
    are then measured on the same pre-activation values.
    """

    size: int
    steps: int
    param: Param
    objective: Objective | Callable
    optimizer: optax.GradientTransformation
    deprocess: Callable[[np.ndarray], np.ndarray]
    transform: Transform | None = None
    penalty: Callable[[jax.Array], jax.Array] | None = None
    penalty_weight: float = 0.0
    input_scale: str | None = None
    octaves: int = 1  # > 1: start at size / octave_scale**(octaves - 1), upsample between octaves
    octave_scale: float = 1.4
    dtype: str = "float32"  # the network's compute type: 'bfloat16' runs it in bf16 (the image stays f32)
    per_filter: int = 1
    diversity: float = 0.0
    diversity_layer: str | None = None
    passthrough: int = 0
    pre_activation: bool = False

    def sizes(self) -> list[int]:
        """Image side of each octave, smallest first (the last is ``size``); ``steps`` steps each."""
        return [max(1, round(self.size / self.octave_scale ** (self.octaves - 1 - o))) for o in range(self.octaves)]


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


RECIPES: dict[str, Recipe] = {
    # seed 001, Listings 5.32-5.39 (the 8x8 grid calls generate_pattern(size=64); --size 150 for Figure 5.29)
    "dlwp1": Recipe(64, 40, pixels(lambda k, s: jax.random.uniform(k, s, jnp.float32) * 20 + 128), channel(),
                    optax.chain(normalize_rms(1e-5), optax.scale(-1.0)), deprocess_dlwp1),
    # seed 002 (DLwP 2nd ed., ch. 9)
    "dlwp2": Recipe(200, 30, pixels(uniform_start(0.4, 0.6)), channel_interior(2),
                    optax.chain(normalize_l2(1e-12), optax.scale(-10.0)), deprocess_dlwp2),
    # lucid's render_vis: unitary FFT + decorrelated colour in [0, 1] through the model's preprocessing,
    # its standard transforms, Adam 0.05, no penalty. The unit is read before its activation (a ReLU6 at
    # its ceiling tied patterns: on Lite0's block2b, 15 of 16 won their own unit read after it, 16 of 16
    # before), so no unit's gradient is blocked at the target; with pre_activation=False the first 16
    # steps pass the gradient through a blocked activation instead (lucid's redirected ReLU)
    "lucid": Recipe(128, 256, fft_decorrelated(), channel(), optax.adam(0.05), deprocess_unit,
                    transform=lucid_transforms(128), input_scale="unit", passthrough=16, pre_activation=True),
    # class visualisation (target: the output layer): the logit plus 5x the log-probability, so the other
    # classes go down too, and zooms of 1..1.75 (see CLASS_ZOOM)
    "lucid_class": Recipe(128, 256, fft_decorrelated(), class_logit() + 5 * class_logprob(), optax.adam(0.05),
                          deprocess_unit, transform=lucid_transforms(128, CLASS_ZOOM), input_scale="unit"),
}


def get_recipe(name: str, *, crop: int | None = None, **overrides) -> Recipe:
    """A named preset with fields replaced (``None`` keeps the preset's). ``crop`` (dlwp2 only): pixels
    cut from each side by seed 002's deprocessing instead of 25, e.g. ``crop=2`` for 28x28 patterns.
    For the ``lucid`` recipes, a new ``size`` rescales their transforms (unless ``transform`` is given)."""
    if name not in RECIPES:
        from jaxviz.errors import unknown

        raise unknown("recipe", name, list(RECIPES))
    if crop is not None:
        if name != "dlwp2":
            raise JaxvizError(f"crop applies to the dlwp2 recipe only, not {name}")
        overrides["deprocess"] = functools.partial(deprocess_dlwp2, crop=crop)
    if name.startswith("lucid") and overrides.get("size") and "transform" not in overrides:
        zoom = CLASS_ZOOM if name == "lucid_class" else LUCID_ZOOM
        overrides["transform"] = lucid_transforms(overrides["size"], zoom)
    return RECIPES[name]._replace(**{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------------------- engine


class Patterns(NamedTuple):
    """What :func:`filter_patterns` returns: N = len(filters) x ``per_filter`` patterns, unit-major.

    The quality figures (NaN when not measured): ``photo_best``, the unit's strongest objective over
    the crops of :data:`PHOTOS` at the pattern's size; ``relative`` = objective / photo_best (NaN when no
    photo excites the unit, photo_best <= 0); ``robustness`` = the mean objective over random jitters
    (up to size/16 pixels) and zooms (0.9..1.1) of the pattern divided by its objective (NaN when that is
    at or below 0); ``hf_energy``,
    the share of the pattern's spectral energy (mean removed) above half the Nyquist frequency in
    either direction (white noise: 0.75); ``selectivity``, the contrast ``(own - rival) / (|own| +
    |rival|)`` in [-1, 1] between the pattern's objective for its own unit and the largest objective for
    that unit among the patterns of the other units of the call (above 0: its own pattern excites the
    unit most; finite whatever the signs, which pre-activation objectives have; NaN with a single unit).
    """

    patterns: np.ndarray  # N x H x W x C float32, the raw images before deprocessing
    images: np.ndarray  # N x h x w x C uint8 after deprocessing
    filters: np.ndarray  # N int32
    objective: np.ndarray  # N float32: objective at the final image
    history: np.ndarray  # N x (octaves * steps + 1) float32: objective at the start image, before each
    # later step (on that step's transformed image, when the recipe transforms) and at the final image
    dead: np.ndarray  # N bool: the gradient was zero everywhere at every (non-pass-through) step
    photo_best: np.ndarray | None = None  # N float32
    relative: np.ndarray | None = None  # N float32
    robustness: np.ndarray | None = None  # N float32
    hf_energy: np.ndarray | None = None  # N float32
    selectivity: np.ndarray | None = None  # N float32

    def summary(self) -> str:
        """One line: how many patterns beat the best photo, the medians of the quality figures, and how
        many excite their own unit most."""
        n = len(self.objective)
        with np.errstate(invalid="ignore"):
            beat = int(np.sum(self.objective > self.photo_best))
        line = (f"above the best photo: {beat}/{n}, median objective / best photo {_median(self.relative)}, "
                f"median robustness {_median(self.robustness)}, median high-frequency energy "
                f"{_median(self.hf_energy)}")
        sel = self.selectivity if self.selectivity is not None else np.full(n, np.nan)
        if np.isfinite(sel).any():
            line += f", own unit strongest: {int(np.sum(sel > 0))}/{n}"
        return line


def _median(v: np.ndarray | None) -> str:
    v = np.asarray([] if v is None else v, np.float64)
    v = v[np.isfinite(v)]
    return f"{np.median(v):.2f}" if v.size else "n/a"


def model_input(model: Model, img: jax.Array, input_scale: str | None) -> jax.Array:
    """``input_scale='unit'``: pixels in [0, 1] go through the model's own preprocessing; else as they are."""
    return preprocess(img * 255.0, model.preprocessing) if input_scale == "unit" else img


def _runner(model: Model, layer: str, objective: Objective, extra: str | None, single: bool, logits: bool):
    """``run(params, x, index, passthrough) -> taps`` for ``objective`` (and the ``extra`` layer): one
    forward pass that stops at the deepest layer needed. ``single``: the target's tap holds only
    channel ``index``. ``passthrough``: where an image's target tap is blocked (flat and saturated, so
    no gradient gets through its activation), the tap keeps its value but takes its gradient as if the
    activation were the identity (its ``logits=True`` tap is the activation's input; XLA shares the
    common part of the two passes)."""
    names = [layer if n is None else n for n in objective.layers]
    need_out = LOGITS in names
    taps = tuple(dict.fromkeys([n for n in names if n != LOGITS]))

    def run(params, x, index, passthrough=False):
        ch = (layer, index) if single else None
        out = model.run(params, x, taps=taps + ((extra,) if extra and not logits else ()), output=need_out,
                        logits=logits, channel=ch)
        t: dict[Any, jax.Array] = {n: v.astype(jnp.float32) for n, v in out.taps.items()}
        if extra:  # the diversity layer's output, after its activation as lucid's (a pre-activation target
            # reads it in a second pass; XLA computes the common part once)
            t[DIVERSITY] = (out.taps[extra] if not logits else
                            model.run(params, x, taps=(extra,), output=False).taps[extra]).astype(jnp.float32)
        if passthrough and not logits and layer in t:
            pre = model.run(params, x, taps=(layer,), output=False, logits=True, channel=ch).taps[layer]
            post, pre = t[layer], pre.astype(jnp.float32)
            # lucid redirects only where nothing gets through: an image whose tap is flat (every position
            # saturated: ReLU off, ReLU6 at 6) but is not its input (no identity activation) is blocked
            flat = post.reshape(post.shape[0], -1)
            blocked = jnp.all(flat == flat[:, :1], axis=1) & jnp.any(flat != pre.reshape(flat.shape), axis=1)
            through = jax.lax.stop_gradient(post) + pre - jax.lax.stop_gradient(pre)
            t[layer] = jnp.where(jax.lax.stop_gradient(blocked).reshape((-1,) + (1,) * (post.ndim - 1)), through, post)
        if need_out:
            t[LOGITS] = out.logits.astype(jnp.float32)
        if layer in t:
            t[None] = t[layer]
        return t

    return run


def _nonzero(tree, k: int) -> jax.Array:
    """Per image (leading axis of size ``k``): is any gradient entry non-zero?"""
    flags = [jnp.any(leaf.reshape(k, -1) != 0, axis=1) for leaf in jax.tree_util.tree_leaves(tree)]
    return functools.reduce(jnp.logical_or, flags)


@functools.lru_cache(maxsize=32)
def _compiled(model: Model, layer: str, recipe: Recipe, channels: int, single_channel: bool, unroll: bool,
              logits: bool):
    """One jitted function: a chunk of unit indices + keys -> final images, objective history, dead flags
    (``per_filter`` images per unit)."""
    obj = as_objective(recipe.objective)
    k = recipe.per_filter
    div_layer = (recipe.diversity_layer or layer) if recipe.diversity and k > 1 else None
    run = _runner(model, layer, obj, div_layer, single_channel and obj.own_channel and div_layer is None, logits)

    def evaluate(params, p, key, index, transformed, passthrough=False):
        imgs = jax.vmap(recipe.param.to_image)(p)
        pen = jnp.zeros(k)
        if recipe.penalty is not None:
            pen = jax.vmap(recipe.penalty)(imgs) * recipe.penalty_weight
        if transformed and recipe.transform is not None:
            imgs = jax.vmap(recipe.transform)(jax.random.split(key, k), imgs)
        x = model_input(model, imgs, recipe.input_scale).astype(recipe.dtype)  # layers follow x's dtype
        taps = run(params, x, index, passthrough)
        div = gram_similarity(taps[DIVERSITY]) if div_layer else 0.0
        return obj(taps, index), pen, div

    def one(params, key, index):
        sizes = recipe.sizes()
        key0 = jax.random.fold_in(key, 0)
        starts = key0[None] if k == 1 else jax.random.split(key0, k)
        p = jax.vmap(lambda s: recipe.param.init(s, (sizes[0], sizes[0], channels)))(starts)
        alive, hists = jnp.zeros(k, bool), []
        start = evaluate(params, p, key, index, False)[0] if recipe.transform is not None else None

        def loss(p, kk, passthrough):
            values, pen, div = evaluate(params, p, kk, index, True, passthrough)
            # diversity is weighed against the objective's own size, so one weight suits every unit
            scale = k * jax.lax.stop_gradient(jnp.mean(jnp.abs(values)))
            return -jnp.sum(values) + jnp.sum(pen) + recipe.diversity * scale * div, values

        for o, size in enumerate(sizes):  # octaves: static sizes, scans of steps, all in this one jit
            if o:
                p = jax.vmap(lambda q, size=size: recipe.param.resize(q, (size, size, channels)))(p)
            opt_state = jax.vmap(recipe.optimizer.init)(p)  # per image: the seeds normalise each image's step

            def step(carry, i, o=o, passthrough=False):
                p, opt_state, alive = carry
                kk = jax.random.fold_in(key, o * recipe.steps + i + 1)
                (_, values), g = jax.value_and_grad(loss, has_aux=True)(p, kk, passthrough)
                if not passthrough:
                    alive = alive | _nonzero(g, k)
                updates, opt_state = jax.vmap(recipe.optimizer.update)(g, opt_state, p)
                return (optax.apply_updates(p, updates), opt_state, alive), values

            # pass-through steps only where the target is read after its activation (logits: nothing blocks)
            n_pass = min(recipe.passthrough, recipe.steps - 1) if o == 0 and not logits else 0
            for lo, hi, pt in ((0, n_pass, True), (n_pass, recipe.steps, False)):
                if hi > lo:
                    (p, opt_state, alive), hist = jax.lax.scan(
                        functools.partial(step, passthrough=pt), (p, opt_state, alive), jnp.arange(lo, hi),
                        unroll=(hi - lo) if unroll else 1)
                    hists.append(hist)
        final, _, _ = evaluate(params, p, key, index, False)
        # the first entry is the start image as it is (the others before a step are on that step's
        # transformed image), so the first and the last entries compare like with like
        hists[0] = hists[0].at[0].set(start) if recipe.transform is not None else hists[0]
        hist = jnp.concatenate(hists + [final[None]]).T  # k x (octaves * steps + 1)
        return jax.vmap(recipe.param.to_image)(p), hist, ~alive

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


# ---------------------------------------------------------------------------------------- quality

# The bundled photographs the patterns are measured against (jaxviz.io.images.SAMPLES less the cat,
# which is chelsea again, the horse silhouette and the two scans of printed text).
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry", "moon",
          "rocket", "china", "flower")


@functools.lru_cache(maxsize=8)
def photo_crops(size: int, channels: int) -> np.ndarray:
    """Each of :data:`PHOTOS` as its centre square and that square's four quadrants, resized to
    ``size`` x ``size`` (bilinear): 55 x size x size x channels, float32 pixels in [0, 255]."""
    from jaxviz.io.images import load_image

    out = []
    for name in PHOTOS:
        img = load_image(f"sample:{name}", channels=channels)
        h, w = img.shape[:2]
        s = min(h, w)
        sq = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        half = s // 2
        for crop in (sq, sq[:half, :half], sq[:half, half:], sq[half:, :half], sq[half:, half:]):
            out.append(load_image(crop, (size, size), interpolation="bilinear", channels=channels))
    return np.stack(out).astype(np.float32)


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


def hf_energy(images: np.ndarray) -> np.ndarray:
    """Per image (N x H x W x C): the share of spectral energy, each channel's mean removed, at
    frequencies above half the Nyquist frequency in either direction (max(|fy|, |fx|) > 1/4 cycle per
    pixel). White noise: 0.75; a smooth picture: near 0."""
    x = np.asarray(images, np.float64)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2).sum(axis=-1)
    fy = np.abs(np.fft.fftfreq(x.shape[1]))[:, None]
    fx = np.abs(np.fft.fftfreq(x.shape[2]))[None, :]
    high = np.maximum(fy, fx) > 0.25
    total = power.sum(axis=(1, 2))
    return np.where(total > 0, (power * high).sum(axis=(1, 2)) / np.where(total > 0, total, 1), 0).astype(np.float32)


ROBUSTNESS_DRAWS = 8


@functools.lru_cache(maxsize=32)
def _quality_fns(model: Model, layer: str, recipe: Recipe, single_channel: bool, logits: bool):
    """Jitted ``(best over photos per unit, mean perturbed objective per pattern, objective of each unit
    on each image)``."""
    obj = as_objective(recipe.objective)
    full = _runner(model, layer, obj, None, False, logits)
    run = _runner(model, layer, obj, None, single_channel and obj.own_channel, logits)

    def to_x(imgs):
        return model_input(model, imgs, recipe.input_scale).astype(recipe.dtype)

    def photos_best(params, photos, indices):
        taps = full(params, to_x(photos), indices[0])
        return jax.vmap(lambda i: jnp.max(obj(taps, i)))(indices)

    def perturbed(params, img, index, key):
        shift = max(1, round(img.shape[0] / 16))
        moved = jax.vmap(lambda kk: jitter_scale(kk, img, shift))(jax.random.split(key, ROBUSTNESS_DRAWS))
        return jnp.mean(obj(run(params, to_x(moved), index), index))  # the pattern itself: responses

    def responses(params, imgs, indices):  # images x units: every unit's objective on every image
        taps = full(params, to_x(imgs), indices[0])
        return jax.vmap(lambda i: obj(taps, i), out_axes=1)(indices)

    return jax.jit(photos_best), jax.jit(jax.vmap(perturbed, in_axes=(None, 0, 0, 0))), jax.jit(responses)


# ---------------------------------------------------------------------------------------- the call


def filter_patterns(
    model: Model,
    params: Mapping,
    layer: str,
    filters: Sequence[int],
    recipe: Recipe | str = "dlwp1",
    key: jax.Array | None = None,
    *,
    batch_size: int | None = None,
    single_channel: bool = True,
    unroll: bool | None = None,
    on_chunk: Callable[[int], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
    quality: bool = True,
) -> Patterns:
    """Gradient-ascent patterns for the units ``filters`` of ``layer`` (channels of a conv layer, classes
    of the output layer: class visualisation), ``recipe.per_filter`` patterns each.

    Each unit ``f`` gets its own start from ``jax.random.fold_in(key, f)``, so results do not depend
    on ``batch_size`` (units per compiled call; the last chunk is padded so shapes never change).
    ``unroll=True`` unrolls the step loop inside the jit (on XLA:CPU a rolled loop of conv steps is
    several times slower); the default unrolls runs of up to 64 steps without transforms or
    pass-through steps (the seeds') and keeps the others (lucid's) rolled to bound compile time.
    ``single_channel`` computes only the target filter of a conv layer.
    ``devices`` (default: all of ``jax.devices()``): each chunk's units are split evenly over them
    (:mod:`jaxviz.methods.sharding`; the chunk is rounded up to a multiple of the device count); the
    patterns equal the single-device ones. ``quality`` measures each pattern (see :class:`Patterns`):
    a forward pass of the 55 photo crops and of 8 perturbed copies of each pattern.
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    key = jax.random.key(0) if key is None else key
    layer = model.resolve(layer)
    if recipe.octaves < 1 or recipe.dtype not in ("float32", "bfloat16") or recipe.per_filter < 1:
        raise JaxvizError(f"octaves and per_filter must be >= 1 and dtype float32 or bfloat16; got "
                          f"{recipe.octaves}, {recipe.per_filter}, {recipe.dtype!r}")
    obj = as_objective(recipe.objective)
    for name in obj.layers + ((recipe.diversity_layer,) if recipe.diversity_layer else ()):
        if name is not None and name != LOGITS:
            model.resolve(name)
    shape = (recipe.size, recipe.size, model.input_shape[-1])
    first = recipe.sizes()[0]  # the smallest image of the run (the first octave) must fit too
    out = layer_shape(model, layer, (first, first) + shape[2:])
    layer_shape(model, layer, shape)
    kind = model.kind(layer)
    if kind in ("flatten", "dropout", "reshape"):
        raise JaxvizError(f"{layer} has no channels of its own; choose a conv, pool or dense layer")
    n_out = out[-1]
    filters = np.asarray(list(filters), np.int32)
    if filters.size == 0:
        raise JaxvizError("no filters requested")
    bad = filters[(filters < 0) | (filters >= n_out)]
    if bad.size:
        raise JaxvizError(f"filter index {int(bad[0])} out of range for {layer} of {model.name}: valid 0..{n_out - 1}")
    border = obj.border
    if border and len(out) == 3 and min(out[:2]) <= 2 * border:
        raise JaxvizError(f"at size {first} the output of {layer} is {out[0]}x{out[1]}, too small for an "
                          f"objective that drops a {border}-pixel border; use a larger --size")
    recipe.deprocess(np.zeros(shape, np.float32))  # a size the deprocessing cannot take fails now, not after
    if unroll is None:  # short plain runs (the seeds') unroll; transforms or pass-through steps would bloat the jit
        unroll = recipe.steps <= 64 and recipe.transform is None and not recipe.passthrough
    logits = kind == "dense" or recipe.pre_activation  # a dense target (the classes): before its softmax
    fn = _compiled(model, layer, recipe, shape[-1], single_channel, unroll, logits)
    mesh = batch_mesh(devices)
    b = chunk_size(len(filters), batch_size, mesh)
    params = replicate(mesh, params)
    k = recipe.per_filter
    imgs, hists, deads = [], [], []
    for start in range(0, len(filters), b):
        chunk = filters[start:start + b]
        idx = pad_to(chunk, b)
        keys = jax.vmap(lambda f: jax.random.fold_in(key, f))(jnp.asarray(idx))
        img, hist, dead = fn(params, *shard_batch(mesh, keys, jnp.asarray(idx)))
        imgs.append(gather(img)[: len(chunk)].reshape((-1,) + shape))
        hists.append(gather(hist)[: len(chunk)].reshape(len(chunk) * k, -1))
        deads.append(gather(dead)[: len(chunk)].reshape(-1))
        if on_chunk:
            on_chunk(len(chunk))
    raw = np.concatenate(imgs).astype(np.float32)
    hist = np.concatenate(hists).astype(np.float32)
    images = np.stack([recipe.deprocess(r) for r in raw])
    units = np.repeat(filters, k)
    res = Patterns(raw, images, units, hist[:, -1], hist, np.concatenate(deads))
    if quality:
        res = measure(model, params, layer, res, recipe, batch_size=b, single_channel=single_channel, mesh=mesh)
    else:
        nan = np.full(len(units), np.nan, np.float32)
        res = res._replace(photo_best=nan, relative=nan, robustness=nan, hf_energy=nan, selectivity=nan)
    return res


def measure(model: Model, params: Mapping, layer: str, patterns: Patterns, recipe: Recipe | str, *,
            batch_size: int | None = None, single_channel: bool = True, mesh=None) -> Patterns:
    """``patterns`` with its quality figures filled in (see :class:`Patterns`); ``recipe`` gives the
    objective and the input space the patterns were made in."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    layer = model.resolve(layer)
    mesh = mesh or batch_mesh()
    logits = model.kind(layer) == "dense" or recipe.pre_activation
    best_fn, perturbed_fn, responses_fn = _quality_fns(model, layer, recipe, single_channel, logits)
    raw = patterns.patterns
    size, c = raw.shape[1], raw.shape[-1]
    photos = photo_crops(size, c)
    photos = photos / 255.0 if recipe.input_scale == "unit" else preprocess(photos, model.preprocessing)
    units = np.unique(patterns.filters)
    best = dict(zip(units.tolist(), np.asarray(best_fn(params, jnp.asarray(photos), jnp.asarray(units)))))
    photo_best = np.array([best[int(f)] for f in patterns.filters], np.float32)
    resp = _responses(responses_fn, params, raw, units)  # N x U: every pattern, every unit of the call
    base = resp[np.arange(len(raw)), np.searchsorted(units, patterns.filters)]  # its own unit, measured once
    b = chunk_size(len(raw), batch_size, mesh)
    keys = jax.random.split(jax.random.key(12345), len(raw))
    moved = []
    for start in range(0, len(raw), b):
        sl = slice(start, start + b)
        args = (pad_to(jnp.asarray(raw[sl]), b), pad_to(jnp.asarray(patterns.filters[sl]), b), pad_to(keys[sl], b))
        moved.append(gather(perturbed_fn(params, *shard_batch(mesh, *args)))[: len(raw[sl])])
    moved = np.concatenate(moved)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(photo_best > 0, patterns.objective / photo_best, np.nan).astype(np.float32)
        # a ratio only means "kept x of its response" for a response above 0 (pre-activation ones can be below)
        robustness = np.where(base > 0, moved / base, np.nan).astype(np.float32)
    return patterns._replace(photo_best=photo_best, relative=relative, robustness=robustness,
                             hf_energy=hf_energy(raw), selectivity=selectivity(resp, patterns.filters, units))


RESPONSES_CHUNK = 16  # patterns per forward pass of the all-units responses (bounds their memory)


def _responses(responses_fn, params, raw: np.ndarray, units: np.ndarray) -> np.ndarray:
    """patterns x units: every unit's objective on every pattern, in chunks of :data:`RESPONSES_CHUNK`."""
    out = []
    for start in range(0, len(raw), RESPONSES_CHUNK):
        chunk = raw[start:start + RESPONSES_CHUNK]
        r = responses_fn(params, pad_to(jnp.asarray(chunk), RESPONSES_CHUNK), jnp.asarray(units))
        out.append(np.asarray(r)[: len(chunk)])
    return np.concatenate(out)


def selectivity(responses: np.ndarray, filters: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Per pattern: the contrast ``(own - rival) / (|own| + |rival|)`` between its own unit's objective and
    the largest objective of that unit among the patterns of the other units. ``responses``: patterns x
    ``units`` (sorted) objectives; ``filters``: each pattern's unit. 0 when both are 0, NaN with one unit."""
    if len(units) < 2:
        return np.full(len(filters), np.nan, np.float32)
    col = np.searchsorted(units, filters)
    own = responses[np.arange(len(filters)), col]
    others = np.where(filters[:, None] == filters[None, :], -np.inf, responses[:, col].T)  # [n, m]: pattern m, unit of n
    rival = others.max(axis=1)
    scale = np.abs(own) + np.abs(rival)
    return np.where(scale > 0, (own - rival) / np.where(scale > 0, scale, 1.0), 0.0).astype(np.float32)
