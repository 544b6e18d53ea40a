"""`jaxviz demo`: the subcommand and its parser."""

from __future__ import annotations

from jaxviz.cli.common import MAX_SEED, at_least, register


def cmd_demo(args) -> None:
    from jaxviz.cli.progress import Progress
    from jaxviz.viz.demo import demo_plan, write_demo

    at_least("--seed", args.seed, -MAX_SEED - 1, MAX_SEED)
    plan = demo_plan(args.weights, args.quick, args.seed)
    with Progress("jaxviz demo", unit="step", weights=[j.cost for j in plan.jobs]) as bar:
        index, n = write_demo(args.out, plan, progress=bar)
    print(f"{n} figures; open {index}")


@register("demo", "every visualisation on embedded defaults, gathered in one index.html",
           "jaxviz demo --out gallery\n  jaxviz demo --weights vgg16_ckpt/ --out gallery\n  jaxviz demo --quick --out /tmp/g")
def _setup_demo(p):
    p.add_argument("--out", "-o", default="jaxviz-gallery", help="output directory (default jaxviz-gallery)")
    p.add_argument("--weights", "-w", help="VGG16 weights (checkpoint or Keras file); omitted = UNTRAINED VGG16, "
                                           "labelled so in the gallery")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--quick", action="store_true", help="fewer filters, steps and methods (a few minutes on 2 CPU cores; the full gallery several times that)")
    p.set_defaults(func=cmd_demo)

