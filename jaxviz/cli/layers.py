"""`jaxviz layers`: the subcommand and its parser."""

from __future__ import annotations

import numpy as np

from jaxviz.errors import JaxvizError, show
from jaxviz.cli.common import parse_size, register, weights_help


def cmd_layers(args) -> None:
    from jaxviz.nn import MODELS, get_model

    if args.list:
        for name in MODELS:
            m = get_model(name)
            print(f"{name:18s} input {'x'.join(map(str, m.input_shape)):12s} {m.param_count():>12,d} params  "
                  f"preprocessing {m.preprocessing}")
        return
    if args.name is not None and args.weights is None and args.name.lower().endswith(".onnx"):
        args.name, args.weights = None, args.name  # `jaxviz layers model.onnx`: the file holds its architecture
    if args.name is None and args.weights is None:
        raise JaxvizError("give a model name, e.g. `jaxviz layers vgg16` (or --list)")
    if args.weights is not None:
        from jaxviz.io import load_model

        loaded = load_model(args.name, args.weights)
        model = loaded.model
    else:
        model, loaded = get_model(args.name), None
    shape = parse_size(args.input) + tuple(model.input_shape[2:]) if args.input else None
    if loaded is not None and shape is None:  # any model of the protocol: the weights each layer reads
        pshapes = {n: {k: a.shape for k, a in model.layer_params(loaded.params, n).items()} for n in model.layer_names}
    else:
        pshapes = model.param_shapes(shape)
    print(f"{show(model.name)}  input {'x'.join(map(str, shape or model.input_shape))}  preprocessing "
          f"{model.preprocessing}")
    w = max([22] + [len(show(n, 60)) + 1 for n in model.layer_names])
    print(f"{'layer':{w}s} {'output shape':18s} {'params':>12s}")
    total = 0
    wired, blocks = dict(getattr(model, "wiring", ())), {layer: alias for alias, layer in model.aliases}
    for name, out in model.shapes(shape):
        n = sum(int(np.prod(s)) for s in pshapes.get(name, {}).values())
        total += n
        extra = (f"  <- {', '.join(show(s, 60) for s in wired[name])}" if name in wired else "") + \
                (f"  = {show(blocks[name], 60)}" if name in blocks else "")  # residual inputs; a block's output
        print(f"{show(name, 60):{w}s} {str(out):18s} {n:>12,d}{extra}")
    print(f"{'total':{w}s} {'':18s} {total:>12,d}")


@register("layers", "print every layer: name, output shape, parameter count, total",
           "jaxviz layers vgg16\n  jaxviz layers vgg16_notop --input 150x150\n  jaxviz layers --list")
def _setup_layers(p):
    p.add_argument("name", nargs="?", help="architecture name")
    p.add_argument("--weights", "-w", help=weights_help() + "; the architecture is read from a checkpoint or file")
    p.add_argument("--input", metavar="HxW", help="input size, e.g. 150x150 (default: the model's)")
    p.add_argument("--list", action="store_true", help="list the registered architectures")
    p.set_defaults(func=cmd_layers)

