"""The ascent: :func:`filter_patterns` runs one recipe for N units of a layer and returns
:class:`~.quality.Patterns`.

The ascent of a chunk of units is one ``jax.jit`` of a ``jax.vmap`` over unit indices, with the
network run only as far as it must (for a conv target and a one-channel objective, only that
filter's output channel; :mod:`.forward`); octaves and steps are ``lax.scan``s inside that one call.
Each pattern is then measured (:mod:`.quality`). Every model is reached through the model protocol
only (:meth:`jaxviz.nn.protocol.Model.run`).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.errors import JaxvizError, show
from jaxviz.methods.featurevis.forward import model_input, taps_runner
from jaxviz.methods.featurevis.objectives import DIVERSITY, LOGITS, as_objective, gram_similarity
from jaxviz.methods.featurevis.quality import Patterns, measure
from jaxviz.methods.featurevis.recipes import RECIPES, Recipe, get_recipe
from jaxviz.methods.sharding import batch_mesh, chunk_size, gather, pad_to, replicate, shard_batch
from jaxviz.nn.arguments import check_indices, check_layer, check_params
from jaxviz.nn.kinds import NO_CHANNELS
from jaxviz.nn.protocol import Model, layer_shape
from jaxviz.nn.jit import jit


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
    run = taps_runner(model, layer, obj, div_layer, single_channel and obj.own_channel and div_layer is None, logits)

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

    return jit(jax.vmap(one, in_axes=(None, 0, 0)))


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
    if not isinstance(recipe, (str, Recipe)):
        raise JaxvizError(f"recipe must be a recipe name or a Recipe, got {type(recipe).__name__} "
                          f"{show(repr(recipe), 40)}; recipes: {', '.join(RECIPES)}")
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    check_layer(model, layer)
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
    if recipe.transform is not None:  # the model sees the transformed image (lucid pads and crops): it must fit too
        for side in dict.fromkeys((first, shape[0])):
            seen = jax.eval_shape(recipe.transform, jax.random.key(0),
                                  jax.ShapeDtypeStruct((side, side) + tuple(shape[2:]), jnp.float32)).shape
            layer_shape(model, layer, seen)
    kind = model.kind(layer)
    if kind in NO_CHANNELS:
        raise JaxvizError(f"{layer} has no channels of its own; choose a conv, pool or dense layer")
    n_out = out[-1]
    if isinstance(filters, (str, bytes)) or not hasattr(filters, "__iter__"):
        raise JaxvizError(f"filters must be a list of unit indices, got {type(filters).__name__}")
    filters = list(filters)
    if not filters:
        raise JaxvizError("filters is empty: no filters requested")
    check_indices(filters, None, "filters")  # integers; the range is checked below against the layer
    check_params(model, params)
    filters = np.asarray(filters, np.int32)
    bad = filters[(filters < 0) | (filters >= n_out)]
    if bad.size:
        raise JaxvizError(f"filter index {int(bad[0])} out of range for {layer} of {model.name}: valid 0..{n_out - 1}")
    border = obj.border
    if border and len(out) == 3 and min(out[:2]) <= 2 * border:
        raise JaxvizError(f"at size {first} the output of {layer} is {out[0]}x{out[1]}, too small for an "
                          f"objective that drops a {border}-pixel border; use a larger size=")
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
