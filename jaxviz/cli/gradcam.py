"""`jaxviz gradcam`: the subcommand and its parser."""

from __future__ import annotations

from jaxviz.errors import show
from jaxviz.cli.common import add_model_args, at_least, batch, input_shape, refuse_out_in_inputs, register
from jaxviz.cli.common import load, say_preprocessing, say_untrained


MAX_BATCH = 65_536  # --batch-size: images per compiled call


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def cmd_gradcam(args) -> None:
    import jax

    from jaxviz.methods.attribution import SETTINGS, Settings, explain, method_record
    from jaxviz.io.images import expand_sources
    from jaxviz.io import output_dir
    from jaxviz.io.labels import class_probabilities, decode_predictions, label_set
    from jaxviz.nn.policy import cam_layer
    from jaxviz.viz.writers import write_cams

    bounds = [(_flag(s.name), getattr(args, s.name), s.low, s.high) for s in SETTINGS.values()]
    for flag, v, low, high in bounds + [("--batch-size", args.batch_size, 1, MAX_BATCH)]:
        at_least(flag, v, low, high)
    refuse_out_in_inputs(args.out, args.image)
    with output_dir(args.out) as stage:  # an unusable --out fails before any work
        loaded = load(args, "vgg16")
        model = loaded.model
        shape = input_shape(args, model)
        images = expand_sources(args.image)
        say_preprocessing(args, model)
        x = batch(model, images, shape)
        cams = explain(model, loaded.params, x, args.cls, method=args.method, layer=args.layer, score=args.score,
                       key=jax.random.key(args.seed), batch_size=args.batch_size,
                       settings=Settings(**{name: getattr(args, name) for name in SETTINGS}))
        say_untrained(loaded)
        if model.labels is not None:
            for src, top in zip(images, decode_predictions(cams.probs, top=3, labels=model.labels)):
                print(f"{show(src, 300)}: Predicted: {[(a, show(b, 60), round(p, 8)) for a, b, p in top]}")
        layer = model.resolve(args.layer) if args.layer else cam_layer(model)
        where = f"layer {layer}" if method_record(args.method).family == "layer" else "input"
        probs = class_probabilities(cams.probs)
        names = [n for _, n in label_set(model.labels)] if model.labels is not None else None
        for i, src in enumerate(images):  # what each map explains, and where it was taken
            c = int(cams.classes[i, 0])
            name = f" {show(names[c], 60)}" if names and c < len(names) and names[c] != str(c) else ""
            print(f"{show(src, 300)}: {args.method} for class {c}{name} (p={float(probs[i, c]):.3f}) at "
                  f"{show(where, 100)}")
        write_cams(stage, images, cams, args.method, where, trained=loaded.trained)


@register("gradcam", "Grad-CAM and every other attribution method (--method) as heatmaps superimposed on the "
                      "photos",
           "jaxviz gradcam --image sample:chelsea --image sample:coffee --out out/cam   # EfficientNet-Lite0\n"
           "  jaxviz gradcam --image sample:chelsea --class 281 --method gradcam++ --out out/cam281\n"
           "  jaxviz gradcam --model digits_cnn --image sample:camera --method smoothgrad --seed 1 --out out/sg\n"
           "  jaxviz gradcam --model xception --input 150x150 --image sample:rocket --out out/x")
def _setup_gradcam(p):
    add_model_args(p)
    p.add_argument("--image", "-i", action="append", required=True,
                   help="image path, a folder of images, or sample:NAME (repeatable)")
    p.add_argument("--batch-size", type=int, help=f"images per compiled call, split over all devices, 1..{MAX_BATCH} "
                                                  "(default: all on accelerators, calls of 16/4/1 images on CPUs)")
    p.add_argument("--class", dest="cls", type=int, help="class index (default: each image's top-1)")
    p.add_argument("--layer", "-l", help="conv layer (default: the last conv layer)")
    from jaxviz.methods.attribution import METHODS, REGISTRY, SETTINGS, users

    families = {"layer": "maps at the layer's resolution", "input": "maps at the input's"}
    p.add_argument("--method", default=METHODS[0], choices=METHODS,
                   help="; ".join(f"{', '.join(m.name for m in REGISTRY if m.family == f)}: {what}"
                                  for f, what in families.items()) + f" (default {METHODS[0]})")
    for s in SETTINGS.values():  # every knob of every method, with its default and bounds from the registry
        p.add_argument(_flag(s.name), dest=s.name, type=type(s.default), default=s.default,
                       help=f"{', '.join(users(s))}: {s.help}, {s.low}..{s.high} (default {s.default})")
    p.add_argument("--score", default="logit", choices=["logit", "probability"],
                   help="logit = pre-softmax (the paper, default); probability = post-softmax (the seeds)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.set_defaults(func=cmd_gradcam)

