"""`jaxviz concepts`: what a layer has learned, as concepts over a collection — ``concepts.npz`` and a
self-contained ``index.html`` (one card per concept: exemplars where it is strongest, its feature
visualisation, its importance per class and prevalence; a few images' attribution maps)."""

from __future__ import annotations

import html
import os
import shutil
import sys
import time

import numpy as np

from jaxviz.cli.atlas import STYLE
from jaxviz.cli.common import add_model_args, at_least, input_shape, load, on_processes, register, say_preprocessing
from jaxviz.cli.progress import Progress
from jaxviz.errors import JaxvizError
from jaxviz.io.images import IMAGE_EXTENSIONS
from jaxviz.viz.display import png_uri
from jaxviz.viz.render import framed_crop, superimpose

CHECKPOINT = ".concepts-checkpoint"
METRICS = ("c-deletion", "c-insertion", "c-mufidelity")
PAGE_IMAGES = 6  # images in the page's per-image section
TOP_CONCEPTS = 3  # concepts shown per image there
MAP_PX = 112  # ... drawn this tall


def cmd_concepts(args) -> None:
    at_least("--concepts", args.concepts, 1, 4096)
    at_least("--batch-size", args.batch_size, 1, 65536)
    at_least("--iterations", args.iterations, 1, 100_000)
    at_least("--checkpoint-every", args.checkpoint_every, 1)
    at_least("--checkpoint-seconds", args.checkpoint_seconds, 1)
    if args.crops is not None:
        at_least("--crops", args.crops, 1)
    on_processes(args, lambda stage: _run(args, stage))


def _run(args, stage) -> None:
    import jax

    from jaxviz.concepts.job import find_concepts

    loaded = load(args)
    model = loaded.model
    shape = input_shape(args, model)
    say_preprocessing(args, model)
    layer = model.resolve(args.layer)
    if os.path.isdir(args.images) and os.path.realpath(args.images) == os.path.realpath(args.out):
        raise JaxvizError(f"--out {args.out} is the --images folder; choose another --out")
    classes = [int(c) for c in (args.cls or [])]
    checkpoint = os.path.join(args.out, CHECKPOINT)
    t0 = time.perf_counter()
    with Progress("jaxviz concepts", unit="image") as bar:
        res = find_concepts(model, loaded.params, args.images, layer, args.concepts, method=args.method,
                            input_shape=shape, crops=args.crops, classes=classes, importance=args.importance,
                            iterations=args.iterations, importance_images=args.importance_images,
                            batch_size=args.batch_size or 32, checkpoint=checkpoint, resume=args.resume,
                            checkpoint_every=args.checkpoint_every, checkpoint_seconds=args.checkpoint_seconds,
                            workers=args.workers, max_failures=args.max_failures, on_batch=bar)
    dt = time.perf_counter() - t0
    for f in res.failures:
        print(f"jaxviz concepts: warning: skipped {f.path!r}: {f.reason}", file=sys.stderr)
    print(f"{len(res.paths)} images in {dt:.1f} s, {len(jax.devices())} {jax.devices()[0].platform} device(s), "
          f"{jax.process_count()} process(es)")
    q = res.quality
    print(f"{layer}: {args.concepts} concepts ({args.method}); relative error {q['relative_error']:.3f}, "
          f"R2 {q['r2']:.3f}, L0 {q['l0']:.2f}, {q['dead']} dead, stability {q['stability']:.3f}")
    for c, f in res.faithfulness.items():
        if c not in res.importance:
            print(f"class {c}: no image of this class (none of the first {args.importance_images} images per "
                  "process is predicted as it): no importance, no faithfulness")
            continue
        n = len(res.importance[c]["images"])
        print(f"class {c} ({n} images): C-Deletion {f.get('c-deletion', float('nan')):.3f} (random "
              f"{f.get('c-deletion/random', float('nan')):.3f}), C-Insertion {f.get('c-insertion', float('nan')):.3f} "
              f"(random {f.get('c-insertion/random', float('nan')):.3f})")
    if stage is None:
        return
    try:
        patterns = concept_patterns(model, loaded.params, res.layer, res.dictionary.components, args.patterns, shape,
                                    args.seed)
    except JaxvizError as e:
        print(f"jaxviz concepts: warning: no patterns: {e}", file=sys.stderr)
        patterns = []
    write_npz(os.path.join(stage, "concepts.npz"), res, classes)
    with open(os.path.join(stage, "index.html"), "w", encoding="utf-8") as fh:
        fh.write(render_html(model, loaded.params, args.images, res, shape, patterns, classes))
    shutil.rmtree(checkpoint, ignore_errors=True)


def write_npz(path: str, res, classes) -> None:
    """The keys of the contract (module docstring of :mod:`jaxviz.concepts.job`)."""
    K = res.dictionary.components.shape[0]
    arrays = {"paths": np.array(res.paths, dtype=str), "layer": np.array(res.layer), "method": np.array(res.method),
              "dictionary": np.asarray(res.dictionary.components, np.float32),
              "mean_code": res.mean_code, "max_code": res.max_code}
    for c in classes:
        imp = res.importance.get(c)
        arrays[f"importance/{c}"] = (imp["mean"] if imp is not None else np.full(K, np.nan)).astype(np.float32)
        arrays[f"prevalence/{c}"] = (imp["prevalence"] if imp is not None else np.zeros(K)).astype(np.float32)
        arrays[f"importance_images/{c}"] = np.int64(len(imp["images"]) if imp is not None else 0)
        f = res.faithfulness.get(c, {})
        for m in METRICS:
            arrays[f"faithfulness/{m}/{c}"] = np.float32(f.get(m, np.nan))
            arrays[f"faithfulness/{m}/{c}/random"] = np.float32(f.get(f"{m}/random", np.nan))
    for name in ("relative_error", "r2", "r2_per_feature", "l0", "hoyer", "dead", "stability", "collinearity"):
        if name in res.quality:
            arrays[f"quality/{name}"] = np.asarray(res.quality[name])
    for name, v in res.exemplars.items():
        arrays[f"exemplars/{name}"] = v
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def concept_patterns(model, params, layer: str, components, recipe_name: str, shape, seed: int = 0) -> list:
    """Feature visualisation of each concept's direction (K x C dictionary rows) at ``layer``: one
    uint8 image per concept, by :func:`jaxviz.filter_patterns` with the ``direction`` objective (lucid's
    recipe for directions: ``cossim_pow`` 1) reading concept ``i``'s row for unit ``i``. ``recipe_name``:
    ``none`` (no patterns: ``[]``), ``auto`` (``lucid`` for inputs of 64 pixels or more, else ``dlwp1``)
    or a recipe name. Units are vmapped, so all the concepts share one compiled program per chunk of at
    most C concepts."""
    if recipe_name == "none":
        return []
    import jax
    import jax.numpy as jnp

    from jaxviz import filter_patterns, get_recipe
    from jaxviz.methods.featurevis.objectives import Objective, direction

    name = recipe_name if recipe_name != "auto" else ("lucid" if min(shape[:2]) >= 64 else "dlwp1")
    base = get_recipe(name)
    D = jnp.asarray(components, jnp.float32)
    K, C = D.shape
    images = []
    for start in range(0, K, C):  # unit indices must be channels of the layer: chunks of at most C concepts
        rows = D[start:start + C]
        obj = Objective(lambda t, i, rows=rows: direction(None, rows[i], cossim_pow=1.0)(t, i), (None,),
                        name="direction(concept)")
        recipe = get_recipe(name, size=min(base.size, max(shape[:2])), objective=obj)
        res = filter_patterns(model, params, layer, list(range(len(rows))), recipe, jax.random.key(seed),
                              single_channel=False, quality=False)
        per = len(res.images) // len(rows)
        images += [res.images[i * per] for i in range(len(rows))]
    return images


CARD_STYLE = """
.card h3{font-size:14px;margin:0 0 3px}
.card .stats{font-size:11px;color:#555;margin:0 0 3px}
.card table.imp{font-size:11px;border-collapse:collapse;margin:0 0 4px}
.card table.imp td,.card table.imp th{padding:0 6px 0 0;text-align:left;font-weight:normal}
.card table.imp th{color:#555}
.card .absent{color:#999;font-style:italic}
figure figcaption{max-width:72px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;line-height:1.35}
.imgmaps .row{align-items:flex-start}
.imgmaps figure img{height:auto}
.imgmaps figure figcaption{max-width:112px;white-space:normal;overflow-wrap:anywhere}
.imgmaps .photo img{border:1px solid #888}
"""


def _short(path: str) -> str:
    """An item's name as a caption: the file name without its extension (``digits[12]`` as it is); the
    whole path is the figure's title."""
    name = os.path.basename(path) or path
    stem, ext = os.path.splitext(name)
    return stem if stem and ext.lower() in IMAGE_EXTENSIONS else name


def _class_names(model, classes) -> dict:
    """``{class: "954 banana"}`` from the model's label set (the bare index without one)."""
    from jaxviz.io.labels import label_set

    names = {}
    try:
        labels = label_set(model.labels) if getattr(model, "labels", None) is not None else None
    except JaxvizError:
        labels = None
    for c in classes:
        name = labels[c][1] if labels is not None and 0 <= c < len(labels) else None
        names[c] = f"{c} {name}" if name is not None and name != str(c) else str(c)
    return names


def render_html(model, params, images, res, shape, patterns: "list | None" = None,
                classes: "list | None" = None) -> str:
    """One card per concept: the strongest exemplars (receptive-field box, or in crops mode the crop with
    the crop's own code map; code map overlaid, the item's name and the concept's code under each), the
    feature visualisation of its direction (``patterns``: one uint8 image per concept, from :func:`concept_patterns`; empty: none shown), importance and
    prevalence per class asked (``classes``; default those with importances) over the images predicted
    as that class — "no image of this class" where none was; then, for a few images
    (:func:`page_images`), the photo, the code maps of its strongest concepts and its class map
    (:func:`images_html`). Every name from a file or a model is escaped."""
    import jax.numpy as jnp

    from jaxviz.concepts.maps import code_maps, crop_code_maps
    from jaxviz.io.collection import open_collection
    from jaxviz.nn.preprocess import preprocess

    esc = html.escape
    classes = list(classes if classes is not None else res.importance)
    names = _class_names(model, classes)
    coll = open_collection(images, shape, batch_size=1)
    ex = res.exemplars
    K = ex["indices"].shape[0]
    boxes = ex["boxes"]
    used = sorted({int(i) for i in ex["indices"].ravel() if i >= 0})
    pos = {i: n for n, i in enumerate(used)}
    if used:
        pixels = np.stack([coll.read(i) for i in used]).astype(np.float32)
        x = preprocess(jnp.asarray(pixels), model.preprocessing)
        if res.crops:  # each exemplar is a crop: the crop's own code map, placed at its box
            shown = [(c, j) for c in range(K) for j in range(ex["indices"].shape[1]) if ex["indices"][c, j] >= 0]
            which = np.array([pos[int(ex["indices"][c, j])] for c, j in shown])
            crop_maps = {}
            for s0 in range(0, len(shown), 64):
                part = slice(s0, s0 + 64)
                m = np.asarray(crop_code_maps(res.dictionary, model, params, res.layer, x[which[part]],
                                              np.array([boxes[c, j] for c, j in shown[part]])))
                crop_maps.update({cj: m[n, cj[0]] for n, cj in enumerate(shown[part])})
        else:
            acts = model.run(params, x, taps=[res.layer], output=False).taps[res.layer]
            cmaps = np.asarray(code_maps(res.dictionary, acts, shape[:2]))
    counts = {c: len(res.importance[c]["images"]) if c in res.importance else 0 for c in classes}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>jaxviz concepts: {esc(model.name)}</title>"
             f"<style>{STYLE}{CARD_STYLE}</style></head><body>",
             f"<h1>Concepts of {esc(res.layer)} in {esc(model.name)}</h1>",
             f"<p>{len(res.paths)} images, {K} concepts by {esc(res.method)}; relative error "
             f"{res.quality['relative_error']:.3f}, stability {res.quality['stability']:.3f}."]
    if classes:
        parts.append(" Importance and prevalence over the images predicted as each class: "
                     + ", ".join(f"{esc(names[c])} ({counts[c]} images)" for c in classes) + ".")
    for c in classes:
        f = res.faithfulness.get(c, {})
        if counts[c]:
            parts.append(f"<br>{esc(names[c])}: C-Deletion {f.get('c-deletion', np.nan):.3g} (random order "
                         f"{f.get('c-deletion/random', np.nan):.3g}), C-Insertion {f.get('c-insertion', np.nan):.3g} "
                         f"(random {f.get('c-insertion/random', np.nan):.3g}).")
    parts.append("</p><div class='cards'>")
    for c in range(K):
        parts.append(f"<div class='card' id='concept{c}'><h3>concept {c}</h3>"
                     f"<p class='stats'>mean code {res.mean_code[c]:.3g}, max {res.max_code[c]:.3g}</p>")
        if classes:
            parts.append("<table class='imp'><tr><th>class</th><th>importance</th><th>prevalence</th></tr>")
            for cls in classes:
                if counts[cls]:
                    imp = res.importance[cls]
                    parts.append(f"<tr><td>{esc(names[cls])}</td><td>{imp['mean'][c]:.3g}</td>"
                                 f"<td>{imp['prevalence'][c]:.0%}</td></tr>")
                else:
                    parts.append(f"<tr><td>{esc(names[cls])}</td><td colspan='2' class='absent'>no image of this "
                                 "class</td></tr>")
            parts.append("</table>")
        parts.append("<div class='row'>")
        if patterns:
            parts.append(f"<figure><img class='pattern' src='{png_uri(patterns[c])}' alt='direction of concept {c}'>"
                         "<figcaption>direction</figcaption></figure>")
        for j, i in enumerate(ex["indices"][c]):
            if i < 0:
                continue
            if res.crops:
                t, l, b, r = (int(v) for v in boxes[c, j])
                m = np.zeros(shape[:2], np.float32)
                m[t:b, l:r] = crop_maps[(c, j)]
            else:
                m = cmaps[pos[int(i)], c]
            heat = m / max(float(m.max()), 1e-12)
            img = png_uri(framed_crop(pixels[pos[int(i)]], heat, boxes[c, j]))
            name = esc(_short(res.paths[int(i)]))
            parts.append(f"<figure title='{esc(res.paths[int(i)], quote=True)}'><img src='{img}' alt='exemplar'>"
                         f"<figcaption>{name}</figcaption><figcaption>{ex['values'][c, j]:.3g}</figcaption></figure>")
        parts.append("</div></div>")
    parts.append("</div>")
    parts.append(images_html(model, params, coll, res, classes, names))
    parts.append("</body></html>")
    return "".join(parts)


def page_images(res, classes, n: int = PAGE_IMAGES) -> list:
    """The images of the page's per-image section, ``[(item, class, importances K)]``: the first images of
    each asked class's importance record (those predicted as it), taken in turn over the classes (c1, c2,
    c1, c2, ...) up to ``n``, then grouped by class. With no class that has importances: the first ``n``
    readable items, ``(item, None, None)``."""
    recs = [(c, res.importance[c]) for c in classes if c in res.importance]
    if not recs:
        failed = {f.index for f in res.failures}
        return [(i, None, None) for i in range(len(res.paths)) if i not in failed][:n]
    picked: list = []
    for j in range(max(len(r["images"]) for _, r in recs)):
        for c, r in recs:
            if j < len(r["images"]) and len(picked) < n:
                picked.append((int(r["images"][j]), c, np.asarray(r["per_image"][j], np.float32)))
    order = {c: k for k, (c, _) in enumerate(recs)}
    return sorted(picked, key=lambda p: order[p[1]])  # stable: each class's images in record order


def _enlarged(img: np.ndarray, height: int = MAP_PX) -> np.ndarray:
    """An RGB uint8 picture ``height`` pixels tall: nearest when enlarged 2x or more (digits stay crisp),
    else area-averaged."""
    import cv2

    h, w = img.shape[:2]
    size = (max(1, round(w * height / h)), height)
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if height >= 2 * h else cv2.INTER_AREA)


def images_html(model, params, coll, res, classes, names: dict, n: int = PAGE_IMAGES,
                top: int = TOP_CONCEPTS) -> str:
    """The page's per-image section: for the images of :func:`page_images`, the photo, the code maps of its
    ``top`` concepts (:func:`jaxviz.concepts.maps.top_concept_maps`: by the image's importance for its
    class, else by its mean code) over the photo, each captioned with its importance, and the class map."""
    import jax
    import jax.numpy as jnp

    from jaxviz.concepts.maps import top_concept_maps
    from jaxviz.nn.preprocess import preprocess

    esc = html.escape
    chosen = page_images(res, classes, n)
    head = "<h2 id='images'>Concepts in a few images</h2>"
    if not chosen:
        return head + "<p>No readable image to show.</p>"
    with_class = chosen[0][1] is not None
    pixels = np.stack([coll.read(i) for i, _, _ in chosen]).astype(np.float32)
    x = preprocess(jnp.asarray(pixels), model.preprocessing)
    imp = np.stack([w for _, _, w in chosen]) if with_class else None
    tc = top_concept_maps(model, params, res.layer, res.dictionary, x, imp, top)
    shown = tc.concepts.shape[1]
    probs = np.asarray(jax.nn.softmax(jnp.asarray(tc.logits, jnp.float32), -1))
    if with_class:
        intro = (f"For {len(chosen)} images (the first of each class's importance record, the images predicted "
                 f"as it, in turn over the classes): the photo, the code maps of its {shown} most important "
                 "concepts for that class (where each is present, each scaled to its own maximum) and the "
                 "class map (the sum of all the concepts' code maps weighted by the image's importances; its "
                 "positive part, scaled to its maximum). Maps in JET at 0.4 over the photo.")
    else:
        why = ("No class was asked (<code>--class C</code>)" if not classes else
               "No image of the classes asked was among the images explained")
        intro = (f"{why}, so there is no importance: for the first {len(chosen)} images, the photo (with the "
                 f"model's predicted class) and the code maps of the {shown} concepts most present in it (the "
                 "largest mean code over the layer's positions), each scaled to its own maximum, in JET at "
                 "0.4 over the photo. No class map.")
    parts = [head, f"<p>{intro}</p><div class='cards imgmaps'>"]
    for r, (i, c, _) in enumerate(chosen):
        photo = np.clip(pixels[r], 0, 255).astype(np.uint8)
        photo = _enlarged(np.repeat(photo, 3, -1) if photo.shape[-1] == 1 else photo)
        pred = int(np.argmax(probs[r]))
        label = names.get(c) if c is not None else _class_names(model, [pred])[pred]
        what = (f"class {esc(label)}, p {probs[r, c]:.2f}" if c is not None
                else f"predicted {esc(label)}, p {probs[r, pred]:.2f}")
        concepts = " ".join(str(int(k)) for k in tc.concepts[r])
        parts.append(f"<div class='card image' data-item='{i}' data-class='{'' if c is None else c}' "
                     f"data-concepts='{concepts}'><div class='row'>"
                     f"<figure class='photo' title='{esc(res.paths[i], quote=True)}'><img src='{png_uri(photo)}' "
                     f"alt='photo'><figcaption>{esc(_short(res.paths[i]))}<br>{what}</figcaption></figure>")
        for t in range(shown):
            k, w = int(tc.concepts[r, t]), float(tc.weights[r, t])
            m = np.asarray(tc.maps[r, t])
            heat = m / max(float(m.max()), 1e-12)
            word = "importance" if c is not None else "mean code"
            parts.append(f"<figure><img src='{png_uri(superimpose(photo, heat, 0.4))}' alt='code map of concept {k}'>"
                         f"<figcaption><a href='#concept{k}'>concept {k}</a>, {word} {w:.3g}</figcaption></figure>")
        if tc.class_map is not None:
            m = np.asarray(tc.class_map[r])
            top_ = float(m.max())
            heat = np.maximum(m, 0) / max(top_, 1e-12)
            note = "" if top_ > 0 else " (no positive part)"
            parts.append(f"<figure><img src='{png_uri(superimpose(photo, heat, 0.4))}' alt='class map'>"
                         f"<figcaption>class map{note}</figcaption></figure>")
        parts.append("</div></div>")
    parts.append("</div>")
    return "".join(parts)



@register("concepts", "what a layer has learned, as concepts over a collection: NMF / SAE dictionary, importance, "
                      "faithfulness, an html page of concept cards",
          "jaxviz concepts --weights builtin:digits_cnn --images digits --layer conv2d_1 --method nmf --concepts 8 "
          "--class 3 --out out/concepts")
def _setup_concepts(p):
    add_model_args(p)
    p.add_argument("--images", "-i", required=True, help="the collection (as jaxviz atlas --images)")
    p.add_argument("--layer", "-l", required=True, help="layer name (spatial)")
    p.add_argument("--method", choices=["nmf", "seminmf", "topk-sae", "batchtopk-sae"], default="nmf",
                   help="the dictionary (default nmf; seminmf for signed activations)")
    p.add_argument("--concepts", type=int, default=10, metavar="K", help="concepts, 1..4096 (default 10)")
    p.add_argument("--crops", type=int, metavar="SIZE", help="CRAFT crops of SIZE pixels at stride 0.8 x SIZE "
                                                             "(default: every position, holistic)")
    p.add_argument("--class", dest="cls", action="append", type=int, metavar="C",
                   help="class to explain (repeatable): importance and faithfulness")
    p.add_argument("--importance", choices=["sobol", "gradient", "occlusion"], default="sobol",
                   help="concept importance (default sobol: CRAFT's total indices)")
    p.add_argument("--importance-images", type=int, default=64, metavar="N",
                   help="importance and faithfulness on the first N images of each process (default 64)")
    p.add_argument("--iterations", type=int, default=20, help="dictionary passes over the collection (default 20)")
    p.add_argument("--patterns", default="none", metavar="RECIPE",
                   help="feature visualisation of each concept's direction: none (default), auto, or a recipe "
                        "name (as jaxviz filter-patterns)")
    p.add_argument("--batch-size", type=int, help="images per step over all devices, 1..65536 (default 32)")
    p.add_argument("--max-failures", type=float, default=0.05,
                   help="the share of unreadable images that stops the run, 0..1 (default 0.05)")
    p.add_argument("--workers", type=int, help="image-decoding threads (default: CPUs, at most 8)")
    p.add_argument("--resume", action="store_true",
                   help=f"continue an interrupted run from --out/{CHECKPOINT} (refused if the settings differ)")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                   help="write the resumable state every N batches (default 100; also on Ctrl-C and SIGTERM)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0, metavar="S",
                   help="... and at least every S seconds (default 60)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator (process 0's address)")
    p.add_argument("--process", metavar="I/N", help="this process's index and the process count, e.g. 0/2")
    p.add_argument("--out", "-o", required=True, help="output directory: concepts.npz and index.html")
    p.set_defaults(func=cmd_concepts)
