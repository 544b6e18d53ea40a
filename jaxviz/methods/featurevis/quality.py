"""What the ascent returns (:class:`Patterns`) and the quality measures of finished patterns
(:func:`measure`): each pattern's objective against the strongest of the bundled photos
(:data:`PHOTOS`), its robustness to jitter and zoom (:func:`~.transforms.jitter_scale`), its
high-frequency energy (:func:`hf_energy`), how selective it is for its own unit (:func:`selectivity`)
and whether it shows anything at all (:func:`structure`).

A pattern is **good** (:attr:`Patterns.good`) only when it excites its unit more than the strongest
photo crop *and* has structure. Beating the photos alone praises noise: a flat grey picture with a
bright rim, or a pattern of an untrained network, can drive a unit harder than any photo while it shows
nothing. :func:`structure` asks, of the picture as it is shown (uint8, after the recipe's deprocessing),
inside its interior (a border of 1/8 of its side left out):

* **contrast**: the interior's luminance standard deviation is at least :data:`MIN_CONTRAST` (of the
  0..1 range): a flat picture fails;
* **interior**: the interior holds at least :data:`MIN_INTERIOR` of the picture's contrast (the ratio
  of standard deviations): a picture that varies only at its border fails;
* **spectrum**: the interior's power spectrum (mean removed, Hann window) is not flat like noise's:
  its spectral flatness (geometric over arithmetic mean of the power, DC left out; white noise about
  0.56, a texture or an object well under 0.3) is at most :data:`MAX_FLATNESS`, so pixel noise fails
  while a fine regular texture passes; and at least :data:`MIN_MID` of its energy lies in the middle
  band between the lowest ring (under 2 cycles per interior) and half the Nyquist frequency, so a
  single smooth ramp or blob fails.
"""

from __future__ import annotations

import functools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.methods.featurevis.forward import model_input, taps_runner
from jaxviz.methods.featurevis.objectives import as_objective
from jaxviz.methods.featurevis.recipes import Recipe, get_recipe
from jaxviz.methods.featurevis.transforms import jitter_scale
from jaxviz.methods.sharding import batch_mesh, chunk_size, gather, pad_to, shard_batch
from jaxviz.nn.finite import finite_entries
from jaxviz.nn.preprocess import preprocess
from jaxviz.nn.protocol import Model
from jaxviz.nn.jit import jit


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
    structured: np.ndarray | None = None  # N bool: :func:`structure`'s verdict on the shown picture

    def _repr_html_(self) -> str:
        from jaxviz.viz.display import html

        return html(self)

    def _repr_png_(self) -> bytes | None:
        from jaxviz.viz.display import png

        return png(self)

    @property
    def good(self) -> np.ndarray | None:
        """N bool: above the best photo *and* structured (see the module docstring); None unmeasured."""
        if self.photo_best is None or self.structured is None:
            return None
        with np.errstate(invalid="ignore"):
            return (self.objective > self.photo_best) & self.structured

    def summary(self) -> str:
        """One line: how many patterns are good (above the best photo and structured), how many beat the
        best photo and how many have structure, the medians of the quality figures, and how many excite
        their own unit most."""
        n = len(self.objective)
        with np.errstate(invalid="ignore"):
            beat = int(np.sum(self.objective > self.photo_best))
        line = ""
        if self.good is not None:
            line = f"good (above the best photo and structured): {int(self.good.sum())}/{n}, " \
                   f"structured: {int(self.structured.sum())}/{n}, "
        line += (f"above the best photo: {beat}/{n}, median objective / best photo {_median(self.relative)}, "
                 f"median robustness {_median(self.robustness)}, median high-frequency energy "
                 f"{_median(self.hf_energy)}")
        sel = self.selectivity if self.selectivity is not None else np.full(n, np.nan)
        if finite_entries(sel).any():
            line += f", own unit strongest: {int(np.sum(sel > 0))}/{n}"
        return line


def _median(v: np.ndarray | None) -> str:
    v = np.asarray([] if v is None else v, np.float64)
    v = v[finite_entries(v)]
    return f"{np.median(v):.2f}" if v.size else "n/a"


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


MIN_CONTRAST = 0.04  # interior luminance std, of the 0..1 range (about 10 grey levels)
MIN_INTERIOR = 0.5  # interior std / whole-picture std
MAX_FLATNESS = 0.4  # spectral flatness of the interior (white noise: about 0.56)
MIN_MID = 0.25  # share of the interior's energy between the lowest ring and half the Nyquist frequency


class Structure(NamedTuple):
    """What :func:`structure` measures per picture (N float32 each) and its verdict (N bool)."""

    contrast: np.ndarray  # interior luminance std, 0..0.5
    interior: np.ndarray  # interior std / whole std (0 for a flat picture)
    flatness: np.ndarray  # spectral flatness of the interior, 0..1 (white noise: about 0.56)
    mid: np.ndarray  # share of the energy between the lowest ring and half the Nyquist frequency
    structured: np.ndarray  # bool: all four within their bounds


def structure(images: np.ndarray) -> Structure:
    """Whether each picture shows something (see the module docstring for the definition).

    ``images``: N x H x W x C (C = 1 or 3) uint8 as shown, or floats in [0, 1]. Luminance is the channel
    mean; the interior leaves out ``max(1, min(H, W) // 8)`` pixels per side (at least 4 x 4 remain)."""
    x = np.asarray(images)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if x.ndim == 3:
        x = x[..., None]
    lum = x.mean(axis=-1)
    n, h, w = lum.shape
    m = max(1, min(h, w) // 8)
    m = min(m, max(0, (min(h, w) - 4) // 2))
    inner = lum[:, m:h - m, m:w - m]
    contrast = inner.std(axis=(1, 2))
    whole = lum.std(axis=(1, 2))
    interior = np.where(whole > 0, contrast / np.where(whole > 0, whole, 1.0), 0.0)
    ih, iw = inner.shape[1:]
    win = np.outer(np.hanning(ih + 2)[1:-1], np.hanning(iw + 2)[1:-1])  # no rim of zeros: every pixel counts
    centred = (inner - inner.mean(axis=(1, 2), keepdims=True)) * win
    power = np.abs(np.fft.fft2(centred, axes=(1, 2))) ** 2
    fy = np.abs(np.fft.fftfreq(ih))[:, None]
    fx = np.abs(np.fft.fftfreq(iw))[None, :]
    f = np.maximum(fy, fx)
    low = np.maximum(np.abs(np.fft.fftfreq(ih) * ih)[:, None], np.abs(np.fft.fftfreq(iw) * iw)[None, :]) < 2
    total = power.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    ac = power.reshape(n, -1)[:, 1:]  # DC left out (it is 0 after the mean's removal)
    with np.errstate(divide="ignore"):
        geo = np.exp(np.mean(np.log(np.maximum(ac, 1e-30)), axis=1))
    flatness = np.where(total > 0, geo / np.maximum(ac.mean(axis=1), 1e-30), 0.0)
    mid = np.where(total > 0, (power * (~low & (f <= 0.25))).sum(axis=(1, 2)) / safe, 0.0)
    ok = (contrast >= MIN_CONTRAST) & (interior >= MIN_INTERIOR) & (flatness <= MAX_FLATNESS) & (mid >= MIN_MID)
    f32 = lambda v: v.astype(np.float32)  # noqa: E731
    return Structure(f32(contrast), f32(interior), f32(flatness), f32(mid), ok)


ROBUSTNESS_DRAWS = 8


@functools.lru_cache(maxsize=32)
def _quality_fns(model: Model, layer: str, recipe: Recipe, single_channel: bool, logits: bool):
    """Jitted ``(best over photos per unit, mean perturbed objective per pattern, objective of each unit
    on each image)``."""
    obj = as_objective(recipe.objective)
    full = taps_runner(model, layer, obj, None, False, logits)
    run = taps_runner(model, layer, obj, None, single_channel and obj.own_channel, logits)

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

    return jit(photos_best), jit(jax.vmap(perturbed, in_axes=(None, 0, 0, 0))), jit(responses)


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
                             hf_energy=hf_energy(raw), selectivity=selectivity(resp, patterns.filters, units),
                             structured=structure(patterns.images).structured)


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
