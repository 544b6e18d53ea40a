"""`jaxviz activations`: the subcommand and its parser."""

from __future__ import annotations

from jaxviz.cli.common import MAX_PER_ROW, add_model_args, at_least, batch, input_shape, register
from jaxviz.cli.common import load, say_preprocessing, say_untrained
from jaxviz.errors import show


def cmd_activations(args) -> None:
    from jaxviz.methods.activations import default_layers
    from jaxviz.io import output_dir
    from jaxviz.viz.writers import write_activations

    at_least("--per-row", args.per_row, 1, MAX_PER_ROW)
    with output_dir(args.out) as stage:  # an unusable --out fails before any work
        loaded = load(args, "cats_dogs_small")
        model = loaded.model
        layers = args.layers or default_layers(model)
        shape = input_shape(args, model)
        say_preprocessing(args, model)
        x = batch(model, [args.image], shape)
        _, summary = write_activations(stage, model, loaded.params, x, layers, args.per_row, trained=loaded.trained)
    say_untrained(loaded)
    print(f"{'layer':20s} {'shape':18s} {'dead channels':>14s}")
    for row in summary:
        print(f"{show(row['layer'], 60):20s} {str(row['shape']):18s} {row['dead']:>6d} / {row['channels']:<6d}")


@register("activations", "every channel of every conv/pool layer for one image, tiled per layer",
           "jaxviz activations --image sample:chelsea --out out/acts   # EfficientNet-Lite0\n"
           "  jaxviz activations --model digits_cnn --image sample:camera --out out/d --layers conv2d conv2d_1 "
           "--per-row 8\n"
           "  jaxviz activations --model vgg16_notop --input 150x150 --image sample:chelsea --out out/a")
def _setup_activations(p):
    add_model_args(p)
    p.add_argument("--image", "-i", required=True, help="image path or sample:NAME")
    p.add_argument("--out", "-o", required=True, help="output directory (one PNG per layer + activations.npz)")
    p.add_argument("--layers", nargs="+", metavar="L", help="layer names (default: every conv and pool layer)")
    p.add_argument("--per-row", type=int, default=16, help=f"channels per grid row, 1..{MAX_PER_ROW} (default 16)")
    p.set_defaults(func=cmd_activations)
