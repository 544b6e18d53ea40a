"""The ``jaxviz`` command line: parse arguments, call the library, write files. No logic lives only here."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import numpy as np

from jaxviz.errors import JaxvizError

EPILOG_COMMON = "Errors print one line and exit with status 2; --debug shows the traceback."


def _add_model_args(p: argparse.ArgumentParser, *, model_required: bool = False) -> None:
    p.add_argument("--model", "-m", required=model_required, help="architecture name (see `jaxviz layers --list`)")
    p.add_argument(
        "--weights", "-w",
        help="jaxviz checkpoint directory or Keras file (.h5/.keras/.weights.h5); omitted = UNTRAINED random weights",
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for random init and random starts (default 0)")


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # SUPPRESS on the subcommands, so `jaxviz --debug CMD` and `jaxviz CMD --debug` both work
    p.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="show full tracebacks")


def _say_weights(loaded) -> None:
    if not loaded.trained:
        print(f"WARNING: {loaded.model.name} has UNTRAINED weights ({loaded.source}); "
              "pictures show the architecture, not learned features.", file=sys.stderr)
    else:
        print(f"{loaded.model.name}: weights from {loaded.source}", file=sys.stderr)


def _load(args, default_model: str | None = None):
    from jaxviz.io import load_model

    model = args.model
    if model is None and args.weights is None:
        model = default_model
    loaded = load_model(model, args.weights, seed=args.seed)
    _say_weights(loaded)
    return loaded


def _batch(model, images: list[str], interpolation: str = "nearest") -> np.ndarray:
    from jaxviz.images import load_image
    from jaxviz.preprocess import preprocess

    h, w, c = model.input_shape
    pixels = np.stack([load_image(src, (h, w), interpolation=interpolation, channels=c) for src in images])
    return preprocess(pixels.astype(np.float32), model.preprocessing)


# --------------------------------------------------------------------------------------------
# Subcommands


def cmd_layers(args) -> None:
    from jaxviz.models import MODELS, get_model

    if args.list:
        for name in MODELS:
            m = get_model(name)
            print(f"{name:18s} input {'x'.join(map(str, m.input_shape)):12s} {m.param_count():>12,d} params  "
                  f"preprocessing {m.preprocessing}")
        return
    if args.name is None and args.weights is None:
        raise JaxvizError("give a model name, e.g. `jaxviz layers vgg16` (or --list)")
    if args.weights is not None:
        from jaxviz.io import load_model

        model = load_model(args.name, args.weights).model
    else:
        model = get_model(args.name)
    shape = tuple(int(v) for v in args.input.split("x")) + model.input_shape[2:] if args.input else None
    if shape is not None and len(shape) == 2:
        shape = shape + (model.input_shape[-1],)
    pshapes = model.param_shapes(shape)
    print(f"{model.name}  input {'x'.join(map(str, shape or model.input_shape))}  preprocessing {model.preprocessing}")
    w = max([22] + [len(n) + 1 for n in model.layer_names])
    print(f"{'layer':{w}s} {'output shape':18s} {'params':>12s}")
    total = 0
    wired, blocks = dict(model.wiring), {layer: alias for alias, layer in model.aliases}
    for name, out in model.shapes(shape):
        n = sum(int(np.prod(s)) for s in pshapes.get(name, {}).values())
        total += n
        extra = (f"  <- {', '.join(wired[name])}" if name in wired else "") + \
                (f"  = {blocks[name]}" if name in blocks else "")  # residual inputs; a block's output
        print(f"{name:{w}s} {str(out):18s} {n:>12,d}{extra}")
    print(f"{'total':{w}s} {'':18s} {total:>12,d}")


def cmd_predict(args) -> None:
    import jax

    from jaxviz.labels import class_probabilities, decode_predictions

    loaded = _load(args, default_model="vgg16")
    model = loaded.model
    if model.labels is None:
        raise JaxvizError(f"{model.name} has no classifier on top; use a model with predictions (e.g. vgg16)")
    x = _batch(model, args.images)
    probs = np.asarray(jax.jit(model.__call__)(loaded.params, x))
    top = decode_predictions(probs, top=args.top, labels=model.labels)
    if args.json:
        out = [
            {"image": src, "probs": class_probabilities(probs)[i].tolist(),
             "top": [{"id": a, "name": b, "prob": p} for a, b, p in top[i]]}
            for i, src in enumerate(args.images)
        ]
        print(json.dumps(out, indent=1))
        return
    for src, t in zip(args.images, top):
        print(f"{src}: Predicted: {[(a, b, round(p, 8)) for a, b, p in t]}")


def cmd_activations(args) -> None:
    from jaxviz.activations import default_layers
    from jaxviz.io import output_dir
    from jaxviz.writers import write_activations

    loaded = _load(args, default_model="cats_dogs_small")
    model = loaded.model
    layers = args.layers or default_layers(model)
    x = _batch(model, [args.image])
    with output_dir(args.out) as stage:
        _, summary = write_activations(stage, model, loaded.params, x, layers, args.per_row)
    print(f"{'layer':20s} {'shape':18s} {'dead channels':>14s}")
    for row in summary:
        print(f"{row['layer']:20s} {str(row['shape']):18s} {row['dead']:>6d} / {row['channels']:<6d}")


def _parse_filters(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise JaxvizError(f"--filters takes comma-separated integers like 0,5,9; got {text!r}") from None


def cmd_filters(args) -> None:
    import jax
    from tqdm import tqdm

    from jaxviz.filters import get_recipe
    from jaxviz.io import output_dir
    from jaxviz.writers import write_filters

    loaded = _load(args, default_model="vgg16_notop")
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


def cmd_gradcam(args) -> None:
    import jax

    from jaxviz.cam import LAYER_METHODS, Settings, explain
    from jaxviz.images import expand_sources
    from jaxviz.io import output_dir
    from jaxviz.labels import decode_predictions
    from jaxviz.writers import write_cams

    loaded = _load(args, default_model="vgg16")
    model = loaded.model
    for name, v in (("--samples", args.samples), ("--steps", args.steps), ("--chunk", args.chunk)):
        if v < 1:
            raise JaxvizError(f"{name} must be at least 1, got {v}")
    if args.batch_size is not None and args.batch_size < 1:
        raise JaxvizError(f"--batch-size must be at least 1, got {args.batch_size}")
    args.image = expand_sources(args.image)
    x = _batch(model, args.image)
    cams = explain(model, loaded.params, x, args.cls, method=args.method, layer=args.layer, score=args.score,
                   key=jax.random.key(args.seed), batch_size=args.batch_size,
                   settings=Settings(samples=args.samples, noise=args.noise, steps=args.steps, chunk=args.chunk))
    if model.labels is not None:
        for src, top in zip(args.image, decode_predictions(cams.probs, top=3, labels=model.labels)):
            print(f"{src}: Predicted: {[(a, b, round(p, 8)) for a, b, p in top]}")
    where = f"layer {args.layer or model.last_conv}" if args.method in LAYER_METHODS else "input"
    with output_dir(args.out) as stage:
        write_cams(stage, args.image, cams, args.method, where)


def cmd_weights(args) -> None:
    import jax

    from jaxviz.io import output_dir
    from jaxviz.weights import STAT_NAMES
    from jaxviz.writers import write_weights

    loaded = _load(args, default_model="fashion_cnn")
    model = loaded.model
    layers = args.layer or [model.names_of_kind("conv")[0]]
    untrained = model.init(jax.random.key(args.seed)) if args.compare_untrained else None
    with output_dir(args.out) as stage:
        _, rows = write_weights(stage, model, loaded.params, layers, loaded.trained, untrained, args.in_channel,
                                args.bins)
    print(f"{'layer':16s} {'weights':24s} " + " ".join(f"{n:>10s}" for n in STAT_NAMES))
    for layer, k, st in rows:
        print(f"{layer:16s} {k:24s} " + " ".join(f"{v:10.4f}" for v in st))


def cmd_demo(args) -> None:
    from tqdm import tqdm

    from jaxviz.demo import write_demo

    with tqdm(total=3, unit="part", disable=None) as bar:
        def step(name):
            if bar.n or name != "digits_cnn":
                bar.update()
            bar.set_description(name)

        index, n = write_demo(args.out, args.weights, args.quick, args.seed, progress=step)
        bar.update(bar.total - bar.n)
    print(f"{n} figures; open {index}")


# --------------------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def _register(name: str, help_: str, example: str):
    def deco(setup: Callable):
        COMMANDS[name] = (help_, setup, example)
        return setup

    return deco


@_register("layers", "print every layer: name, output shape, parameter count, total",
           "jaxviz layers vgg16\n  jaxviz layers vgg16_notop --input 150x150\n  jaxviz layers --list")
def _setup_layers(p):
    p.add_argument("name", nargs="?", help="architecture name")
    p.add_argument("--weights", "-w", help="checkpoint or Keras file (architecture read from it)")
    p.add_argument("--input", help="input size HxW (default: the model's)")
    p.add_argument("--list", action="store_true", help="list the registered architectures")
    p.set_defaults(func=cmd_layers)


@_register("predict", "decoded top-k predictions per image",
           "jaxviz predict --weights vgg16.h5 sample:chelsea photo.jpg --top 3\n"
           "  jaxviz predict --weights ckpt/ sample:coffee --json")
def _setup_predict(p):
    _add_model_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image path or sample:NAME (e.g. sample:chelsea)")
    p.add_argument("--top", type=int, default=5, help="how many classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON with probs and top")
    p.set_defaults(func=cmd_predict)


@_register("activations", "every channel of every conv/pool layer for one image, tiled per layer",
           "jaxviz activations --model cats_dogs_small --image sample:chelsea --out out/acts\n"
           "  jaxviz activations --weights fashion.h5 --image shirt.png --out out/f --layers conv2d conv2d_1 --per-row 8")
def _setup_activations(p):
    _add_model_args(p)
    p.add_argument("--image", "-i", required=True, help="image path or sample:NAME")
    p.add_argument("--out", "-o", required=True, help="output directory (one PNG per layer + activations.npz)")
    p.add_argument("--layers", nargs="+", metavar="L", help="layer names (default: every conv and pool layer)")
    p.add_argument("--per-row", type=int, default=16, help="channels per grid row (default 16)")
    p.set_defaults(func=cmd_activations)


@_register("filters", "filter patterns by gradient ascent, all filters of a layer in one compiled call",
           "jaxviz filters --weights ckpt/vgg16 --layer block1_conv1 --layer block3_conv1 --count 64 "
           "--recipe dlwp1 --out out/filters\n"
           "  jaxviz filters --weights fashion.h5 --layer conv2d_1 --filters 0,5,9 --recipe dlwp2 --size 60 --out out/f\n"
           "  jaxviz filters --weights ckpt/vgg16 --layer all --count all --batch-size 64 --out atlas   # all 4,224")
def _setup_filters(p):
    _add_model_args(p)
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


@_register("gradcam", "Grad-CAM (and Grad-CAM++, Score-CAM, saliency, SmoothGrad, IG, guided backprop) heatmaps "
                      "superimposed on the photos",
           "jaxviz gradcam --weights ckpt/vgg16 --image elephant.jpg --class 386 --out out/cam\n"
           "  jaxviz gradcam --weights fashion.h5 --image a.png --image b.png --layer conv2d_1 --out out/cam\n"
           "  jaxviz gradcam --weights builtin:digits_cnn --image 7.png --method smoothgrad --seed 1 --out out/sg")
def _setup_gradcam(p):
    _add_model_args(p)
    p.add_argument("--image", "-i", action="append", required=True,
                   help="image path, a folder of images, or sample:NAME (repeatable)")
    p.add_argument("--batch-size", type=int, help="images per compiled call, split over all devices (default all)")
    p.add_argument("--class", dest="cls", type=int, help="class index (default: each image's top-1)")
    p.add_argument("--layer", "-l", help="conv layer (default: the last conv layer)")
    from jaxviz.cam import METHODS

    p.add_argument("--method", default="gradcam", choices=METHODS,
                   help="gradcam, gradcam++, scorecam: maps at the layer's resolution; saliency, smoothgrad, ig "
                        "(integrated gradients), guided (guided backprop): maps at the input's (default gradcam)")
    p.add_argument("--samples", type=int, default=25, help="smoothgrad: noisy copies (default 25)")
    p.add_argument("--noise", type=float, default=0.15, help="smoothgrad: noise sigma / value range (default 0.15)")
    p.add_argument("--steps", type=int, default=32, help="ig: integration steps (default 32)")
    p.add_argument("--chunk", type=int, default=64, help="scorecam: masked images per forward pass (default 64)")
    p.add_argument("--score", default="logit", choices=["logit", "probability"],
                   help="logit = pre-softmax (the paper, default); probability = post-softmax (the seeds)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.set_defaults(func=cmd_gradcam)


@_register("weights", "weight histograms, kernel mosaics and statistics of layers, trained vs untrained",
           "jaxviz weights --weights builtin:fashion_cnn --layer conv2d --compare-untrained --out out/w\n"
           "  jaxviz weights --model vgg16_notop --weights vgg16.h5 --layer block1_conv1 --out out/w")
def _setup_weights(p):
    _add_model_args(p)
    p.add_argument("--layer", "-l", action="append", help="layer name (repeatable; default: the first conv layer)")
    p.add_argument("--compare-untrained", action="store_true",
                   help="also show a freshly initialised copy (glorot-uniform, --seed), side by side")
    p.add_argument("--in-channel", help="input channel of the kernel mosaic: an index, or rgb for 3-channel colour "
                                        "tiles (default: rgb when the layer has 3 input channels, else 0)")
    p.add_argument("--bins", type=int, default=10, help="histogram bins (default 10, as plt.hist)")
    p.add_argument("--out", "-o", required=True,
                   help="output directory: <layer>_hist.png, <layer>_kernels[_untrained].png, weights.npz")
    p.set_defaults(func=cmd_weights)


@_register("demo", "every visualisation on embedded defaults, gathered in one index.html",
           "jaxviz demo --out gallery\n  jaxviz demo --weights vgg16_ckpt/ --out gallery\n  jaxviz demo --quick --out /tmp/g")
def _setup_demo(p):
    p.add_argument("--out", "-o", default="jaxviz-gallery", help="output directory (default jaxviz-gallery)")
    p.add_argument("--weights", "-w", help="VGG16 weights (checkpoint or Keras file); omitted = UNTRAINED VGG16, "
                                           "labelled so in the gallery")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--quick", action="store_true", help="fewer filters, steps and methods (about a minute)")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxviz",
        description="What convnets learn: activations, filter patterns, Grad-CAM and weights, in JAX.",
        epilog=EPILOG_COMMON,
    )
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, setup, example) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_, description=help_, epilog=f"example:\n  {example}\n\n{EPILOG_COMMON}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_common(p)
        setup(p)
    return parser


def run_guarded(func: Callable[[], object], debug: bool, prog: str) -> int:
    """Run ``func``; a :class:`JaxvizError` becomes one line on stderr and exit status 2."""
    try:
        func()
        return 0
    except JaxvizError as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    t0 = time.perf_counter()
    import warnings

    # library warnings (an all-zero heatmap, ...) as one line each, like the errors
    warnings.showwarning = lambda msg, *a, **k: print(f"jaxviz {args.command}: warning: {msg}", file=sys.stderr)

    def run():
        args.func(args)
        if getattr(args, "out", None):
            print(f"done in {time.perf_counter() - t0:.1f} s; files in {os.path.abspath(args.out)}")

    return run_guarded(run, args.debug, f"jaxviz {args.command}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
