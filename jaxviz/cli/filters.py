"""`jaxviz filters`: the subcommand and its parser."""

from __future__ import annotations

import sys
import time

from jaxviz.errors import JaxvizError
from jaxviz.cli.common import MAX_SIDE, add_model_args, at_least, conv_layers, register, within
from jaxviz.cli.common import load, say_preprocessing, say_untrained


# The numeric options' bounds, inclusive (--size and --per-filter are checked on their own).
BOUNDS = {
    "--steps": (1, 100_000),
    "--octaves": (1, 16),
    "--octave-scale": (1, 8),  # octaves grow: 1 repeats a size, below 1 would shrink
    "--batch-size": (1, 65_536),
    "--diversity": (0, 10_000),
}


def _bounds(flag: str) -> str:
    return "{}..{}".format(*BOUNDS[flag])


def cmd_filters(args) -> None:
    import jax
    from jaxviz.cli.progress import Progress

    from jaxviz.methods.features import get_recipe
    from jaxviz.methods.featurevis.recipes import PRESETS, SUITED, suited_recipe
    from jaxviz.io import output_dir
    from jaxviz.nn.policy import cam_layer
    from jaxviz.viz.writers import write_filters

    within("--size", args.size, 1, MAX_SIDE)
    within("--per-filter", args.per_filter, 1, 64)
    for flag, (low, high) in BOUNDS.items():
        at_least(flag, getattr(args, flag[2:].replace("-", "_")), low, high)
    if args.diversity and (args.per_filter or 1) < 2:
        raise JaxvizError("--diversity pushes apart the patterns of one filter; add --per-filter 2 or more")
    picked = parse_filters(args.filters) if args.filters is not None else None
    with output_dir(args.out) as stage:  # an unusable --out fails before any work
        options = dict(size=args.size, steps=args.steps, octaves=args.octaves, octave_scale=args.octave_scale,
                       dtype=args.dtype, per_filter=args.per_filter, diversity=args.diversity)
        if args.recipe is not None:
            get_recipe(args.recipe)  # an unknown name fails before the model is loaded
        side = args.size or PRESETS[args.recipe or SUITED].recipe.size  # your own model's size, if it has none
        loaded = load(args, "vgg16_notop", input_hw=(side, side))
        model = loaded.model
        if not args.layer:  # default: the map the head reads (as Grad-CAM's default layer)
            args.layer = [cam_layer(model)]
        if "all" in args.layer:  # every conv layer, in order (the full atlas)
            args.layer = [n for l in args.layer for n in (conv_layers(model) if l == "all" else [l])]
        for layer in args.layer:
            model.resolve(layer)
        if args.recipe is None:  # the recipe that suits the model; the seeds' are one flag away
            args.recipe, recipe = suited_recipe(model, args.layer, **options)
            why = ("the default: pixels through the model's preprocessing; --recipe dlwp1 or dlwp2 for the seeds' exact "
                   "algorithms") if args.recipe == SUITED else (f"the default for a model that takes only its own "
                                                                f"size: {SUITED}'s padded, jittered images do not fit it")
            print(f"recipe: {args.recipe} at {recipe.size}x{recipe.size}, {recipe.steps} steps ({why})", file=sys.stderr)
        else:
            recipe = get_recipe(args.recipe, **options)
        _say_preprocessing(args, model, recipe)
        say_untrained(loaded)
        plans = [(layer, _indices(args, model, layer, recipe.size, picked)) for layer in args.layer]
        t0 = time.perf_counter()
        total = sum(len(i) for _, i in plans) * recipe.per_filter  # patterns, not filters
        with Progress("jaxviz filters", total=total, unit="pattern") as bar:
            for layer, idx in plans:
                bar.start(layer)
                files, res = write_filters(stage, model, loaded.params, layer, idx, recipe, jax.random.key(args.seed),
                                           args.batch_size, on_chunk=lambda n: bar.advance(n * recipe.per_filter),
                                           quality=not args.no_quality, trained=loaded.trained)
                print(files[0].caption, flush=True)
                dead = [int(f) for f, d in zip(res.filters, res.dead) if d]
                if dead:  # the caption says so on stdout; a warning belongs on stderr too
                    shown = ", ".join(map(str, dead[:10])) + (", ..." if len(dead) > 10 else "")
                    print(f"jaxviz filters: warning: {layer}: {len(dead)} of {len(idx)} filters dead (zero gradient "
                          f"at every step, pattern is the random start): {shown}", file=sys.stderr)
    dt = time.perf_counter() - t0
    print(f"{total} patterns in {dt:.1f} s ({total / dt:.2f} patterns/s), recipe {args.recipe}, "
          f"{len(jax.devices())} {jax.devices()[0].platform} device(s)")


def _say_preprocessing(args, model, recipe) -> None:
    # only 'unit' recipes (lucid) go through the model's preprocessing; dlwp1/dlwp2 ascend in model-input space
    if recipe.input_scale == "unit":
        say_preprocessing(args, model)
    else:
        print(f"preprocessing: not applied (recipe {args.recipe} ascends in {model.name}'s input space, as the "
              "seeds do)", file=sys.stderr)
        if args.preprocessing:
            print(f"jaxviz filters: warning: --preprocessing {args.preprocessing} has no effect with recipe "
                  f"{args.recipe}; it applies to the lucid recipe", file=sys.stderr)


def _indices(args, model, layer: str, size: int, picked: list[int] | None) -> list[int]:
    """The filter indices of ``layer`` asked for by --filters / --count, checked against its width."""
    from jaxviz.nn.protocol import layer_shape

    n_out = layer_shape(model, layer, (size, size, model.input_shape[-1]))[-1]
    if picked is not None:
        idx = picked
    elif args.count == "all":
        idx = list(range(n_out))
    elif args.count is None:
        idx = list(range(min(64, n_out)))  # the seeds' 8x8 grid, or all filters of a smaller layer
    else:
        try:
            count = int(args.count)
        except ValueError:
            raise JaxvizError(f"--count takes a number or 'all', got {args.count!r}") from None
        if not 1 <= count <= n_out:
            raise JaxvizError(f"--count {count} out of range for {layer}: it has {n_out} filters (1..{n_out})")
        idx = list(range(count))
    bad = [i for i in idx if not 0 <= i < n_out]
    if bad:
        raise JaxvizError(f"filter index {bad[0]} out of range for {layer} of {model.name}: valid 0..{n_out - 1}")
    return idx


def parse_filters(text: str) -> list[int]:
    """``"0,5,9"`` -> ``[0, 5, 9]``; an empty item (``1,,2``), a non-integer or a repeated index is an error."""
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise JaxvizError(f"--filters takes comma-separated integers like 0,5,9 with no empty items; got {text!r}")
    try:
        idx = [int(v) for v in items]
    except ValueError:
        raise JaxvizError(f"--filters takes comma-separated integers like 0,5,9; got {text!r}") from None
    repeated = sorted({i for i in idx if idx.count(i) > 1})
    if repeated:
        raise JaxvizError(f"--filters lists filter {repeated[0]} more than once; got {text!r}")
    return idx


@register("filters", "filter patterns by gradient ascent, all filters of a layer in one compiled call",
           "jaxviz filters --layer block4b_expand_activation --count 16 --out out/filters   # Lite0, lucid\n"
           "  jaxviz filters --model fruits_cnn --layer conv2d_1 --filters 0,5,9 --recipe dlwp2 --size 60 --out out/f\n"
           "  jaxviz filters --model vgg16_notop --layer block1_conv1 --layer block3_conv1 --count 64 --recipe dlwp1 "
           "--out out/seed1   # seed 001; its VGG16: --weights\n"
           "  jaxviz filters --layer block4b_expand_activation --filters 5 --per-filter 4 --diversity 4 --out out/div")
def _setup_filters(p):
    add_model_args(p, input_size=False)  # --size is the pattern's size
    p.add_argument("--layer", "-l", action="append",
                   help="layer name (repeatable), or 'all' for every conv layer (default: the last conv layer)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--count", help="first N filters, or 'all' (default: 64, or all of a smaller layer)")
    g.add_argument("--filters", help="comma-separated filter indices, e.g. 0,5,9")
    from jaxviz.methods.featurevis.recipes import PRESETS, SUITED

    recipes = PRESETS.items()
    p.add_argument("--recipe", help="; ".join(f"{n}: {r.description}" for n, r in recipes)
                   + f" (default {SUITED}, at the model's input size when below {PRESETS[SUITED].recipe.size}: it "
                     "suits every model; dlwp1 and dlwp2 are the seeds' exact algorithms)")
    p.add_argument("--size", type=int, help=f"image size, 1..{MAX_SIDE} (default: the recipe's: "
                   + ", ".join(f"{n} {r.recipe.size}" for n, r in recipes) + ")")
    p.add_argument("--steps", type=int, help=f"ascent steps, {_bounds('--steps')} (default: the recipe's: "
                   + ", ".join(f"{n} {r.recipe.steps}" for n, r in recipes) + ")")
    p.add_argument("--octaves", type=int, help=f"multi-scale ascent: N sizes growing by --octave-scale, "
                                              f"{_bounds('--octaves')} (default 1)")
    p.add_argument("--octave-scale", type=float, help=f"size ratio between octaves, {_bounds('--octave-scale')} "
                                                       "(default 1.4)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="the network's compute type (default float32)")
    p.add_argument("--per-filter", type=int, help="patterns per filter, optimised together, 1..64 (default 1); "
                                                  "one row per filter in the grid")
    p.add_argument("--diversity", type=float, help="weight of the term that makes a filter's patterns differ "
                                                   "(lucid's diversity, relative to the objective; 4 is a good start; "
                                                   f"needs --per-filter 2 or more; {_bounds('--diversity')}, default 0)")
    p.add_argument("--batch-size", type=int, help="filters per compiled call, split over all devices, "
                                                  f"{_bounds('--batch-size')} (bounds memory; default: all on "
                                                  "accelerators, 1 per call on CPUs)")
    p.add_argument("--no-quality", action="store_true",
                   help="skip the quality measures printed per layer and stored in the npz (patterns vs the best of "
                        "55 photo crops, robustness to jitter and zoom, high-frequency energy, own-unit selectivity)")
    p.add_argument("--out", "-o", required=True, help="output directory: <layer>.png and <layer>.npz per layer")
    p.set_defaults(func=cmd_filters)
