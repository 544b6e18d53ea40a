"""Class activation heatmaps and gradient attributions, N images x K classes in one jitted call.

Two families share one driver (:func:`explain`):

* **layer maps** (``gradcam``, ``gradcam++``, ``scorecam``, ``hirescam``, ``gradcamelementwise``,
  ``xgradcam``, ``layercam``, ``eigencam``, ``eigengradcam``, ``ablationcam``) weight a conv layer's
  output per channel or per position and return an ``h x w`` map at that layer's resolution. One forward pass (the model
  protocol's :meth:`~jaxviz.nn.protocol.Model.run`) gives the feature map and the class scores; the
  gradient at the layer is the gradient with respect to a zero perturbation added there (``jax.vjp``:
  the network runs forward once, backward once per class). A method only says how the channel
  weights are computed. ``eigen_smooth`` and ``aug_smooth`` are pytorch-grad-cam's smoothings.
* **input maps** (``saliency``, ``smoothgrad``, ``ig``, ``guided``, ``inputxgradient``, ``vargrad``,
  ``squaregrad``, ``blurig``, ``guidedig``, ``occlusion``, ``rise``, ``xrai``) attribute the class
  score to the input pixels (gradients, paths, occluded or masked copies) and return an ``H x W`` map
  at the input's resolution; sample axes are chunked (``chunk``) so memory does not grow with them.

Every map is non-negative and divided by its maximum, so it lies in [0, 1]; an all-zero map stays
zero (with a warning from :func:`explain`), never NaN.

:data:`REGISTRY` is the one source of the methods: one :class:`Method` record each (name, family,
function, settings with defaults and bounds, description). :data:`METHODS`, :data:`LAYER_METHODS`,
:data:`INPUT_METHODS`, :class:`Settings`, the CLI's ``--method`` choices and options, and the demo's
comparison grid all derive from it. The functions live in :mod:`jaxviz.methods.layer_maps` and
:mod:`jaxviz.methods.input_maps`.
"""

from __future__ import annotations

import collections
import functools
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError, unknown
from jaxviz.nn import policy
from jaxviz.nn.arguments import check_batch, check_indices, check_layer, check_params
from jaxviz.nn.finite import is_finite_number
from jaxviz.nn.protocol import Model, is_spatial, layer_shape, output_shape
from jaxviz.methods import input_maps as im
from jaxviz.methods import layer_maps as lm
from jaxviz.methods.input_maps import (blur_integrated_gradients, guided_backprop, guided_integrated_gradients,  # noqa: F401 (public here too)
                                       ig, integrated_gradients, saliency, smoothgrad)
from jaxviz.methods.sharding import batch_mesh, chunks, gather, pad_to, replicate, shard_batch
from jaxviz.nn.jit import jit

class Cams(NamedTuple):
    """The maps of :func:`explain`: ``heatmaps`` N x K x h x w float32 in [0, 1] (the layer's resolution for
    layer maps, the input's for input maps), ``classes`` N x K int, ``probs`` N x classes (the model's
    output), the ``method`` that drew them (its registry name; ``""`` when not known) and the ``layer`` of
    layer maps (None for input maps or when not known): ``Cams(heatmaps, classes, probs)`` still builds one."""

    heatmaps: np.ndarray
    classes: np.ndarray
    probs: np.ndarray
    method: str = ""
    layer: str | None = None

    def _repr_html_(self) -> str:
        from jaxviz.viz.display import html

        return html(self)


class Setting(NamedTuple):
    """One knob of a method: a field of :class:`Settings` (and the CLI's ``--name``) with its default, its
    inclusive bounds ``low..high`` and a short description. Methods that share a knob share its record."""

    name: str
    default: int | float
    low: int | float
    high: int | float
    help: str


class Method(NamedTuple):
    """One attribution method: the one record :data:`REGISTRY` holds for it.

    ``family``: ``layer`` (weights at a conv layer; the map has the layer's resolution) or ``input``
    (attributions at the input pixels; the map has the input's). ``fn(model, params, x, feats, grads, classes,
    keys, cfg, logits, layer)`` -> N x K maps in [0, 1]; ``feats``/``grads`` are the layer's activations and,
    with ``needs_grad``, each class score's gradient there (layer family only, as ``layer``). ``settings``: the knobs it reads.
    ``zero_cause``: why one of its maps can be all zero (the warning). ``per_channel``: one forward pass
    per channel of the layer (minutes for a real network on a CPU).
    """

    name: str
    family: str
    fn: Callable
    description: str
    settings: tuple[Setting, ...] = ()
    needs_grad: bool = False
    zero_cause: str = "the gradient is zero"
    per_channel: bool = False


# -- the registry: one record per method ---------------------------------------------------------

SAMPLES = Setting("samples", 25, 1, 10_000, "noisy copies")
NOISE = Setting("noise", 0.15, 0.0, 10.0, "noise sigma / the image's value range (the paper's 0.1-0.2)")
STEPS = Setting("steps", 32, 1, 100_000, "integration steps along the path (ig: midpoint rule from a zero baseline)")
CHUNK = Setting("chunk", 64, 1, 65_536, "images per forward pass over the method's samples (masked, ablated, "
                "noisy or path images; bounds memory)")
EIGEN = Setting("eigen_smooth", 0, 0, 1, "1: the first principal component of the weighted activations instead "
                "of their channel sum (pytorch-grad-cam's eigen_smooth)")
AUG = Setting("aug_smooth", 0, 0, 1, "1: the mean map over 6 test-time augmentations, horizontal flip x input "
              "times 0.9, 1, 1.1 (pytorch-grad-cam's aug_smooth)")
MAX_SIGMA = Setting("max_sigma", 50.0, 0.01, 1000.0, "the strongest Gaussian blur (sigma, pixels): the path's start")
FRACTION = Setting("fraction", 0.25, 0.0, 1.0, "the fraction of features (smallest |gradient|) moved per round")
MAX_DIST = Setting("max_dist", 0.02, 0.0, 1.0, "how far (relative L1) the path may leave the straight line")
WINDOW = Setting("window", 16, 1, 4096, "side of the square patch set to 0 (pixels)")
STRIDE = Setting("stride", 8, 1, 4096, "step of the patch (pixels)")
MASKS = Setting("masks", 2000, 1, 1_000_000, "random masks (the paper's N: 4000 for ResNet-50)")
CELLS = Setting("cells", 7, 1, 1024, "mask grid cells per side (the paper's s)")
KEEP = Setting("keep", 0.5, 0.01, 1.0, "probability that a mask cell is kept (the paper's p)")

TTA_FACTORS = (0.9, 1.0, 1.1)  # aug_smooth: ttach's Multiply in pytorch-grad-cam's default, with and without HorizontalFlip

NEGATIVE = "every weighted channel is negative"
_grad_layer = functools.partial(Method, family="layer", needs_grad=True, zero_cause=NEGATIVE,
                                settings=(EIGEN, AUG))

REGISTRY: tuple[Method, ...] = (
    _grad_layer("gradcam", fn=lm.layer_gradient_method(lm.channel(lm.gradcam_weights)),
                description="Grad-CAM: channels weighted by the spatial mean of the gradient"),
    _grad_layer("gradcam++", fn=lm.layer_gradient_method(lm.channel(lm.gradcampp_weights)),
                description="Grad-CAM++: channels weighted by the positive gradients' closed-form coefficients"),
    Method("scorecam", "layer", lm.scorecam, "Score-CAM: channels weighted by the score of the image they mask",
           (CHUNK, EIGEN, AUG), zero_cause=NEGATIVE, per_channel=True),
    _grad_layer("hirescam", fn=lm.layer_gradient_method(lm.hirescam),
                description="HiResCAM: activations times the gradient, position by position",
                zero_cause="activation x gradient sums to <= 0 at every position"),
    _grad_layer("gradcamelementwise", fn=lm.layer_gradient_method(lm.gradcam_elementwise),
                description="Grad-CAM element-wise: ReLU(activation x gradient) summed over channels",
                zero_cause="activation x gradient is <= 0 everywhere"),
    _grad_layer("xgradcam", fn=lm.layer_gradient_method(lm.channel(lm.xgradcam_weights)),
                description="XGrad-CAM: channels weighted by the activation-normalised sum of activation x gradient"),
    _grad_layer("layercam", fn=lm.layer_gradient_method(lm.layercam),
                description="LayerCAM: activations weighted by the positive gradient, position by position",
                zero_cause="no position has a positive gradient where its channels are active"),
    Method("eigencam", "layer", lm.eigencam, "Eigen-CAM: the activations' first principal component (no class, "
           "no gradient)", (AUG,), zero_cause="the activations are the same at every position"),
    Method("eigengradcam", "layer", lm.layer_gradient_method(lm.hirescam, eigen=True),
           "EigenGrad-CAM: the first principal component of activation x gradient", (AUG,), needs_grad=True,
           zero_cause="activation x gradient is the same at every position"),
    Method("ablationcam", "layer", lm.ablationcam, "Ablation-CAM: channels weighted by the score's relative drop "
           "when the channel is zeroed", (CHUNK, EIGEN, AUG), zero_cause=NEGATIVE + " (or the score is 0)",
           per_channel=True),
    Method("saliency", "input", saliency, "saliency: |gradient| at the input, max over colour channels"),
    Method("smoothgrad", "input", smoothgrad, "SmoothGrad: the input gradient averaged over noisy copies",
           (SAMPLES, NOISE)),
    Method("ig", "input", ig, "integrated gradients from a zero baseline", (STEPS,),
           zero_cause="the image equals the zero baseline, e.g. a black image"),
    Method("guided", "input", guided_backprop, "guided backprop: the input gradient through guided ReLUs"),
    Method("inputxgradient", "input", im.input_x_gradient, "Input x Gradient: the image times its gradient, "
           "|sum over colour channels|", zero_cause="the gradient or the image is zero"),
    Method("vargrad", "input", im.vargrad, "VarGrad: the variance of the input gradient over noisy copies",
           (SAMPLES, NOISE, CHUNK), zero_cause="the gradient does not vary with the noise (noise 0?)"),
    Method("squaregrad", "input", im.squaregrad, "SquareGrad (SmoothGrad-Squared): the mean squared input gradient "
           "over noisy copies", (SAMPLES, NOISE, CHUNK)),
    Method("blurig", "input", im.blurig, "Blur IG: integrated gradients along a path of Gaussian blurs",
           (STEPS, MAX_SIGMA, CHUNK), zero_cause="the gradient is zero along the blur path"),
    Method("guidedig", "input", im.guidedig, "Guided IG: integrated gradients along an adaptive path from a zero "
           "baseline", (STEPS, FRACTION, MAX_DIST),
           zero_cause="the image equals the zero baseline, e.g. a black image"),
    Method("occlusion", "input", im.occlusion, "Occlusion: the score's drop when a sliding patch is set to 0",
           (WINDOW, STRIDE, CHUNK), zero_cause="no patch lowers the score when set to 0"),
    Method("rise", "input", im.rise, "RISE: random masks weighted by the score of the image they keep",
           (MASKS, CELLS, KEEP, CHUNK),
           zero_cause="every masked image's score is <= 0 (a logit; the paper scores probabilities)"),
    Method("xrai", "input", im.xrai, "XRAI: Felzenszwalb segments ranked by their integrated-gradients density",
           (STEPS, CHUNK), zero_cause="every segment's mean attribution is <= 0"),
)
"""Every attribution method, in display order. Adding a method is adding its record here."""

BY_NAME: dict[str, Method] = {m.name: m for m in REGISTRY}
METHODS = tuple(BY_NAME)
LAYER_METHODS = tuple(m.name for m in REGISTRY if m.family == "layer")
INPUT_METHODS = tuple(m.name for m in REGISTRY if m.family == "input")


def _settings_fields() -> dict[str, Setting]:
    fields: dict[str, Setting] = {}
    for m in REGISTRY:
        for s in m.settings:
            if fields.setdefault(s.name, s) != s:
                raise TypeError(f"setting {s.name!r} is declared twice with different records")
    return fields


SETTINGS: dict[str, Setting] = _settings_fields()
"""Every method's knobs by name: the fields of :class:`Settings`, the CLI's options."""

Settings = collections.namedtuple("Settings", list(SETTINGS), defaults=[s.default for s in SETTINGS.values()],
                                  module=__name__)
Settings.__doc__ = "The methods' knobs (hashable: part of the compilation key), one field per :data:`SETTINGS` record."


def users(setting: Setting) -> list[str]:
    """The names of the methods that read ``setting``."""
    return [m.name for m in REGISTRY if setting in m.settings]


def method_record(name: str) -> Method:
    """The record of method ``name``; an unknown name raises an error that lists the valid ones."""
    if name not in BY_NAME:
        raise unknown("method", name, METHODS)
    return BY_NAME[name]


def check_settings(settings: Settings) -> None:
    """Raise unless every knob of ``settings`` is a finite number within its :data:`SETTINGS` bounds."""
    for s in SETTINGS.values():
        v = getattr(settings, s.name)
        if not is_finite_number(v) or not s.low <= v <= s.high:
            raise JaxvizError(f"settings.{s.name} must be {s.low}..{s.high}, got {v}")


def compiled_explain(model: Model, input_shape: Sequence[int], method: str = "gradcam", layer: str | None = None,
                     score: str = "logit", settings: Settings = Settings(), top1: bool = False):
    """The one jitted call :func:`explain` makes per chunk, checked as :func:`explain` checks its arguments:
    ``run(params, x, classes, keys) -> (maps, probs, classes)`` for batches of ``input_shape`` (H, W, C)
    images, ``classes`` N x K int32, ``keys`` one per image; with ``top1`` the classes are each image's
    argmax, taken inside the same call, so nothing runs twice. For timing the method without
    :func:`explain`'s chunking and transfers (``benchmarks/``); equal arguments return the same function."""
    record = method_record(method)
    if score not in ("logit", "probability"):
        raise JaxvizError(f"score must be 'logit' or 'probability', got {score!r}")
    check_settings(settings)
    model.check_input((1,) + tuple(input_shape))
    check_classifier(model, input_shape, method)
    layer = cam_layer(model, layer, input_shape) if record.family == "layer" else None
    return _compile(model, layer, method, score, settings, top1)


@functools.lru_cache(maxsize=32)
def _compile(model, layer, method, score, cfg, top1):
    record = BY_NAME[method]
    logits = score == "logit"

    def at_layer(params, xa, classes):  # one forward pass: features, scores, and the gradient at the layer
        def forward(delta):
            out = model.run(params, xa, taps=(layer,), perturb={layer: delta})
            return (out.logits if logits else out.output), (out.taps[layer], out.output)

        zero = jnp.zeros(xa.shape[:1] + layer_shape(model, layer, xa.shape[1:]), xa.dtype)
        scores, back, (feats, probs) = jax.vjp(forward, zero, has_aux=True)
        if classes is None:  # top-1, taken from this same pass
            classes = jnp.argmax(probs, axis=-1).astype(jnp.int32)[:, None]
        grads = None
        if record.needs_grad:
            onehot = jax.nn.one_hot(classes, scores.shape[-1], dtype=scores.dtype)  # N K classes
            grads = jnp.moveaxis(jax.vmap(lambda e: back(e)[0], in_axes=1)(onehot), 0, 1)  # N K h w C
        return feats, grads, probs, classes

    def run(params, x, classes, keys):  # keys: one per image (the noise and masks of the sampling methods)
        if layer is None:  # input maps: the output alone
            probs = model.run(params, x).output
            if top1:
                classes = jnp.argmax(probs, axis=-1).astype(jnp.int32)[:, None]
            return record.fn(model, params, x, None, None, classes, keys, cfg, logits, None), probs, classes
        feats, grads, probs, classes = at_layer(params, x, None if top1 else classes)
        maps = record.fn(model, params, x, feats, grads, classes, keys, cfg, logits, layer)
        if getattr(cfg, "aug_smooth", 0):  # the other 5 augmentations, one batch at a time
            def augmented(aug):
                flip, factor = aug
                xa = jnp.where(flip, x[:, :, ::-1], x) * factor
                f, g, _, _ = at_layer(params, xa, classes)
                m = record.fn(model, params, xa, f, g, classes, keys, cfg, logits, layer)
                return jnp.where(flip, m[..., ::-1], m)  # undo the flip on the map

            augs = [(f, a) for f in (False, True) for a in TTA_FACTORS if (f, a) != (False, 1.0)]
            rest = jax.lax.map(augmented, (jnp.array([a[0] for a in augs]), jnp.array([a[1] for a in augs], x.dtype)))
            maps = jax.vmap(jax.vmap(lm.normalise))((maps + rest.sum(axis=0)) / (len(augs) + 1))
        return maps, probs, classes

    return jit(run)


def resolve_classes(model: Model, n: int, n_classes: int, classes) -> np.ndarray:
    """N x K class indices from per-image lists or one list for all images, checked against the range."""
    cls = check_indices(classes, None, "classes")  # integers only; the range is said below, per model
    if cls.ndim == 0:
        cls = cls[None]
    cls = np.broadcast_to(cls if cls.ndim == 2 else cls[None, :], (n, cls.shape[-1]))
    bad = cls[(cls < 0) | (cls >= n_classes)]
    if bad.size:
        raise JaxvizError(f"class index {int(bad[0])} out of range for {model.name}: valid 0..{n_classes - 1} "
                          "(in classes)")
    return cls


def explain(
    model: Model,
    params: Mapping,
    x: jax.Array,
    classes: Sequence[Sequence[int]] | Sequence[int] | int | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    score: str = "logit",
    key: jax.Array | None = None,
    settings: Settings = Settings(),
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Cams:
    """Heatmaps of ``method`` for a batch ``x`` (N, H, W, C, preprocessed) and K classes per image.

    ``classes``: per image a list of K class indices, one list for all images, or None for each
    image's top-1. ``layer``: the conv layer of the layer maps (default the last conv layer); input
    maps ignore it. ``score``: ``logit`` (pre-softmax, as in the Grad-CAM paper) or ``probability``
    (the post-softmax output, as the seeds' Listing 5.42). ``key``: the noise of ``smoothgrad``.
    ``batch_size``: images per compiled call (bounds memory for a folder of photos; default: all on
    accelerators, calls of 16, 4 and 1 images on CPUs, :func:`jaxviz.methods.sharding.chunks`); each
    call's images are split evenly over ``devices`` (default all of ``jax.devices()``). The maps do not
    depend on the chunking beyond float32 rounding.
    """
    record = method_record(method)  # the method's name before the input's shape, as always
    x = check_batch(x)
    if layer is not None:
        check_layer(model, layer)
    model.check_input(x.shape)
    check_params(model, params, x.shape[1:])
    top1 = classes is None
    run = compiled_explain(model, x.shape[1:], method, layer, score, settings, top1)  # checks every argument
    used_layer = cam_layer(model, layer, x.shape[1:]) if record.family == "layer" else None
    n_classes = output_shape(model, x.shape[1:])[0]
    cls = np.zeros((x.shape[0], 1), np.int32) if top1 else resolve_classes(model, x.shape[0], n_classes, classes)
    key = jax.random.key(0) if key is None else key
    mesh = batch_mesh(devices)
    params = replicate(mesh, params)
    x, cls = np.asarray(x), np.asarray(cls, np.int32)
    keys = jax.random.split(key, x.shape[0])  # image i's noise depends on i only, not on the chunking
    parts = []
    for start, b in chunks(x.shape[0], batch_size, mesh):  # per device: CPUs in cache-sized calls
        n = min(b, x.shape[0] - start)
        xs, cs, ks = shard_batch(mesh, pad_to(x[start:start + b], b), pad_to(cls[start:start + b], b),
                                 pad_to(keys[start:start + b], b))
        parts.append([gather(a)[:n] for a in run(params, xs, cs, ks)])
    heat, probs, cls = (np.concatenate(p) for p in zip(*parts))
    heat = np.asarray(heat, np.float32)
    if np.any(heat.reshape(heat.shape[0] * heat.shape[1], -1).max(axis=1) == 0):
        warnings.warn(f"some {method} maps are all zero ({record.zero_cause}); returned as zeros")
    return Cams(heat, np.asarray(cls), np.asarray(probs, np.float32), record.name, used_layer)


def check_classifier(model: Model, input_shape: Sequence[int], method: str = "gradcam") -> int:
    """The number of classes of the model's output; a model without a class-score output raises."""
    out = output_shape(model, input_shape)
    if len(out) != 1:
        raise JaxvizError(f"{method} needs class scores, but {model.name} ends in {model.resolve(model.layer_names[-1])!r}"
                          f" with output shape {out}; use a model with its classifier (e.g. without _notop)")
    return int(out[0])


def cam_layer(model: Model, layer: str | None, input_shape: Sequence[int]) -> str:
    """The layer of the layer maps (default :func:`jaxviz.nn.policy.cam_layer`),
    checked: it must have a spatial map (H x W x C)."""
    layer = model.resolve(layer) if layer else policy.cam_layer(model)
    shapes = model.shapes(input_shape)
    if not is_spatial(dict(shapes)[layer]):
        spatial = [n for n, s in shapes if is_spatial(s)]
        raise JaxvizError(f"layer {layer!r} of {model.name} has output shape {dict(shapes)[layer]}, no spatial map "
                          f"for a class activation map; choose a layer with one, e.g. {', '.join(spatial[-4:])}")
    return layer


def gradcam(model: Model, params: Any, x: jax.Array, classes=None, layer: str | None = None,
            score: str = "logit") -> Cams:
    """Grad-CAM (:func:`explain` with ``method="gradcam"``)."""
    return explain(model, params, x, classes, method="gradcam", layer=layer, score=score)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (ties get their average rank)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def randomization_check(key: jax.Array, model: Model, params: Any, x: jax.Array, classes=None, *,
                        method: str = "gradcam", layer: str | None = None, **kw) -> np.ndarray:
    """Adebayo et al. (2018) model-parameter randomisation test: re-initialise every layer above
    ``layer`` (default the last conv layer) and return, per image and class, the Spearman rank
    correlation between the maps before and after. A method that explains the model gives a low
    value; one that mostly reflects the image (guided backprop is the known case) stays high.
    ``key`` draws the fresh weights (and the noise of ``smoothgrad``)."""
    layer = model.resolve(layer) if layer else policy.cam_layer(model)
    names = model.layer_names
    above = names[names.index(layer) + 1:]
    k_init, kw["key"] = jax.random.split(key)
    randomized = policy.reinit(model, params, k_init, above, np.shape(x)[1:])
    before = explain(model, params, x, classes, method=method, layer=layer, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = explain(model, randomized, x, before.classes, method=method, layer=layer, **kw)
    n, k = before.classes.shape
    return np.array([[spearman(before.heatmaps[i, j], after.heatmaps[i, j]) for j in range(k)] for i in range(n)])
