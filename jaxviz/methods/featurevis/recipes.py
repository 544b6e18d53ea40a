"""Recipes: a :class:`Recipe` bundles the pieces of one gradient-ascent run; :data:`PRESETS` holds the
named ones, each a :class:`Preset` that carries its own adjustments (how it takes ``crop``, which
fields follow a new ``size``), so :func:`get_recipe` knows no recipe by name. Adding a recipe is one
entry of :data:`PRESETS`.

Presets: ``dlwp1`` (seed 001), ``dlwp2`` (seed 002), both in the model's input space exactly as the
seeds, ``lucid`` (pixels in [0, 1] that always go through the model's own preprocessing) and
``lucid_class`` (class visualisation at the output layer). The seeds' gradient normalisations
(:func:`normalize_rms`, :func:`normalize_l2`) and deprocessings live here too: they are what makes a
preset the seed's.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.errors import JaxvizError, unknown
from jaxviz.methods.featurevis.objectives import Objective, channel, channel_interior, class_logit, class_logprob
from jaxviz.methods.featurevis.param import Param, fft_decorrelated, pixels, uniform_start
from jaxviz.methods.featurevis.transforms import CLASS_ZOOM, LUCID_ZOOM, Transform, lucid_transforms


def normalize_rms(eps: float = 1e-5) -> optax.GradientTransformation:
    """Listing 5.34: ``g / (sqrt(mean(g**2)) + eps)``."""
    return optax.stateless(lambda g, _: jax.tree_util.tree_map(lambda u: u / (jnp.sqrt(jnp.mean(u * u)) + eps), g))


def normalize_l2(eps: float = 1e-12) -> optax.GradientTransformation:
    """``tf.math.l2_normalize``: ``g * rsqrt(max(sum(g**2), eps))``."""
    return optax.stateless(
        lambda g, _: jax.tree_util.tree_map(lambda u: u * jax.lax.rsqrt(jnp.maximum(jnp.sum(u * u), eps)), g)
    )


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


class Preset(NamedTuple):
    """A named recipe with what it does with :func:`get_recipe`'s options.

    ``crop(n) -> fields``: the fields that cut ``n`` pixels per side (None: the preset takes no ``crop``);
    ``resized(size) -> fields``: the fields that follow a new ``size`` unless given (None: none do).
    ``description``: one line for help texts.
    """

    recipe: Recipe
    description: str
    crop: Callable[[int], dict] | None = None
    resized: Callable[[int], dict] | None = None


def _lucid_resized(zoom: tuple[float, ...]) -> Callable[[int], dict]:
    return lambda size: {"transform": lucid_transforms(size, zoom)}


PRESETS: dict[str, Preset] = {
    # seed 001, Listings 5.32-5.39 (the 8x8 grid calls generate_pattern(size=64); --size 150 for Figure 5.29)
    "dlwp1": Preset(Recipe(64, 40, pixels(lambda k, s: jax.random.uniform(k, s, jnp.float32) * 20 + 128), channel(),
                           optax.chain(normalize_rms(1e-5), optax.scale(-1.0)), deprocess_dlwp1),
                    "seed 001, in the model's input space"),
    # seed 002 (DLwP 2nd ed., ch. 9)
    "dlwp2": Preset(Recipe(200, 30, pixels(uniform_start(0.4, 0.6)), channel_interior(2),
                           optax.chain(normalize_l2(1e-12), optax.scale(-10.0)), deprocess_dlwp2),
                    "seed 002, in the model's input space, 25 px cropped per side",
                    crop=lambda n: {"deprocess": functools.partial(deprocess_dlwp2, crop=n)}),
    # lucid's render_vis: unitary FFT + decorrelated colour in [0, 1] through the model's preprocessing,
    # its standard transforms, Adam 0.05, no penalty. The unit is read before its activation (a ReLU6 at
    # its ceiling tied patterns: on Lite0's block2b, 15 of 16 won their own unit read after it, 16 of 16
    # before), so no unit's gradient is blocked at the target; with pre_activation=False the first 16
    # steps pass the gradient through a blocked activation instead (lucid's redirected ReLU)
    "lucid": Preset(Recipe(128, 256, fft_decorrelated(), channel(), optax.adam(0.05), deprocess_unit,
                           transform=lucid_transforms(128), input_scale="unit", passthrough=16, pre_activation=True),
                    "lucid's render_vis: pixels through the model's preprocessing (real networks)",
                    resized=_lucid_resized(LUCID_ZOOM)),
    # class visualisation (target: the output layer): the logit plus 5x the log-probability, so the other
    # classes go down too, and zooms of 1..1.75 (see CLASS_ZOOM)
    "lucid_class": Preset(Recipe(128, 256, fft_decorrelated(), class_logit() + 5 * class_logprob(), optax.adam(0.05),
                                 deprocess_unit, transform=lucid_transforms(128, CLASS_ZOOM), input_scale="unit"),
                          "lucid for the classes of the output layer",
                          resized=_lucid_resized(CLASS_ZOOM)),
}

RECIPES: dict[str, Recipe] = {name: p.recipe for name, p in PRESETS.items()}


def get_recipe(name: str, *, crop: int | None = None, **overrides) -> Recipe:
    """A named preset with fields replaced (``None`` keeps the preset's). ``crop`` (dlwp2 only): pixels
    cut from each side by seed 002's deprocessing instead of 25, e.g. ``crop=2`` for 28x28 patterns.
    For the ``lucid`` recipes, a new ``size`` rescales their transforms (unless ``transform`` is given)."""
    if name not in PRESETS:
        raise unknown("recipe", name, list(PRESETS))
    preset = PRESETS[name]
    if crop is not None:
        if preset.crop is None:
            takers = " and ".join(n for n, p in PRESETS.items() if p.crop is not None)
            raise JaxvizError(f"crop applies to the {takers} recipe only, not {name}")
        overrides.update(preset.crop(crop))
    if preset.resized is not None and overrides.get("size") and "transform" not in overrides:
        overrides.update(preset.resized(overrides["size"]))
    return preset.recipe._replace(**{k: v for k, v in overrides.items() if v is not None})


# The recipe a model gets when none is named. lucid's pixels in [0, 1] always go through the model's own
# preprocessing, so it suits every input space (caffe, [-1, 1], /255, a model that rescales inside); the
# seeds' recipes ascend in the input space of the network they were written for (dlwp1: VGG16's, dlwp2:
# Xception's) and on another one draw noise (Lite0's block4b: high-frequency energy 0.71 against lucid's
# 0.25, README), so they are picked by name.
SUITED = "lucid"


def suited_recipe(model, layers: "Sequence[str] | None" = None, **overrides) -> tuple[str, Recipe]:
    """The recipe that suits ``model`` (any model of the protocol) with :func:`get_recipe`'s ``overrides``:
    ``(name, recipe)``. It is :data:`SUITED`, at its own 128 pixels, or at the model's input side when that is
    smaller (a 28x28 network sees 28-pixel images; its transforms scale with the size), unless ``size`` is
    given. A model that takes only its own size up to ``layers`` (a Reshape to fixed sizes) cannot see
    lucid's padded, jittered images: it gets the seeds' ``dlwp1``, which feeds exactly ``size`` pixels."""
    side = min(int(s) for s in model.input_shape[:2])
    if overrides.get("size") is None:
        overrides["size"] = min(PRESETS[SUITED].recipe.size, side)
    recipe = get_recipe(SUITED, **overrides)
    size, channels = recipe.size, tuple(model.input_shape[2:])
    seen = jax.eval_shape(recipe.transform, jax.random.key(0),
                          jax.ShapeDtypeStruct((size, size) + channels, np.float32)).shape
    try:
        for layer in layers or [None]:
            model.shapes(seen, until=layer)
    except (JaxvizError, ValueError, TypeError):  # adapted models raise their own errors for a size they refuse
        return "dlwp1", get_recipe("dlwp1", **overrides)
    return SUITED, recipe
