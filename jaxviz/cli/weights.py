"""`jaxviz weights`: the subcommand and its parser."""

from __future__ import annotations

from jaxviz.nn import policy
from jaxviz.errors import JaxvizError, show
from jaxviz.cli.common import add_model_args, conv_layers, input_shape, register, within
from jaxviz.cli.common import load, say_untrained

MAX_BINS = 10_000  # a histogram wider than a screen says nothing more, and 10**9 bins would exhaust memory


def cmd_weights(args) -> None:
    import jax

    from jaxviz.io import output_dir
    from jaxviz.methods.weights import STAT_NAMES
    from jaxviz.viz.writers import write_weights

    within("--bins", args.bins, 1, MAX_BINS)
    with output_dir(args.out) as stage:  # an unusable --out fails before any work
        loaded = load(args, "fashion_cnn")
        model = loaded.model
        shape = input_shape(args, model)
        layers = args.layer or conv_layers(model)[:1]
        if not layers:
            raise JaxvizError(f"{model.name} has no conv layer; name a layer with weights with --layer")
        untrained = policy.init(model, jax.random.key(args.seed), shape) if args.compare_untrained else None
        _, rows = write_weights(stage, model, loaded.params, layers, loaded.trained, untrained, args.in_channel,
                                args.bins)
    say_untrained(loaded)
    print(f"{'layer':16s} {'weights':24s} " + " ".join(f"{n:>10s}" for n in STAT_NAMES))
    for layer, k, st in rows:
        print(f"{show(layer, 60):16s} {k:24s} " + " ".join(f"{v:10.4f}" for v in st))


@register("weights", "weight histograms, kernel mosaics and statistics of layers, trained vs untrained",
           "jaxviz weights --model digits_cnn --layer conv2d --compare-untrained --out out/w\n"
           "  jaxviz weights --layer stem_conv --out out/lite0   # EfficientNet-Lite0's first kernels, in colour")
def _setup_weights(p):
    add_model_args(p, images=False)  # --input: the size the untrained copy is initialised for
    p.add_argument("--layer", "-l", action="append", help="layer name (repeatable; default: the first conv layer)")
    p.add_argument("--compare-untrained", action="store_true",
                   help="also show a freshly initialised copy (glorot-uniform, --seed), side by side")
    p.add_argument("--in-channel", help="input channel of the kernel mosaic: an index, or rgb for 3-channel colour "
                                        "tiles (default: rgb when the layer has 3 input channels, else 0)")
    p.add_argument("--bins", type=int, default=10, help=f"histogram bins, 1..{MAX_BINS} (default 10, as plt.hist)")
    p.add_argument("--out", "-o", required=True,
                   help="output directory: <layer>_hist.png, <layer>_kernels[_untrained].png, weights.npz")
    p.set_defaults(func=cmd_weights)

