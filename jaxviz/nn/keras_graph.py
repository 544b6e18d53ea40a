"""Keras model configs -> jaxviz graphs, and jaxviz graphs <-> JSON. Nothing from a config is executed.

:func:`build_graph` reads the architecture a Keras file carries (Keras 2 ``model_config``, Keras 3
``config.json``, the ``.h5`` Keras 3 writes) and builds the same named-step
:class:`~jaxviz.nn.graph.Sequential` the zoo uses:

* Sequential and Functional models (any DAG; a merge reads several named steps), nested models
  flattened (inner layers keep their names when unique in the whole model, else ``outer/inner``; the
  nested model's name becomes an alias of its output), ``InputLayer`` dropped wherever it is;
* every layer option Keras writes is honoured or refused by name: the options that only matter for
  training (initialisers, regularisers, constraints, momentum, seeds, ``trainable``) are ignored, a
  ``mixed_float16``/``mixed_bfloat16`` policy is run in float32 (its variables are float32);
* the raw Keras operations Keras 3 writes into a functional graph (``x + 3.0``, ``1.0 - x``, ``inputs + x``,
  ``ops.sqrt``, ``ops.hard_sigmoid``, ``ops.mean(x, [1, 2])``, ``ops.reshape``...: :data:`OPERATIONS`), read
  from the config as data, and the layer classes Keras ships inside ``keras.applications``
  (``LayerScale``, ``CustomScaleLayer``, ``StochasticDepth``: :data:`APPLICATION_LAYERS`), from their own
  module only;
* refused, with a one-line :class:`~jaxviz.errors.JaxvizError` naming the layer and its class:
  ``Lambda``/``TFOpLambda``, custom or unregistered classes (named with their package), unknown classes
  and operations, several inputs or outputs, shared layers (called more than once).

The model's preprocessing is the one Keras's ``preprocess_input`` applies for the
``keras.applications`` family the config names (``vgg16``, ``resnet50``, ``mobilenetv2_1.00_224``...),
else ``none``; its labels are ``imagenet`` when the last layer has 1000 units.

:func:`graph_spec`/:func:`graph_from_spec` write any :class:`Sequential` as plain JSON (layer class
names from :data:`jaxviz.nn.layers.LAYERS` and their settings) and read it back, so a checkpoint
carries its own architecture.

Why one module of ~1,100 lines: one converter per Keras class and raw operation, each a few lines,
beside the table that admits them; the allow-list is only reviewable whole.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

from jaxviz.nn.finite import is_finite_number
from jaxviz.errors import JaxvizError, show
from jaxviz.nn import layers as L
from jaxviz.nn.graph import Sequential
from jaxviz.nn.kinds import NEEDS_SPATIAL_INPUT

CONTAINERS = ("Sequential", "Functional", "Model")
UNSAFE_CLASSES = ("Lambda", "TFOpLambda", "SlicingOpLambda", "__lambda__")
DEFAULT_SIZE = 224  # input side of a model that accepts any size, until --input says otherwise
_FLOAT_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

# Keras's ``preprocess_input`` per keras.applications family, by the model's name (full match).
FAMILIES: list[tuple[str, str]] = [
    (r"vgg1[69]", "caffe"),
    (r"resnet(50|101|152)", "caffe"),
    (r"resnet(50|101|152)v2", "tf"),
    (r"mobilenet_\d\.\d\d_\d+|mobilenetv2_\d\.\d\d_\d+", "tf"),
    (r"mobilenetv3(small|large)", "none"),
    (r"inception_v3|inception_resnet_v2|xception|nasnet(_mobile|_large)?", "tf"),
    (r"densenet(121|169|201)?", "torch"),
    (r"efficientnetb[0-7]|efficientnetv2-(b[0-3]|s|m|l)|convnext_(tiny|small|base|large|xlarge)", "none"),
]


@dataclasses.dataclass(frozen=True)
class KerasGraph:
    """A Keras config as a jaxviz graph.

    Attributes:
      model: the graph.
      origins: ``{step: (container, ..., layer)}``, where each step sits in the config (for its weights).
      classes: ``{step: Keras class name}``.
    """

    model: Sequential
    origins: dict[str, tuple[str, ...]]
    classes: dict[str, str]


def preprocessing_for(names: list[str]) -> str:
    """The preprocessing of the first name that is a keras.applications model, else ``none``."""
    for name in names:
        for pattern, mode in FAMILIES:
            if isinstance(name, str) and re.fullmatch(pattern, name, re.IGNORECASE):
                return mode
    return "none"


# ---------------------------------------------------------------------------------------------
# Refusing what would run code


def _package(module: Any, registered: Any) -> str:
    """The package a custom class comes from: its module's top package (``keras_hub`` of
    ``keras_hub.src.models...``), else the package it was registered under (``pkg`` of ``pkg>Class``)."""
    if isinstance(module, str) and module:
        return module.split(".")[0]
    if isinstance(registered, str) and ">" in registered:
        return registered.split(">")[0]
    return "unknown"


def refuse_custom(config: Any, where: str) -> None:
    """Raise a one-line error if ``config`` anywhere names a Lambda-like layer or a custom object:
    a ``class_name`` or ``registered_name`` with ``>`` (Keras 3's ``package>Class``), a ``module``
    outside ``keras``, or a ``registered_name`` other than the class's own. The error names the class and
    its package (``custom class 'ResNetBackbone' from package 'keras_hub'``)."""

    def walk(node: Any, owner: str | None, depth: int) -> None:
        if depth > 200:
            raise JaxvizError(f"{where}: the model config is nested more than 200 levels deep; the file is damaged")
        if isinstance(node, list):
            for v in node:
                walk(v, owner, depth + 1)
            return
        if not isinstance(node, dict):
            return
        cls, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
        cfg = node.get("config")
        name = cfg.get("name") if isinstance(cfg, dict) and isinstance(cfg.get("name"), str) else node.get("name")
        if isinstance(cls, str) and cls not in ("__keras_tensor__",):
            if isinstance(name, str):
                owner = name
            if cls in UNSAFE_CLASSES:
                raise JaxvizError(
                    f"refusing {where}: its config has a {cls} layer {owner!r}, which would run code from the "
                    "file; jaxviz never executes code from weight files (rebuild the model without it)")
            custom = (">" in cls or (isinstance(registered, str) and (">" in registered or registered != cls))
                      or (module is not None and not (isinstance(module, str)
                                                      and (module == "keras" or module.startswith("keras.")))))
            if custom:
                subject = f"the model {owner!r} is" if depth == 0 else f"layer {owner!r} uses"
                label = registered if isinstance(registered, str) and ">" in registered else cls
                raise JaxvizError(
                    f"refusing {where}: {show(subject, 160)} custom class {show(repr(cls.split('>')[-1]), 80)} from "
                    f"package {show(repr(_package(module, label)), 80)} (custom object {show(repr(registered or cls), 120)}, "
                    f"module {show(repr(module), 120)}): jaxviz runs no code from files")
        for v in node.values():
            walk(v, owner, depth + 1)

    walk(config, None, 0)


# ---------------------------------------------------------------------------------------------
# Options of one layer


# Options that change nothing at inference: initialisers, regularisers, constraints, training knobs.
_TRAINING_ONLY = {"name", "trainable", "dtype", "activity_regularizer", "momentum", "renorm_momentum",
                  "renorm_clipping", "seed", "noise_shape", "synchronized", "fused", "virtual_batch_size",
                  "adjustment", "batch_input_shape", "batch_shape", "input_dim", "lora_alpha"}


class _Options:
    """One layer's config: every option read through it is marked as honoured; :meth:`done` refuses the rest."""

    def __init__(self, cfg: Mapping, name: str, cls: str, where: str):
        self.cfg, self.name, self.cls, self.where, self.used = cfg, name, cls, where, set()

    def fail(self, what: str) -> JaxvizError:
        return JaxvizError(f"{self.where}: layer {self.name!r} ({self.cls}): {what}")

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.cfg.get(key, default)

    def number(self, key: str, default: float | None = None, *, optional: bool = False,
               positive: bool = False) -> float | None:
        v = self.get(key, default)
        if v is None and optional:
            return None
        if not isinstance(v, (int, float)) or not is_finite_number(v):
            raise self.fail(f"option {key} = {show(repr(v), 60)} is not a number")
        if positive and v <= 0:
            raise self.fail(f"option {key} = {v!r} must be above 0 (the model would compute NaN)")
        return float(v)

    def integer(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or v > 1 << 20:
            raise self.fail(f"option {key} = {v!r} is not an integer >= {minimum}")
        return v

    def flag(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(f"option {key} = {v!r} is not true or false")
        return v

    def choice(self, key: str, default: str, valid: tuple[str, ...]) -> str:
        v = self.get(key, default)
        v = v.lower() if isinstance(v, str) else v
        if v not in valid:
            raise self.fail(f"option {key} = {v!r} is not supported (jaxviz supports {', '.join(map(repr, valid))})")
        return v

    def ints(self, key: str, default: Any = None, *, minimum: int = 1, length: int | None = None) -> tuple[int, ...]:
        v = self.get(key, default)
        v = [v] * (length or 1) if isinstance(v, int) and not isinstance(v, bool) else v
        if not isinstance(v, (list, tuple)) or (length is not None and len(v) != length) or len(v) > 8 or any(
                isinstance(i, bool) or not isinstance(i, int) or i < minimum or i > 1 << 20 for i in v):
            raise self.fail(f"option {key} = {self.cfg.get(key, default)!r} is not supported")
        return tuple(v)

    def pair(self, key: str, default: Any = None) -> L.Pair:
        """A square pair as one int (the zoo's form), else (h, w)."""
        h, w = self.ints(key, default, length=2)
        return h if h == w else (h, w)

    def axes(self, key: str, default: Any = -1) -> tuple[int, ...]:
        v = self.get(key, default)
        v = [] if v is None else [v] if isinstance(v, int) else v
        if not isinstance(v, (list, tuple)) or len(v) > 8 or any(
                isinstance(a, bool) or not isinstance(a, int) or abs(a) > 8 for a in v):
            raise self.fail(f"option {key} = {self.cfg.get(key, default)!r} is not supported")
        return tuple(v)

    def channels_last(self) -> None:
        if self.get("data_format", "channels_last") not in ("channels_last", None):
            raise self.fail(f"data_format {self.cfg.get('data_format')!r} is not supported (jaxviz is channels-last)")

    def padding(self) -> str:
        return self.choice("padding", "valid", ("valid", "same"))

    def activation(self, key: str = "activation", default: str = "linear") -> str:
        v = self.get(key, default)
        if v is None:
            v = "linear"
        if isinstance(v, dict) and v.get("class_name") == "function" and isinstance(v.get("config"), str):
            v = v["config"]
        if not isinstance(v, str) or v not in L.ACTIVATIONS or v.startswith("guided_"):
            raise self.fail(f"activation {v!r} is not a Keras activation jaxviz knows")
        return v

    def done(self) -> None:
        for key, value in self.cfg.items():
            if key in self.used or key in _TRAINING_ONLY or key.endswith(("_initializer", "_regularizer",
                                                                          "_constraint")):
                continue
            if key in ("lora_rank", "quantization_config", "quantization_mode", "gptq", "renorm") and not value:
                continue
            raise self.fail(f"option {key} = {str(value)[:60]!r} is not supported")
        policy = self.cfg.get("dtype")
        if isinstance(policy, dict):
            policy = (policy.get("config") or {}).get("name") if isinstance(policy.get("config"), dict) else None
        if policy is not None and policy not in _FLOAT_POLICIES:
            raise self.fail(f"dtype policy {str(policy)[:40]!r} is not supported (jaxviz computes in float32)")


def _pad_pairs(o: _Options, key: str, default: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """ZeroPadding2D/Cropping2D amounts: n, (h, w) or ((top, bottom), (left, right))."""
    v = o.get(key, default)
    try:
        if isinstance(v, int) and not isinstance(v, bool):
            v = ((v, v), (v, v))
        elif all(isinstance(a, int) and not isinstance(a, bool) for a in v):
            v = ((v[0], v[0]), (v[1], v[1]))
        out = tuple((int(a), int(b)) for a, b in v)
        ok = len(out) == 2 and all(0 <= n <= 1 << 16 for p in out for n in p) and all(
            isinstance(n, int) and not isinstance(n, bool) for p in v for n in p)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise o.fail(f"option {key} = {o.cfg.get(key)!r} is not supported")
    return out  # type: ignore[return-value]


def _conv(o: _Options) -> L.Layer:
    o.channels_last()
    return L.Conv2D(features=o.integer("filters"), kernel_size=o.pair("kernel_size"), padding=o.padding(),
                    activation=o.activation(), strides=o.pair("strides", 1), use_bias=o.flag("use_bias", True),
                    dilation=o.pair("dilation_rate", 1), groups=o.integer("groups", 1))


def _depthwise(o: _Options) -> L.Layer:
    o.channels_last()
    return L.DepthwiseConv2D(kernel_size=o.pair("kernel_size"), padding=o.padding(), activation=o.activation(),
                             strides=o.pair("strides", 1), use_bias=o.flag("use_bias", True),
                             depth_multiplier=o.integer("depth_multiplier", 1), dilation=o.pair("dilation_rate", 1))


def _separable(o: _Options) -> L.Layer:
    o.channels_last()
    return L.SeparableConv2D(features=o.integer("filters"), kernel_size=o.pair("kernel_size"), padding=o.padding(),
                             activation=o.activation(), strides=o.pair("strides", 1),
                             use_bias=o.flag("use_bias", True), depth_multiplier=o.integer("depth_multiplier", 1),
                             dilation=o.pair("dilation_rate", 1))


def _transpose(o: _Options) -> L.Layer:
    o.channels_last()
    op = o.get("output_padding")
    output_padding = None if op is None else o.ints("output_padding", minimum=0, length=2)
    return L.Conv2DTranspose(features=o.integer("filters"), kernel_size=o.pair("kernel_size"), padding=o.padding(),
                             activation=o.activation(), strides=o.pair("strides", 1),
                             use_bias=o.flag("use_bias", True), dilation=o.pair("dilation_rate", 1),
                             output_padding=output_padding)


def _batchnorm(o: _Options) -> L.Layer:
    axis = o.axes("axis")
    if len(axis) != 1 or axis[0] not in (-1, 3):
        raise o.fail(f"axis {o.cfg.get('axis')!r} is not supported (jaxviz normalises the channels, axis -1)")
    if o.get("renorm", False):
        raise o.fail("renorm=True is not supported")
    return L.BatchNormalization(epsilon=o.number("epsilon", 1e-3, positive=True), center=o.flag("center", True),
                                scale=o.flag("scale", True))


def _layernorm(o: _Options) -> L.Layer:
    if o.flag("rms_scaling", False):
        raise o.fail("rms_scaling=True is not supported")
    axis = o.axes("axis")
    if not axis or 0 in axis:
        raise o.fail(f"axis {o.cfg.get('axis')!r} is not supported")
    return L.LayerNormalization(epsilon=o.number("epsilon", 1e-3, positive=True), center=o.flag("center", True),
                                scale=o.flag("scale", True), axis=axis)


def _pool(cls: type) -> Callable[[_Options], L.Layer]:
    def make(o: _Options) -> L.Layer:
        o.channels_last()
        pool = o.pair("pool_size", 2)
        strides = None if o.get("strides") is None else o.pair("strides")
        return cls(pool=pool, strides=None if strides == pool else strides, padding=o.padding())
    return make


def _global(cls: type) -> Callable[[_Options], L.Layer]:
    def make(o: _Options) -> L.Layer:
        o.channels_last()
        return cls(keepdims=o.flag("keepdims", False))
    return make


def _relu(o: _Options) -> L.Layer:
    max_value = o.number("max_value", None, optional=True)
    slope, threshold = o.number("negative_slope", 0.0), o.number("threshold", 0.0)
    if max_value is not None and max_value < 0:
        raise o.fail(f"max_value {max_value} is negative")
    if slope == 0 and threshold == 0 and max_value in (None, 6.0):  # exactly Keras's relu / relu6 ops
        return L.Activation("relu" if max_value is None else "relu6")
    return L.ReLU(max_value=max_value, negative_slope=slope, threshold=threshold)


def _leaky(o: _Options) -> L.Layer:
    key = "alpha" if "alpha" in o.cfg and "negative_slope" not in o.cfg else "negative_slope"  # Keras 2: alpha
    return L.LeakyReLU(negative_slope=o.number(key, 0.3))


def _rescaling(o: _Options) -> L.Layer:
    def value(key: str, default: float) -> float | tuple[float, ...]:
        v = o.get(key, default)
        if isinstance(v, (list, tuple)) and 0 < len(v) <= 4096 and all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in v):
            return tuple(float(a) for a in v)
        return o.number(key, default)
    return L.Rescaling(scale=value("scale", 1.0), offset=value("offset", 0.0))


def _normalization(o: _Options) -> L.Layer:
    def stats(key: str) -> tuple[float, ...] | float | None:
        v = o.get(key)
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return None if v is None else float(v)
        flat = v
        while isinstance(flat, list) and len(flat) == 1 and isinstance(flat[0], list):
            flat = flat[0]
        if isinstance(flat, list) and 0 < len(flat) <= 4096 and all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in flat):
            return tuple(float(a) for a in flat)
        raise o.fail(f"option {key} is not supported (a number or a flat list of numbers)")
    mean, var = stats("mean"), stats("variance")
    if (mean is None) != (var is None):
        raise o.fail("mean and variance must be given together")
    return L.Normalization(axis=o.axes("axis"), mean=mean, variance=var, invert=o.flag("invert", False))


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5")


def _resizing(o: _Options) -> L.Layer:
    o.channels_last()
    o.choice("fill_mode", "constant", ("constant",))
    crop, pad = o.flag("crop_to_aspect_ratio", False), o.flag("pad_to_aspect_ratio", False)
    if crop and pad:
        raise o.fail("crop_to_aspect_ratio and pad_to_aspect_ratio cannot both be true")
    return L.Resizing(height=o.integer("height"), width=o.integer("width"),
                      interpolation=o.choice("interpolation", "bilinear", _INTERPOLATIONS),
                      crop_to_aspect_ratio=crop, pad_to_aspect_ratio=pad, fill_value=o.number("fill_value", 0.0),
                      antialias=o.flag("antialias", False))


def _upsampling(o: _Options) -> L.Layer:
    o.channels_last()
    return L.UpSampling2D(size=o.ints("size", 2, length=2),
                          interpolation=o.choice("interpolation", "nearest", _INTERPOLATIONS))


def _plain(cls: type) -> Callable[[_Options], L.Layer]:
    def make(o: _Options) -> L.Layer:
        if "data_format" in o.cfg:
            o.channels_last()
        return cls()
    return make


def _prelu(o: _Options) -> L.Layer:
    axes = () if o.get("shared_axes") is None else o.ints("shared_axes")
    return L.PReLU(shared_axes=tuple(sorted(axes)))


def _concatenate(o: _Options) -> L.Layer:
    axis = o.axes("axis")
    if len(axis) != 1:
        raise o.fail(f"axis {o.cfg.get('axis')!r} is not supported")
    return L.Concatenate(axis=axis[0])


def _rate(cls: type, key: str = "rate") -> Callable[[_Options], L.Layer]:
    def make(o: _Options) -> L.Layer:
        if "data_format" in o.cfg:
            o.channels_last()
        v = o.number(key, 0.0)
        bounded = key in ("rate", "drop_path_rate")
        if v < 0 or (bounded and v >= 1):
            raise o.fail(f"{key} {v} is outside {'[0, 1)' if bounded else '[0, inf)'}")
        return cls(v)
    return make


CONVERTERS: dict[str, Callable[[_Options], L.Layer]] = {
    "Conv2D": _conv, "Convolution2D": _conv,
    "DepthwiseConv2D": _depthwise,
    "SeparableConv2D": _separable, "SeparableConvolution2D": _separable,
    "Conv2DTranspose": _transpose, "Convolution2DTranspose": _transpose,
    "Dense": lambda o: L.Dense(features=o.integer("units"), activation=o.activation(), use_bias=o.flag("use_bias", True)),
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    "MaxPooling2D": _pool(L.MaxPool2D), "MaxPool2D": _pool(L.MaxPool2D),
    "AveragePooling2D": _pool(L.AveragePooling2D), "AvgPool2D": _pool(L.AveragePooling2D),
    "GlobalAveragePooling2D": _global(L.GlobalAveragePooling2D), "GlobalAvgPool2D": _global(L.GlobalAveragePooling2D),
    "GlobalMaxPooling2D": _global(L.GlobalMaxPooling2D), "GlobalMaxPool2D": _global(L.GlobalMaxPooling2D),
    "Flatten": _plain(L.Flatten),
    "Reshape": lambda o: L.Reshape(o.ints("target_shape", minimum=-1)),
    "Permute": lambda o: L.Permute(o.ints("dims")),
    "Dropout": _rate(L.Dropout),
    "SpatialDropout2D": _rate(L.SpatialDropout2D),
    "GaussianNoise": _rate(L.GaussianNoise, "stddev"),
    "GaussianDropout": _rate(L.GaussianDropout),
    "Activation": lambda o: L.Activation(o.activation(default=None)),
    "ReLU": _relu,
    "LeakyReLU": _leaky,
    "PReLU": _prelu,
    "ELU": lambda o: L.ELU(alpha=o.number("alpha", 1.0)),
    "Softmax": lambda o: L.Softmax(axis=o.axes("axis") or (-1,)),
    "Add": _plain(L.Add), "Subtract": _plain(L.Subtract), "Multiply": _plain(L.Multiply),
    "Average": _plain(L.Average), "Maximum": _plain(L.Maximum), "Minimum": _plain(L.Minimum),
    "Concatenate": _concatenate,
    "ZeroPadding2D": lambda o: (o.channels_last(), L.ZeroPadding2D(_pad_pairs(o, "padding", 1)))[1],
    "Cropping2D": lambda o: (o.channels_last(), L.Cropping2D(_pad_pairs(o, "cropping", 0)))[1],
    "UpSampling2D": _upsampling,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
    "Resizing": _resizing,
    "Identity": _plain(L.Identity),
    # keras.applications' own layers (allowed from their module only, APPLICATION_LAYERS)
    "LayerScale": lambda o: (o.number("init_values", 1e-6), L.LayerScale(o.integer("projection_dim")))[1],
    "CustomScaleLayer": lambda o: L.CustomScaleLayer(scale=o.number("scale")),
    "StochasticDepth": _rate(L.StochasticDepth, "drop_path_rate"),
}
"""Keras class name -> converter of its config; every other class is refused."""

APPLICATION_LAYERS = {
    "LayerScale": "keras.src.applications.convnext",
    "StochasticDepth": "keras.src.applications.convnext",
    "CustomScaleLayer": "keras.src.applications.inception_resnet_v2",
}
"""The layer classes Keras ships inside ``keras.applications`` (ConvNeXt, InceptionResNetV2), by the one
module each is read from; the same class name from any other module is refused (a ``.h5`` config names
no module: its class name and options are checked as in a ``.keras`` file)."""


# ---------------------------------------------------------------------------------------------
# Raw Keras operations: the ``keras.src.ops`` nodes of a functional graph (``x + 3.0``, ``inputs + x``,
# ``ops.mean(x, [1, 2])``), read as data


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """A tensor argument of a call: the output of layer ``source``."""

    source: str


_Arg = Any  # a _Tensor, a float, or a list of _Tensor


def _tensors_and_numbers(o: _Options, args: list[_Arg], numbers: int) -> tuple[list[str], list[float], bool]:
    """Split an operation's positional arguments into tensor sources and numbers; ``numbers``: how many
    numbers it may take. Returns (sources, numbers, whether a number came first)."""
    sources = [a.source for a in args if isinstance(a, _Tensor)]
    values = [a for a in args if isinstance(a, float)]
    if len(sources) + len(values) != len(args) or not sources or len(values) > numbers:
        raise o.fail(f"is called on {_describe(args)}; jaxviz reads this operation on "
                     f"{'one tensor' if numbers == 0 else 'tensors and numbers'} only")
    return sources, values, isinstance(args[0], float)


def _describe(args: list[_Arg]) -> str:
    def one(a: _Arg) -> str:
        return "a tensor" if isinstance(a, _Tensor) else repr(a) if isinstance(a, float) else \
            f"[{', '.join(map(one, a))}]" if isinstance(a, list) else "something else"
    return "(" + ", ".join(map(one, args)) + ")"


_TWO_TENSORS: dict[str, Callable[[], L.Layer]] = {
    "add": L.Add, "subtract": L.Subtract, "multiply": L.Multiply, "divide": L.Divide, "power": L.Power,
    "maximum": L.Maximum, "minimum": L.Minimum,
}


def _arithmetic(fn: str) -> Callable[[_Options, list[_Arg]], tuple[L.Layer, list[str]]]:
    """``x + y`` between two tensors (a merge) or between a tensor and a number (:class:`~jaxviz.nn.layers.Elementwise`)."""
    def make(o: _Options, args: list[_Arg]) -> tuple[L.Layer, list[str]]:
        if len(args) != 2:
            raise o.fail(f"is called on {_describe(args)}; jaxviz reads it on two arguments")
        sources, values, first = _tensors_and_numbers(o, args, 1)
        if len(sources) == 2:
            return _TWO_TENSORS[fn](), sources
        return L.Elementwise(fn, tuple(values), constant_first=first), sources
    return make


def _on_one_tensor(build: Callable[[_Options], L.Layer]) -> Callable[[_Options, list[_Arg]], tuple[L.Layer, list[str]]]:
    """An operation of one tensor whose settings are in its config (``ops.sqrt``, ``ops.mean(x, axis)``)."""
    def make(o: _Options, args: list[_Arg]) -> tuple[L.Layer, list[str]]:
        if len(args) != 1 or not isinstance(args[0], _Tensor):
            raise o.fail(f"is called on {_describe(args)}; jaxviz reads it on one tensor")
        return build(o), [args[0].source]
    return make


def _reduction(fn: str) -> Callable[[_Options], L.Layer]:
    def make(o: _Options) -> L.Layer:
        if o.get("axis") is None:
            raise o.fail("reduces every axis, the batch too; jaxviz keeps the batch axis")
        if o.get("initial") is not None:
            raise o.fail(f"option initial = {o.cfg.get('initial')!r} is not supported")
        axis = o.axes("axis")
        if 0 in axis:
            raise o.fail(f"axis {o.cfg.get('axis')!r} reduces the batch axis; not supported")
        return L.Reduce(fn, axis, o.flag("keepdims", False))
    return make


def _op_reshape(o: _Options) -> L.Layer:
    shape = o.ints("newshape", minimum=-1)
    if len(shape) < 2 or shape[0] != -1 or -1 in shape[1:]:
        raise o.fail(f"newshape {o.cfg.get('newshape')!r} is not supported (jaxviz reads a reshape that keeps "
                     "the batch axis first, -1, and gives every other size)")
    return L.Reshape(shape[1:])


def _op_transpose(o: _Options) -> L.Layer:
    axes = o.ints("axes", minimum=0)
    if axes[0] != 0 or sorted(axes) != list(range(len(axes))):
        raise o.fail(f"axes {o.cfg.get('axes')!r} are not supported (jaxviz keeps the batch axis first)")
    return L.Permute(axes[1:])


def _op_concatenate(o: _Options, args: list[_Arg]) -> tuple[L.Layer, list[str]]:
    if len(args) != 1 or not isinstance(args[0], list) or len(args[0]) < 2 or \
            not all(isinstance(t, _Tensor) for t in args[0]):
        raise o.fail(f"is called on {_describe(args)}; jaxviz reads it on one list of tensors")
    axis = o.axes("axis", 0)
    if len(axis) != 1 or axis[0] == 0:
        raise o.fail(f"axis {o.cfg.get('axis', 0)!r} is not supported (the batch axis, or several)")
    return L.Concatenate(axis=axis[0]), [t.source for t in args[0]]


def _act(name: str) -> Callable[[_Options], L.Layer]:
    return lambda o: L.Activation(name)


def _elementwise(fn: str) -> Callable[[_Options], L.Layer]:
    return lambda o: L.Elementwise(fn)


_NUMPY, _NN, _MATH = "keras.src.ops.numpy", "keras.src.ops.nn", "keras.src.ops.math"

OPERATIONS: dict[str, tuple[str, Callable[[_Options, list[_Arg]], tuple[L.Layer, list[str]]]]] = {
    # arithmetic (between tensors, or a tensor and a number: x + 3.0, 1.0 - x, x * (1 / 6))
    "Add": (_NUMPY, _arithmetic("add")), "Subtract": (_NUMPY, _arithmetic("subtract")),
    "Multiply": (_NUMPY, _arithmetic("multiply")), "Divide": (_NUMPY, _arithmetic("divide")),
    "TrueDivide": (_NUMPY, _arithmetic("divide")), "Power": (_NUMPY, _arithmetic("power")),
    "Maximum": (_NUMPY, _arithmetic("maximum")), "Minimum": (_NUMPY, _arithmetic("minimum")),
    # unary math
    **{cls: (_NUMPY, _on_one_tensor(_elementwise(fn))) for cls, fn in (
        ("Negative", "negative"), ("Absolute", "absolute"), ("Square", "square"), ("Sqrt", "sqrt"),
        ("Reciprocal", "reciprocal"), ("Exp", "exp"), ("Expm1", "expm1"), ("Log", "log"), ("Log1p", "log1p"),
        ("Sign", "sign"), ("Floor", "floor"), ("Ceil", "ceil"))},
    "Rsqrt": (_MATH, _on_one_tensor(_elementwise("rsqrt"))), "Erf": (_MATH, _on_one_tensor(_elementwise("erf"))),
    "Tanh": (_NUMPY, _on_one_tensor(_act("tanh"))),
    "Clip": (_NUMPY, _on_one_tensor(lambda o: L.Elementwise("clip", (o.number("x_min"), o.number("x_max"))))),
    # activations (the ones Keras's Activation layer has become that layer: guided backpropagation sees them)
    **{cls: (_NN, _on_one_tensor(_act(name))) for cls, name in (
        ("Relu", "relu"), ("Relu6", "relu6"), ("Sigmoid", "sigmoid"), ("HardSigmoid", "hard_sigmoid"),
        ("HardSilu", "hard_silu"), ("Silu", "silu"), ("Softplus", "softplus"), ("Softsign", "softsign"),
        ("LogSigmoid", "log_sigmoid"), ("Selu", "selu"), ("HardTanh", "hard_tanh"))},
    "Gelu": (_NN, _on_one_tensor(lambda o: L.Elementwise("gelu_tanh") if o.flag("approximate", True)
                                 else L.Activation("gelu"))),
    "LeakyRelu": (_NN, _on_one_tensor(lambda o: L.LeakyReLU(negative_slope=o.number("negative_slope", 0.2)))),
    "Elu": (_NN, _on_one_tensor(lambda o: L.ELU(alpha=o.number("alpha", 1.0)))),
    "Celu": (_NN, _on_one_tensor(lambda o: L.Elementwise("celu", (o.number("alpha", 1.0),)))),
    "Softmax": (_NN, _on_one_tensor(lambda o: L.Softmax(axis=o.axes("axis", -1) or (-1,)))),
    # reductions and reshapes
    **{cls: (_NUMPY, _on_one_tensor(_reduction(fn))) for cls, fn in (
        ("Mean", "mean"), ("Sum", "sum"), ("Max", "max"), ("Min", "min"))},
    "Reshape": (_NUMPY, _on_one_tensor(_op_reshape)),
    "Transpose": (_NUMPY, _on_one_tensor(_op_transpose)),
    "Concatenate": (_NUMPY, _op_concatenate),
}
"""Raw Keras operation class -> (its module, converter of its config and call). Keras 3 writes these into
a functional graph for arithmetic on tensors (``x + 3.0``) and ``keras.ops`` calls; every other operation
is refused, and nothing is executed."""


def is_operation(entry: Mapping) -> bool:
    """Whether a functional-graph entry is a raw Keras operation rather than a layer: its module is
    under ``keras.src.ops`` (``.keras``), or (``.h5``, which names no module) it is an operation's
    class, its config lacks what every Keras layer writes (``trainable``) and, for a class a layer
    shares (``Add``, ``Maximum``...), it is not called the way that layer is (on one list of tensors)."""
    module = entry.get("module")
    if isinstance(module, str):
        return module.startswith("keras.src.ops.")
    cls, cfg, nodes = entry.get("class_name"), entry.get("config"), entry.get("inbound_nodes")
    if module is not None or cls not in OPERATIONS or not isinstance(cfg, dict) or "trainable" in cfg:
        return False
    node = nodes[0] if isinstance(nodes, list) and nodes else None
    args = node.get("args") if isinstance(node, dict) else None
    return cls not in CONVERTERS or not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], list))


# ---------------------------------------------------------------------------------------------
# The graph walk


def _name_of(entry: Mapping) -> str | None:
    cfg = entry.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    name = name if isinstance(name, str) else entry.get("name")
    return name if isinstance(name, str) and 0 < len(name) <= 512 and "\x00" not in name else None


MAX_LAYERS = 20_000  # layers in one model; keras.applications' largest (NASNetLarge) has 1,041


class _Builder:
    def __init__(self, where: str):
        self.where = where
        self.steps: list[tuple[tuple[str, ...], str, L.Layer, list[tuple[str, ...]]]] = []
        self.containers: list[tuple[tuple[str, ...], tuple[str, ...]]] = []  # (path, its output)
        self.input_shape: Any = None
        self.axis_checks: dict[tuple[str, ...], int] = {}

    def fail(self, what: str) -> JaxvizError:
        return JaxvizError(f"{self.where}: {what}")

    def entry_class(self, entry: Any) -> tuple[str, str]:
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            raise self.fail("a layer in the model config has no class_name; the file is damaged")
        if not entry["class_name"].isprintable() or len(entry["class_name"]) > 120:
            raise self.fail(f"a layer class name {show(repr(entry['class_name']), 80)} is not a class name; the file is "
                            "damaged")
        name = _name_of(entry)
        if name is None:
            raise self.fail(f"a {show(repr(entry['class_name']), 80)} layer in the model config has no usable name "
                            "(missing, empty, over 512 characters or holding a NUL byte); the file is damaged")
        return entry["class_name"], name

    def note_input(self, cfg: Any, top: bool) -> None:
        if not top or self.input_shape is not None or not isinstance(cfg, dict):
            return
        for key in ("batch_shape", "batch_input_shape"):
            if isinstance(cfg.get(key), list):
                self.input_shape = cfg[key][1:]
                return

    def input_layer(self, entry: Mapping, name: str, top: bool) -> None:
        cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        for flag in ("sparse", "ragged", "optional"):
            if cfg.get(flag):
                raise self.fail(f"input {name!r} (InputLayer) is {flag}; jaxviz takes dense image batches")
        dtype = cfg.get("dtype", "float32")
        dtype = (dtype.get("config") or {}).get("name") if isinstance(dtype, dict) else dtype
        if dtype not in (None, "float16", "float32", "float64", "bfloat16") + _FLOAT_POLICIES:
            raise self.fail(f"input {name!r} (InputLayer) has dtype {str(dtype)[:30]!r}; jaxviz feeds float32 images")
        self.note_input(cfg, top)

    def container(self, entry: Mapping, path: tuple[str, ...], inputs: list[tuple[str, ...]], depth: int
                  ) -> tuple[str, ...]:
        """Flatten a Sequential/Functional into steps; returns the step its output is."""
        if depth > 32:
            raise self.fail("models nested more than 32 deep")
        cls = entry["class_name"]
        inner = entry.get("config")
        top = not path
        label = f"model {path[-1] if path else top_name(entry)!r} ({cls})"
        if cls == "Sequential":
            layers = inner if isinstance(inner, list) else (inner or {}).get("layers") if isinstance(inner, dict) else None
            if not isinstance(layers, list):
                raise self.fail(f"{label} has no layer list; the file is damaged")
            if len(inputs) != 1:
                raise self.fail(f"{label} is called on {len(inputs)} inputs; jaxviz models take one image batch")
            if top and isinstance(inner, dict) and isinstance(inner.get("build_input_shape"), list):
                self.input_shape = inner["build_input_shape"][1:]
            cur = inputs[0]
            for i, layer in enumerate(layers):
                lcls, name = self.entry_class(layer)
                if lcls == "InputLayer":
                    self.input_layer(layer, name, top and i == 0)
                    continue
                if top and i == 0:
                    self.note_input(layer.get("config"), True)
                cur = self.node(layer, lcls, name, path + (name,), [cur], depth)
            self.containers.append((path, cur))
            return cur
        if cls in ("Functional", "Model"):
            if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
                raise self.fail(f"{label} has no layer list; the file is damaged")
            ins, outs = self.tensor_list(inner.get("input_layers"), label), self.tensor_list(inner.get("output_layers"), label)
            if len(outs) != 1:
                raise self.fail(f"{label} has {len(outs)} outputs ({', '.join(repr(o[0]) for o in outs)[:200]}); "
                                "jaxviz models have one output")
            if len(ins) != len(inputs) or len(ins) != 1:
                raise self.fail(f"{label} has {len(ins)} inputs; jaxviz models take one image batch")
            tensors: dict[str, tuple[str, ...]] = {ins[0][0]: inputs[0]}
            for layer in inner["layers"]:
                lcls, name = self.entry_class(layer)
                if lcls == "InputLayer":
                    if name not in tensors:
                        raise self.fail(f"input {name!r} (InputLayer) of {label} is not one of its inputs")
                    self.input_layer(layer, name, top)
                    continue
                if name in tensors:
                    raise self.fail(f"{label} has two layers named {name!r}; the file is damaged")
                op = self.operation(layer, lcls, name) if is_operation(layer) else None
                sources = op[1] if op else self.inbound(layer, lcls, name)
                missing = [s for s in sources if s not in tensors]
                if missing:
                    raise self.fail(f"layer {name!r} ({lcls}) reads {missing[0]!r}, which comes later or not at all; "
                                    "the file is damaged")
                inputs = [tensors[s] for s in sources]
                if op:
                    tensors[name] = self.add_step(path + (name,), f"{lcls} operation", op[0], inputs)
                else:
                    tensors[name] = self.node(layer, lcls, name, path + (name,), inputs, depth)
            if outs[0][0] not in tensors:
                raise self.fail(f"{label} outputs {outs[0][0]!r}, which is not one of its layers")
            out = tensors[outs[0][0]]
            self.containers.append((path, out))
            return out
        raise self.fail(f"{label}: unknown model class")

    def node(self, layer: Mapping, cls: str, name: str, path: tuple[str, ...], inputs: list[tuple[str, ...]],
             depth: int) -> tuple[str, ...]:
        if cls in CONTAINERS:
            return self.container(layer, path, inputs, depth + 1)
        module = layer.get("module")
        if isinstance(module, str) and module.startswith("keras.src.ops"):
            raise self.fail(f"{show(repr(name), 80)} is a raw Keras operation ({show(cls, 80)}) inside a Sequential "
                            "model, where Keras itself puts none; the file is damaged")
        if cls in APPLICATION_LAYERS and module is not None and module != APPLICATION_LAYERS[cls]:
            raise self.fail(f"layer {name!r} is custom class {show(repr(cls), 80)} from package "
                            f"{show(repr(_package(module, None)), 80)}, not keras.applications' own "
                            f"({APPLICATION_LAYERS[cls]}): jaxviz runs no code from files")
        if cls in UNSAFE_CLASSES:  # refuse_custom has normally caught it already
            raise self.fail(f"layer {name!r} ({cls}) would run code from the file; refused")
        if cls not in CONVERTERS:
            raise self.fail(f"layer {name!r} has class {cls[:80]!r}, which jaxviz does not know (a custom or "
                            f"unsupported layer); known classes: {', '.join(sorted(set(CONVERTERS)))}")
        cfg = layer.get("config")
        if not isinstance(cfg, dict):
            raise self.fail(f"layer {name!r} ({cls}) has no config; the file is damaged")
        opts = _Options(cfg, name, cls, self.where)
        converted = CONVERTERS[cls](opts)
        opts.done()
        if cls == "BatchNormalization":
            axis = opts.axes("axis")[0]
            if axis > 0:
                self.axis_checks[path] = axis
        return self.add_step(path, cls, converted, inputs)

    def add_step(self, path: tuple[str, ...], cls: str, layer: L.Layer, inputs: list[tuple[str, ...]]
                 ) -> tuple[str, ...]:
        if len(self.steps) >= MAX_LAYERS:
            raise self.fail(f"the model has more than {MAX_LAYERS:,} layers; no image model needs that many, refusing it")
        self.steps.append((path, cls, layer, list(inputs)))
        return path

    def operation(self, entry: Mapping, cls: str, name: str) -> tuple[L.Layer, list[str]]:
        """A raw Keras operation as a jaxviz layer and the layers it reads (:data:`OPERATIONS`)."""
        module = entry.get("module")
        known = OPERATIONS.get(cls)
        if known is None or module not in (None, known[0]):
            where = f"{module}.{cls}" if isinstance(module, str) else cls
            raise self.fail(f"{show(repr(name), 80)} is the raw Keras operation {show(where, 120)}, which jaxviz does not "
                            f"read; it reads {', '.join(sorted(OPERATIONS))}")
        cfg = entry.get("config")
        if not isinstance(cfg, dict):
            raise self.fail(f"operation {name!r} ({cls}) has no config; the file is damaged")
        args, kwargs = self.call(entry, cls, name)
        if kwargs:
            key = next(iter(kwargs))
            raise self.fail(f"operation {name!r} ({cls}) is called with {str(key)[:40]!r}={str(kwargs[key])[:40]!r}; "
                            "not supported")
        opts = _Options(cfg, name, f"{cls} operation", self.where)
        layer, sources = known[1](opts, args)
        opts.done()
        return layer, sources

    def tensor_list(self, value: Any, label: str) -> list[tuple[str, int, int]]:
        """``input_layers``/``output_layers``: one ``[name, node, tensor]`` or a list of them."""
        if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
            value = [value]
        if isinstance(value, dict):  # Keras 3 may write {"name": [layer, node, tensor]}
            value = list(value.values())
        if not isinstance(value, list) or not all(
                isinstance(v, list) and len(v) >= 3 and isinstance(v[0], str) for v in value):
            raise self.fail(f"{label} has malformed input_layers/output_layers; the file is damaged")
        return [(v[0], v[1], v[2]) for v in value]

    def call(self, layer: Mapping, cls: str, name: str) -> tuple[list[_Arg], dict]:
        """The one call of a layer or operation: its positional arguments (a tensor as :class:`_Tensor`, a
        number as float, a list of tensors as a list) and keyword arguments, from a Keras 3
        ``{"args", "kwargs"}`` node or a Keras 2 list of ``[layer, node, tensor, kwargs]``."""
        nodes = layer.get("inbound_nodes")
        if not isinstance(nodes, list) or not nodes:
            raise self.fail(f"layer {name!r} ({cls}) is not connected to anything; the file is damaged")
        if len(nodes) > 1:
            raise self.fail(f"layer {name!r} ({cls}) is called {len(nodes)} times (a shared layer); jaxviz needs "
                            "each layer called once")
        node = nodes[0]
        kwargs: Any = {}
        if isinstance(node, dict):  # Keras 3
            args = node.get("args")
            kwargs = node.get("kwargs") or {}
            if not isinstance(args, list) or not 0 < len(args) <= 8:
                raise self.fail(f"layer {name!r} ({cls}) is called with {str(args)[:40]!r} as positional arguments; "
                                "the file is damaged")
            out = [self.argument(a, cls, name, True) for a in args]
        elif isinstance(node, list):  # Keras 2: [[name, node, tensor, kwargs], ...]
            refs = []
            for t in node:
                if not isinstance(t, list) or len(t) < 3:
                    raise self.fail(f"layer {name!r} ({cls}) has a malformed inbound node; the file is damaged")
                refs.append(_Tensor(self.reference(t[:3], cls, name)))
                if len(t) > 3 and isinstance(t[3], dict):
                    kwargs.update(t[3])
            if not refs:
                raise self.fail(f"layer {name!r} ({cls}) has a malformed inbound node; the file is damaged")
            out = [refs[0] if len(refs) == 1 else refs]
        else:
            raise self.fail(f"layer {name!r} ({cls}) has a malformed inbound node; the file is damaged")
        if not isinstance(kwargs, dict):
            raise self.fail(f"layer {name!r} ({cls}) has malformed call arguments; the file is damaged")
        return out, {k: v for k, v in kwargs.items() if not (k == "training" or (k == "mask" and v is None))}

    def argument(self, a: Any, cls: str, name: str, top: bool) -> _Arg:
        """One positional argument of a call (``top``: not inside a list)."""
        if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__" and isinstance(a.get("config"), dict):
            return _Tensor(self.reference(a["config"].get("keras_history"), cls, name))
        if top and isinstance(a, list) and 0 < len(a) <= 4096:
            return [self.argument(t, cls, name, False) for t in a]
        if isinstance(a, (int, float)) and is_finite_number(a) and top:
            return float(a)
        raise self.fail(f"layer {name!r} ({cls}) is called on something other than a tensor, a list of tensors or "
                        f"a number ({show(str(a), 60)}); not supported")

    def reference(self, hist: Any, cls: str, name: str) -> str:
        """The layer a ``[layer, node, tensor]`` reference reads (its only call, its only output)."""
        if not isinstance(hist, list) or len(hist) != 3:
            raise self.fail(f"layer {name!r} ({cls}) is called on a malformed tensor reference "
                            f"({show(str(hist), 60)}); the file is damaged")
        src, node_index, tensor_index = hist
        if not isinstance(src, str) or node_index != 0 or tensor_index != 0:
            raise self.fail(f"layer {name!r} ({cls}) reads {str(src)[:80]!r} node {str(node_index)[:20]!r} tensor {str(tensor_index)[:20]!r}: a "
                            "shared layer or a layer with several outputs; not supported")
        return src

    def inbound(self, layer: Mapping, cls: str, name: str) -> list[str]:
        """The layer names a layer reads: one tensor or one list of tensors, no other arguments."""
        args, kwargs = self.call(layer, cls, name)
        first = args[0]
        if len(args) != 1 or isinstance(first, float) or (isinstance(first, list) and not all(
                isinstance(t, _Tensor) for t in first)):
            raise self.fail(f"layer {name!r} ({cls}) is called on {_describe(args)}; jaxviz supports one tensor or "
                            "one list of tensors")
        for key, value in kwargs.items():
            raise self.fail(f"layer {name!r} ({cls}) is called with {str(key)[:40]!r}={str(value)[:40]!r}; not supported")
        return [t.source for t in (first if isinstance(first, list) else [first])]


def _top(config: Any, where: str) -> dict:
    if isinstance(config, dict) and isinstance(config.get("class_name"), str):
        return config
    raise JaxvizError(f"{where}: the model config has no class_name; the file is damaged")


def build_graph(config: Mapping, where: str = "model") -> KerasGraph:
    """The jaxviz graph of a Keras model config (``{"class_name": "Functional"|"Sequential", "config": ...}``).

    Raises a one-line :class:`JaxvizError` (naming the layer and its class) for anything it cannot
    build exactly; ``where`` (the file) starts each message.
    """
    refuse_custom(config, where)
    top = _top(config, where)
    if top["class_name"] not in CONTAINERS:
        raise JaxvizError(f"{where}: the model is a {top['class_name'][:60]!r}, not a Sequential or Functional "
                          "model; subclassed models cannot be rebuilt without running their code")
    b = _Builder(where)
    try:
        out = b.container(top, (), [()], 0)
    except JaxvizError:
        raise
    except RecursionError:
        raise JaxvizError(f"{where}: the model config is nested too deeply; the file is damaged") from None
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as e:  # a value of the wrong type anywhere
        raise JaxvizError(f"{where}: the model config is malformed ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:100]!r}); the file is damaged") from None
    if not b.steps or out == ():
        raise JaxvizError(f"{where}: the model has no layers")
    if out != b.steps[-1][0]:
        raise JaxvizError(f"{where}: the model's output {out[-1]!r} is not its last layer; not supported")
    shape = b.input_shape
    if not isinstance(shape, list) or len(shape) != 3 or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 16) for d in shape) \
            or shape[2] is None:
        raise JaxvizError(f"{where}: the model's input shape is {shape!r}; jaxviz takes images (height, width, "
                          "channels) with a known number of channels")
    input_shape = tuple(DEFAULT_SIZE if d is None else d for d in shape)

    # names: a leaf keeps its own name when it is unique in the whole model, else the path
    counts: dict[str, int] = {}
    for path, *_ in b.steps:
        counts[path[-1]] = counts.get(path[-1], 0) + 1
    names = {path: path[-1] if counts[path[-1]] == 1 else "/".join(path) for path, *_ in b.steps}
    names[()] = ""
    if len(set(names.values())) != len(names):
        raise JaxvizError(f"{where}: the model's layer names are not unique even with their model paths")
    steps, wiring, prev = [], [], ""
    for path, cls, layer, sources in b.steps:
        srcs = tuple(names[s] for s in sources)
        if srcs != (prev,):
            wiring.append((names[path], srcs))
        steps.append((names[path], layer))
        prev = names[path]
    aliases = []
    taken = set(names.values())
    for path, out_path in b.containers:
        if path and path[-1] not in taken and out_path in names and names[out_path]:
            aliases.append((path[-1], names[out_path]))
            taken.add(path[-1])
    container_names = [top_name(top)] + [p[-1] for p, _ in sorted(b.containers, key=lambda c: len(c[0])) if p]
    model = Sequential(
        name=top_name(top) or "keras_model", layers=tuple(steps), input_shape=input_shape,
        preprocessing=preprocessing_for(container_names), labels=None, wiring=tuple(wiring), aliases=tuple(aliases),
    )
    out_shape = _check_shapes(model, {names[p]: a for p, a in b.axis_checks.items()},
                              {names[p]: cls for p, cls, *_ in b.steps}, where)
    if out_shape == (1000,):
        model = dataclasses.replace(model, labels="imagenet")
    return KerasGraph(model, {names[p]: p for p, *_ in b.steps}, {names[p]: cls for p, cls, *_ in b.steps})


def top_name(top: Mapping) -> str:
    """The model's own name in its config ('' if none)."""
    inner = top.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return name if isinstance(name, str) else ""


def _check_shapes(model: Sequential, axis_checks: dict[str, int], classes: dict[str, str], where: str) -> tuple:
    """Walk the shapes at the default input; a layer that cannot take its input is named."""
    env: dict[str, tuple] = {"": model.input_shape}
    out: tuple = model.input_shape
    for name, layer in model.layers:
        ins = [env[s] for s in model.sources[name]]
        try:
            out = tuple(layer.out_shape(*ins))
            if name in axis_checks and axis_checks[name] != len(ins[0]):
                raise ValueError(f"axis {axis_checks[name]} is not the channel axis of inputs {ins[0]}")
            if layer.kind in NEEDS_SPATIAL_INPUT and len(ins[0]) != 3:
                raise ValueError(f"it needs an image-shaped input (H, W, C), got {ins[0]}")
            layer.param_shapes(*ins)
        except (ValueError, TypeError, ZeroDivisionError, IndexError) as e:
            raise JaxvizError(f"{where}: layer {name!r} ({classes.get(name, type(layer).__name__)}) cannot take "
                              f"inputs {', '.join(map(str, ins))} at the model's input size {model.input_shape}: "
                              f"{str(e).splitlines()[0][:200]}") from None
        if min(out, default=1) < 1:
            raise JaxvizError(f"{where}: layer {name!r} ({classes.get(name)}) would have shape {out} at the model's "
                              f"input size {model.input_shape}")
        env[name] = out
    return out


# ---------------------------------------------------------------------------------------------
# Any jaxviz graph <-> JSON


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, tuple) else v


def _tupled(v: Any) -> Any:
    return tuple(_tupled(x) for x in v) if isinstance(v, list) else v


def graph_spec(model: Sequential) -> dict[str, Any]:
    """``model`` as plain JSON: its layers (class name and settings), wiring and metadata."""
    return {
        "name": model.name, "input_shape": list(model.input_shape), "preprocessing": model.preprocessing,
        "labels": model.labels, "min_size": model.min_size,
        "layers": [[n, type(l).__name__, {k: _jsonable(v) for k, v in L.layer_fields(l).items()}]
                   for n, l in model.layers],
        "wiring": [[n, list(s)] for n, s in model.wiring],
        "aliases": [list(a) for a in model.aliases],
    }


def _plain_value(v: Any, depth: int = 0) -> bool:
    if isinstance(v, list):
        return depth < 3 and len(v) <= 4096 and all(_plain_value(x, depth + 1) for x in v)
    return v is None or isinstance(v, (bool, int, float, str)) and (not isinstance(v, str) or len(v) <= 64)


def graph_from_spec(spec: Any, where: str = "checkpoint") -> Sequential:
    """The :class:`Sequential` :func:`graph_spec` wrote; only classes of :data:`jaxviz.nn.layers.LAYERS` are
    constructed, and every shape is checked. A damaged spec raises a one-line :class:`JaxvizError`."""
    bad = JaxvizError(f"{where}: its stored graph is damaged")
    try:
        steps = []
        if len(spec["layers"]) > MAX_LAYERS:
            raise bad
        for name, cls, fields in spec["layers"]:
            if cls not in L.LAYERS or not isinstance(name, str) or not 0 < len(name) <= 512 or "\x00" in name \
                    or not isinstance(fields, dict) or not all(
                    isinstance(k, str) and _plain_value(v) for k, v in fields.items()):
                raise bad
            allowed = {f.name for f in dataclasses.fields(L.LAYERS[cls])} - {"name", "parent"}
            if not set(fields) <= allowed:
                raise bad
            steps.append((name, L.LAYERS[cls](**{k: _tupled(v) for k, v in fields.items()})))
        model = Sequential(
            name=str(spec["name"]), layers=tuple(steps), input_shape=tuple(int(d) for d in spec["input_shape"]),
            preprocessing=str(spec["preprocessing"]), labels=spec["labels"] if spec["labels"] is None else str(spec["labels"]),
            wiring=tuple((str(n), tuple(str(s) for s in srcs)) for n, srcs in spec["wiring"]),
            aliases=tuple((str(a), str(b)) for a, b in spec["aliases"]), min_size=int(spec.get("min_size", 1)),
        )
        known = {""} | {n for n, _ in steps}
        if len(known) != len(steps) + 1 or any(s not in known for _, srcs in model.wiring for s in srcs):
            raise bad
        _check_shapes(model, {}, {}, where)
        model.param_shapes()
    except Exception:  # any malformed value: a wrong type, a missing key, an impossible shape
        raise bad from None
    return model


def stored_graph(model: Sequential) -> dict[str, Any] | None:
    """What a checkpoint must store to rebuild ``model``: None when ``model`` is exactly the registered
    architecture of its name (the name is enough), else its :func:`graph_spec`."""
    from jaxviz.nn.zoo import MODELS, get_model

    spec = graph_spec(model)
    return None if model.name in MODELS and graph_spec(get_model(model.name)) == spec else spec
