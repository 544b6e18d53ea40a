"""Filter patterns by gradient ascent in input space: many filters of a layer in one compiled call.

Pieces compose as pure functions (as optax transforms do):
  * objectives ``(activation, index) -> scalar``: :func:`channel`, :func:`channel_interior`, :func:`neuron`, :func:`logit`;
  * parameterisations :class:`Param` ``(init(key, shape), to_image(p))``: :func:`pixels`, :func:`fft_decorrelated`;
  * transforms ``(key, image) -> image``: :func:`jitter`, :func:`random_scale`, :func:`random_rotate`, :func:`compose`;
  * penalties ``image -> scalar``: :func:`total_variation`, :func:`l2`;
  * optimisers: optax transforms; the seeds' gradient normalisations are :func:`normalize_rms`, :func:`normalize_l2`.

A :class:`Recipe` bundles them; :data:`RECIPES` holds the named presets ``dlwp1`` (seed 001), ``dlwp2``
(seed 002) and ``lucid``. :func:`filter_patterns` runs one recipe for N filters: the ascent of a chunk
of filters is one ``jax.jit`` of a ``jax.vmap`` over filter indices, with the network cut at the target
layer and, for a conv target, only the target filter's output channel computed.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.errors import JaxvizError
from jaxviz.nn.protocol import Model, layer_shape
from jaxviz.nn.preprocess import preprocess
from jaxviz.methods.sharding import batch_mesh, chunk_size, gather, pad_to, replicate, shard_batch

Objective = Callable[[jax.Array, jax.Array], jax.Array]
Transform = Callable[[jax.Array, jax.Array], jax.Array]

# ----------------------------------------------------------------------------------- objectives


def channel(act: jax.Array, index: jax.Array) -> jax.Array:
    """Mean activation of one channel (Listing 5.32: ``K.mean(layer_output[:, :, :, f])``)."""
    return jnp.mean(_select(act, index))


def channel_interior(border: int = 2) -> Objective:
    """Mean of one channel without a ``border``-pixel frame (seed 002: ``activation[:, 2:-2, 2:-2, f]``)."""

    def objective(act, index):
        a = _select(act, index)
        return jnp.mean(a[..., border:-border, border:-border])

    objective.border = border  # checked against the layer's output size before anything runs
    return objective


def neuron(y: int | None = None, x: int | None = None) -> Objective:
    """One spatial position of one channel (default: the centre)."""

    def objective(act, index):
        a = _select(act, index)
        h, w = a.shape[-2:]
        return a[..., h // 2 if y is None else y, w // 2 if x is None else x].mean()

    return objective


def logit(act: jax.Array, index: jax.Array) -> jax.Array:
    """A class score of a dense output (use with the model's ``logits=True``: pre-softmax)."""
    return jnp.mean(_select(act, index))


def _select(act: jax.Array, index: jax.Array) -> jax.Array:
    """Channel ``index`` of (N, H, W, C) or (N, C), or the only channel when already selected."""
    if act.shape[-1] == 1:
        return jnp.moveaxis(act, -1, 0)[0]
    return jnp.take(act, index, axis=-1)


# ----------------------------------------------------------------------------- parameterisations


class Param(NamedTuple):
    """An image parameterisation: ``init(key, (H, W, C)) -> p``, ``to_image(p) -> (H, W, C)`` pixels and
    ``resize(p, (H, W, C)) -> p`` (the same picture at another size: octaves)."""

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


def _freq_scale(h: int, w: int, decay: float = 1.0) -> jax.Array:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freq = np.sqrt(fx * fx + fy * fy)
    return jnp.asarray(1.0 / np.maximum(freq, 1.0 / max(h, w)) ** decay, jnp.float32)


def fft_decorrelated(sd: float = 0.01, decay: float = 1.0) -> Param:
    """lucid's parameterisation: a 1/f-scaled Fourier spectrum, decorrelated colours, then a sigmoid.

    Output pixels are in [0, 1]. Single-channel images skip the colour step.
    """

    def init(key, shape):
        h, w, c = shape
        return sd * jax.random.normal(key, (2, c, h, w // 2 + 1), jnp.float32)

    def to_image(p):
        _, c, h, wf = p.shape
        w = (wf - 1) * 2 if wf > 1 else 1
        w = w if w >= 1 else 1
        spec = (p[0] + 1j * p[1]) * _freq_scale(h, w, decay)
        img = jnp.fft.irfft2(spec, s=(h, w)).transpose(1, 2, 0) / 4.0
        if c == 3:
            img = img @ jnp.asarray(_COLOR_SQRT).T
        return jax.nn.sigmoid(img)

    def resize(p, shape):
        # Band-limited upsampling: the spectrum zero-padded to the new size, rescaled for the DFT
        # length and the new 1/f weights, so the new image is the old one interpolated.
        (big_h, big_w, _), (_, c, h, wf) = shape, p.shape
        w = max((wf - 1) * 2, 1)
        spec = (p[0] + 1j * p[1]) * _freq_scale(h, w, decay)
        if w % 2 == 0 and wf > 1:  # the old Nyquist column becomes an ordinary one, counted twice by irfft2
            spec = spec.at[..., -1].multiply(0.5)
        pos = (h + 1) // 2  # rows of non-negative vertical frequency; the rest are negative
        out = jnp.zeros((c, big_h, big_w // 2 + 1), spec.dtype)
        out = out.at[:, :pos, :wf].set(spec[:, :pos]).at[:, big_h - (h - pos):, :wf].set(spec[:, pos:])
        out = out * (big_h * big_w) / (h * w) / _freq_scale(big_h, big_w, decay)
        return jnp.stack([out.real, out.imag]).astype(p.dtype)

    return Param(init, to_image, resize)


# ------------------------------------------------------------------------------------ transforms


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
    """Everything one gradient-ascent run needs. ``preprocess``: map param pixels (in the recipe's
    own range) to model input — ``None`` feeds them as they are (the seeds do)."""

    size: int
    steps: int
    param: Param
    objective: Objective
    optimizer: optax.GradientTransformation
    deprocess: Callable[[np.ndarray], np.ndarray]
    transform: Transform | None = None
    penalty: Callable[[jax.Array], jax.Array] | None = None
    penalty_weight: float = 0.0
    input_scale: str | None = None  # 'unit': param gives [0,1] pixels; scaled to the model's preprocessing
    octaves: int = 1  # > 1: start at size / octave_scale**(octaves - 1), upsample between octaves
    octave_scale: float = 1.4
    dtype: str = "float32"  # the network's compute type: 'bfloat16' runs it in bf16 (the image stays f32)

    def sizes(self) -> list[int]:
        """Image side of each octave, smallest first (the last is ``size``); ``steps`` steps each."""
        return [max(1, round(self.size / self.octave_scale ** (self.octaves - 1 - o))) for o in range(self.octaves)]


def _lucid_penalty(img):
    return total_variation(img) + 0.1 * l2(img - 0.5)


RECIPES: dict[str, Recipe] = {
    # seed 001, Listings 5.32-5.39 (the 8x8 grid calls generate_pattern(size=64); --size 150 for Figure 5.29)
    "dlwp1": Recipe(64, 40, pixels(lambda k, s: jax.random.uniform(k, s, jnp.float32) * 20 + 128), channel,
                    optax.chain(normalize_rms(1e-5), optax.scale(-1.0)), deprocess_dlwp1),
    # seed 002 (DLwP 2nd ed., ch. 9)
    "dlwp2": Recipe(200, 30, pixels(uniform_start(0.4, 0.6)), channel_interior(2),
                    optax.chain(normalize_l2(1e-12), optax.scale(-10.0)), deprocess_dlwp2),
    # lucid-style: FFT + decorrelated colour, jitter/scale/rotate, TV + L2 penalties, Adam
    "lucid": Recipe(128, 256, fft_decorrelated(), channel, optax.adam(0.05), deprocess_unit,
                    transform=compose(jitter(8), random_scale((1.0, 0.975, 1.025, 0.95, 1.05)), random_rotate(5.0),
                                      jitter(4)),
                    penalty=_lucid_penalty, penalty_weight=0.05, input_scale="unit"),
}


def get_recipe(name: str, *, crop: int | None = None, **overrides) -> Recipe:
    """A named preset with fields replaced (``None`` keeps the preset's). ``crop`` (dlwp2 only): pixels
    cut from each side by seed 002's deprocessing instead of 25, e.g. ``crop=2`` for 28x28 patterns."""
    if name not in RECIPES:
        from jaxviz.errors import unknown

        raise unknown("recipe", name, list(RECIPES))
    if crop is not None:
        if name != "dlwp2":
            raise JaxvizError(f"crop applies to the dlwp2 recipe only, not {name}")
        overrides["deprocess"] = functools.partial(deprocess_dlwp2, crop=crop)
    return RECIPES[name]._replace(**{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------------------- engine


class Patterns(NamedTuple):
    patterns: np.ndarray  # N x H x W x C float32, the raw images before deprocessing
    images: np.ndarray  # N x h x w x C uint8 after deprocessing
    filters: np.ndarray  # N int32
    objective: np.ndarray  # N float32: objective at the final image
    history: np.ndarray  # N x (octaves * steps + 1) float32: objective before each step and at the end
    dead: np.ndarray  # N bool: the gradient was zero everywhere at every step


def model_input(model: Model, img: jax.Array, input_scale: str | None) -> jax.Array:
    """``input_scale='unit'``: pixels in [0, 1] go through the model's own preprocessing; else as they are."""
    return preprocess(img * 255.0, model.preprocessing) if input_scale == "unit" else img


def _layer_fn(model: Model, layer: str, single_channel: bool, logits: bool):
    """``f(params, x, index) -> activation``: the model run only as far as ``layer``; with
    ``single_channel`` only channel ``index`` (a model may then compute just that one filter)."""

    def fn(params, x, index):
        out = model.run(params, x, taps=(layer,), output=False, logits=logits,
                        channel=(layer, index) if single_channel else None)
        return out.taps[layer]

    return fn


@functools.lru_cache(maxsize=32)
def _compiled(model: Model, layer: str, recipe: Recipe, shape: tuple[int, int, int], single_channel: bool,
              unroll: bool, logits: bool):
    """One jitted function: a chunk of filter indices + keys -> final params, objective history, dead flags."""
    act_fn = _layer_fn(model, layer, single_channel, logits)

    def objective_of(params, p, key, index, transformed):
        img = recipe.param.to_image(p)
        if transformed and recipe.transform is not None:
            img = recipe.transform(key, img)
        x = model_input(model, img, recipe.input_scale)[None].astype(recipe.dtype)  # layers follow x's dtype
        obj = recipe.objective(act_fn(params, x, index).astype(jnp.float32), index)
        pen = recipe.penalty(img) * recipe.penalty_weight if recipe.penalty is not None else 0.0
        return obj, pen

    def one(params, key, index):
        c = shape[-1]
        sizes = recipe.sizes()
        p = recipe.param.init(jax.random.fold_in(key, 0), (sizes[0], sizes[0], c))
        alive, hists = jnp.array(False), []

        def loss(p, k):
            obj, pen = objective_of(params, p, k, index, True)
            return -obj + pen, obj

        for o, size in enumerate(sizes):  # octaves: static sizes, one scan each, all in this one jit
            if o:
                p = recipe.param.resize(p, (size, size, c))
            opt_state = recipe.optimizer.init(p)

            def step(carry, i, o=o):
                p, opt_state, alive = carry
                k = jax.random.fold_in(key, o * recipe.steps + i + 1)
                (_, obj), g = jax.value_and_grad(loss, has_aux=True)(p, k)
                alive = alive | jnp.any(g != 0)
                updates, opt_state = recipe.optimizer.update(g, opt_state, p)
                return (optax.apply_updates(p, updates), opt_state, alive), obj

            (p, _, alive), hist = jax.lax.scan(step, (p, opt_state, alive), jnp.arange(recipe.steps),
                                               unroll=recipe.steps if unroll else 1)
            hists.append(hist)
        final, _ = objective_of(params, p, key, index, False)
        return recipe.param.to_image(p), jnp.append(jnp.concatenate(hists), final), ~alive

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


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
) -> Patterns:
    """Gradient-ascent patterns for ``filters`` of ``layer``.

    Each filter ``f`` gets its own start from ``jax.random.fold_in(key, f)``, so results do not depend
    on ``batch_size`` (filters per compiled call; the last chunk is padded so shapes never change).
    ``unroll=True`` unrolls the step loop inside the jit (on XLA:CPU a rolled loop of conv steps is
    several times slower); the default unrolls up to 64 steps and keeps longer runs (lucid's 256)
    rolled to bound compile time. ``single_channel`` computes only the target filter of a conv layer.
    ``devices`` (default: all of ``jax.devices()``): each chunk's filters are split evenly over them
    (:mod:`jaxviz.methods.sharding`; the chunk is rounded up to a multiple of the device count); the
    patterns equal the single-device ones.
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    key = jax.random.key(0) if key is None else key
    layer = model.resolve(layer)
    if recipe.octaves < 1 or recipe.dtype not in ("float32", "bfloat16"):
        raise JaxvizError(f"octaves must be >= 1 and dtype float32 or bfloat16; got {recipe.octaves}, {recipe.dtype!r}")
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
    border = getattr(recipe.objective, "border", 0)
    if border and len(out) == 3 and min(out[:2]) <= 2 * border:
        raise JaxvizError(f"at size {first} the output of {layer} is {out[0]}x{out[1]}, too small for an "
                          f"objective that drops a {border}-pixel border; use a larger --size")
    recipe.deprocess(np.zeros(shape, np.float32))  # a size the deprocessing cannot take fails now, not after
    unroll = recipe.steps <= 64 if unroll is None else unroll
    fn = _compiled(model, layer, recipe, shape, single_channel, unroll, logits=kind == "dense")
    mesh = batch_mesh(devices)
    b = chunk_size(len(filters), batch_size, mesh)
    params = replicate(mesh, params)
    imgs, hists, deads = [], [], []
    for start in range(0, len(filters), b):
        chunk = filters[start:start + b]
        idx = pad_to(chunk, b)
        keys = jax.vmap(lambda f: jax.random.fold_in(key, f))(jnp.asarray(idx))
        img, hist, dead = fn(params, *shard_batch(mesh, keys, jnp.asarray(idx)))
        imgs.append(gather(img)[: len(chunk)])
        hists.append(gather(hist)[: len(chunk)])
        deads.append(gather(dead)[: len(chunk)])
        if on_chunk:
            on_chunk(len(chunk))
    raw = np.concatenate(imgs).astype(np.float32)
    hist = np.concatenate(hists).astype(np.float32)
    images = np.stack([recipe.deprocess(r) for r in raw])
    return Patterns(raw, images, filters, hist[:, -1], hist, np.concatenate(deads))
