"""`jaxviz gradcam`: the subcommand and its parser."""

from __future__ import annotations

from jaxviz.cli.common import (add_model_args, at_least, batch, input_shape, load, refuse_out_in_inputs, register,
                               say_preprocessing)


def cmd_gradcam(args) -> None:
    import jax

    from jaxviz.methods.attribution import LAYER_METHODS, Settings, explain
    from jaxviz.io.images import expand_sources
    from jaxviz.io import output_dir
    from jaxviz.io.labels import decode_predictions
    from jaxviz.viz.writers import write_cams

    for flag, v in (("--samples", args.samples), ("--steps", args.steps), ("--chunk", args.chunk),
                    ("--batch-size", args.batch_size)):
        at_least(flag, v)
    at_least("--noise", args.noise, 0)
    refuse_out_in_inputs(args.out, args.image)
    with output_dir(args.out) as stage:  # an unusable --out fails before any work
        loaded = load(args, default_model="vgg16")
        model = loaded.model
        shape = input_shape(args, model)
        images = expand_sources(args.image)
        say_preprocessing(args, model)
        x = batch(model, images, shape)
        cams = explain(model, loaded.params, x, args.cls, method=args.method, layer=args.layer, score=args.score,
                       key=jax.random.key(args.seed), batch_size=args.batch_size,
                       settings=Settings(samples=args.samples, noise=args.noise, steps=args.steps, chunk=args.chunk))
        if model.labels is not None:
            for src, top in zip(images, decode_predictions(cams.probs, top=3, labels=model.labels)):
                print(f"{src}: Predicted: {[(a, b, round(p, 8)) for a, b, p in top]}")
        where = f"layer {args.layer or model.cam_layer()}" if args.method in LAYER_METHODS else "input"
        write_cams(stage, images, cams, args.method, where)


@register("gradcam", "Grad-CAM (and Grad-CAM++, Score-CAM, saliency, SmoothGrad, IG, guided backprop) heatmaps "
                      "superimposed on the photos",
           "jaxviz gradcam --weights ckpt/vgg16 --image elephant.jpg --class 386 --out out/cam\n"
           "  jaxviz gradcam --weights fashion.h5 --image a.png --image b.png --layer conv2d_1 --out out/cam\n"
           "  jaxviz gradcam --weights builtin:digits_cnn --image 7.png --method smoothgrad --seed 1 --out out/sg\n"
           "  jaxviz gradcam --model xception --input 150x150 --image photos/ --out out/x")
def _setup_gradcam(p):
    add_model_args(p)
    p.add_argument("--image", "-i", action="append", required=True,
                   help="image path, a folder of images, or sample:NAME (repeatable)")
    p.add_argument("--batch-size", type=int, help="images per compiled call, split over all devices (default: all on accelerators, calls of 16/4/1 images on CPUs)")
    p.add_argument("--class", dest="cls", type=int, help="class index (default: each image's top-1)")
    p.add_argument("--layer", "-l", help="conv layer (default: the last conv layer)")
    from jaxviz.methods.attribution import METHODS

    p.add_argument("--method", default="gradcam", choices=METHODS,
                   help="gradcam, gradcam++, scorecam: maps at the layer's resolution; saliency, smoothgrad, ig "
                        "(integrated gradients), guided (guided backprop): maps at the input's (default gradcam)")
    p.add_argument("--samples", type=int, default=25, help="smoothgrad: noisy copies (default 25)")
    p.add_argument("--noise", type=float, default=0.15,
                   help="smoothgrad: noise sigma / value range, at least 0 (default 0.15)")
    p.add_argument("--steps", type=int, default=32, help="ig: integration steps (default 32)")
    p.add_argument("--chunk", type=int, default=64, help="scorecam: masked images per forward pass (default 64)")
    p.add_argument("--score", default="logit", choices=["logit", "probability"],
                   help="logit = pre-softmax (the paper, default); probability = post-softmax (the seeds)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.set_defaults(func=cmd_gradcam)

