"""`jaxviz gradcam`: the subcommand and its parser."""

from __future__ import annotations

from jaxviz.errors import JaxvizError
from jaxviz.cli.common import add_model_args, batch, load, register


def cmd_gradcam(args) -> None:
    import jax

    from jaxviz.methods.attribution import LAYER_METHODS, Settings, explain
    from jaxviz.io.images import expand_sources
    from jaxviz.io import output_dir
    from jaxviz.io.labels import decode_predictions
    from jaxviz.viz.writers import write_cams

    loaded = load(args, default_model="vgg16")
    model = loaded.model
    for name, v in (("--samples", args.samples), ("--steps", args.steps), ("--chunk", args.chunk)):
        if v < 1:
            raise JaxvizError(f"{name} must be at least 1, got {v}")
    if args.batch_size is not None and args.batch_size < 1:
        raise JaxvizError(f"--batch-size must be at least 1, got {args.batch_size}")
    args.image = expand_sources(args.image)
    x = batch(model, args.image)
    cams = explain(model, loaded.params, x, args.cls, method=args.method, layer=args.layer, score=args.score,
                   key=jax.random.key(args.seed), batch_size=args.batch_size,
                   settings=Settings(samples=args.samples, noise=args.noise, steps=args.steps, chunk=args.chunk))
    if model.labels is not None:
        for src, top in zip(args.image, decode_predictions(cams.probs, top=3, labels=model.labels)):
            print(f"{src}: Predicted: {[(a, b, round(p, 8)) for a, b, p in top]}")
    where = f"layer {args.layer or model.last_conv}" if args.method in LAYER_METHODS else "input"
    with output_dir(args.out) as stage:
        write_cams(stage, args.image, cams, args.method, where)


@register("gradcam", "Grad-CAM (and Grad-CAM++, Score-CAM, saliency, SmoothGrad, IG, guided backprop) heatmaps "
                      "superimposed on the photos",
           "jaxviz gradcam --weights ckpt/vgg16 --image elephant.jpg --class 386 --out out/cam\n"
           "  jaxviz gradcam --weights fashion.h5 --image a.png --image b.png --layer conv2d_1 --out out/cam\n"
           "  jaxviz gradcam --weights builtin:digits_cnn --image 7.png --method smoothgrad --seed 1 --out out/sg")
def _setup_gradcam(p):
    add_model_args(p)
    p.add_argument("--image", "-i", action="append", required=True,
                   help="image path, a folder of images, or sample:NAME (repeatable)")
    p.add_argument("--batch-size", type=int, help="images per compiled call, split over all devices (default all)")
    p.add_argument("--class", dest="cls", type=int, help="class index (default: each image's top-1)")
    p.add_argument("--layer", "-l", help="conv layer (default: the last conv layer)")
    from jaxviz.methods.attribution import METHODS

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

