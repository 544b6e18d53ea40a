"""`jaxviz predict`: the subcommand and its parser."""

from __future__ import annotations

import json

import numpy as np

from jaxviz.nn.finite import finite_entries
from jaxviz.errors import JaxvizError, show
from jaxviz.cli.common import (MAX_TOP, add_model_args, at_least, batch, input_shape, load, register,
                               say_preprocessing, say_untrained)
from jaxviz.nn.jit import jit

def cmd_predict(args) -> None:
    import jax

    from jaxviz.io.labels import class_probabilities, decode_predictions

    at_least("--top", args.top, 1, MAX_TOP)
    loaded = load(args, "vgg16")
    model = loaded.model
    shape = input_shape(args, model)
    from jaxviz.nn.protocol import output_shape

    if len(output_shape(model, shape)) != 1:
        raise JaxvizError(f"{model.name} has no classifier on top (its output is {output_shape(model, shape)}); "
                          "predict needs class scores")
    say_preprocessing(args, model)
    x = batch(model, args.images, shape)
    probs = np.asarray(jit(lambda params, x: model.run(params, x).output)(loaded.params, x))
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

