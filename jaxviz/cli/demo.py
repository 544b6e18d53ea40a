"""`jaxviz demo`: the subcommand and its parser."""

from __future__ import annotations

from jaxviz.cli.common import MAX_SEED, at_least, register


def cmd_demo(args) -> None:
    from tqdm import tqdm

    from jaxviz.viz.demo import write_demo

    at_least("--seed", args.seed, -MAX_SEED - 1, MAX_SEED)
    with tqdm(total=3, unit="part", disable=None) as bar:
        def step(name):
            if bar.n or name != "digits_cnn":
                bar.update()
            bar.set_description(name)

        index, n = write_demo(args.out, args.weights, args.quick, args.seed, progress=step)
        bar.update(bar.total - bar.n)
    print(f"{n} figures; open {index}")


@register("demo", "every visualisation on embedded defaults, gathered in one index.html",
           "jaxviz demo --out gallery\n  jaxviz demo --weights vgg16_ckpt/ --out gallery\n  jaxviz demo --quick --out /tmp/g")
def _setup_demo(p):
    p.add_argument("--out", "-o", default="jaxviz-gallery", help="output directory (default jaxviz-gallery)")
    p.add_argument("--weights", "-w", help="VGG16 weights (checkpoint or Keras file); omitted = UNTRAINED VGG16, "
                                           "labelled so in the gallery")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--quick", action="store_true", help="fewer filters, steps and methods (about a minute)")
    p.set_defaults(func=cmd_demo)

