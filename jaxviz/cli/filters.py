"""`jaxviz filters`: the subcommand and its parser."""

from __future__ import annotations

import time

from jaxviz.errors import JaxvizError
from jaxviz.cli.common import add_model_args, load, register


def cmd_filters(args) -> None:
    import jax
    from tqdm import tqdm

    from jaxviz.methods.features import get_recipe
    from jaxviz.io import output_dir
    from jaxviz.viz.writers import write_filters

    loaded = load(args, default_model="vgg16_notop")
    model = loaded.model
    recipe = get_recipe(args.recipe, size=args.size, steps=args.steps, octaves=args.octaves,
                        octave_scale=args.octave_scale, dtype=args.dtype)
    if "all" in args.layer:  # every conv layer, in order (the full atlas)
        args.layer = [n for l in args.layer for n in (model.names_of_kind("conv") if l == "all" else [l])]
    for layer in args.layer:
        model.index(layer)
    if args.batch_size is not None and args.batch_size < 1:
        raise JaxvizError(f"--batch-size must be at least 1, got {args.batch_size}")
    plans = []
    for layer in args.layer:
        n_out = model.until(layer).shapes((recipe.size, recipe.size, model.input_shape[-1]))[-1][1][-1]
        if args.filters:
            idx = _parse_filters(args.filters)
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
        plans.append((layer, idx))
    t0 = time.perf_counter()
    total = sum(len(i) for _, i in plans)
    with output_dir(args.out) as stage, tqdm(total=total, unit="pattern", disable=None) as bar:
        for layer, idx in plans:
            bar.set_description(layer)
            files, _ = write_filters(stage, model, loaded.params, layer, idx, recipe, jax.random.key(args.seed),
                                     args.batch_size, on_chunk=bar.update)
            tqdm.write(files[0].caption)
    dt = time.perf_counter() - t0
    print(f"{total} patterns in {dt:.1f} s ({total / dt:.2f} patterns/s), recipe {args.recipe}, "
          f"{len(jax.devices())} {jax.devices()[0].platform} device(s)")


def _parse_filters(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise JaxvizError(f"--filters takes comma-separated integers like 0,5,9; got {text!r}") from None


@register("filters", "filter patterns by gradient ascent, all filters of a layer in one compiled call",
           "jaxviz filters --weights ckpt/vgg16 --layer block1_conv1 --layer block3_conv1 --count 64 "
           "--recipe dlwp1 --out out/filters\n"
           "  jaxviz filters --weights fashion.h5 --layer conv2d_1 --filters 0,5,9 --recipe dlwp2 --size 60 --out out/f\n"
           "  jaxviz filters --weights ckpt/vgg16 --layer all --count all --batch-size 64 --out atlas   # all 4,224")
def _setup_filters(p):
    add_model_args(p)
    p.add_argument("--layer", "-l", action="append", required=True,
                   help="layer name (repeatable), or 'all' for every conv layer")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--count", help="first N filters, or 'all' (default: 64, or all of a smaller layer)")
    g.add_argument("--filters", help="comma-separated filter indices, e.g. 0,5,9")
    p.add_argument("--recipe", default="dlwp1", help="dlwp1 (seed 001), dlwp2 (seed 002) or lucid (default dlwp1)")
    p.add_argument("--size", type=int, help="image size (default: the recipe's: dlwp1 64, dlwp2 200, lucid 128)")
    p.add_argument("--steps", type=int, help="ascent steps (default: the recipe's: 40, 30, 256)")
    p.add_argument("--octaves", type=int, help="multi-scale ascent: N sizes growing by --octave-scale (default 1)")
    p.add_argument("--octave-scale", type=float, help="size ratio between octaves (default 1.4)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="the network's compute type (default float32)")
    p.add_argument("--batch-size", type=int, help="filters per compiled call, split over all devices "
                                                  "(bounds memory; default all)")
    p.add_argument("--out", "-o", required=True, help="output directory: <layer>.png and <layer>.npz per layer")
    p.set_defaults(func=cmd_filters)

