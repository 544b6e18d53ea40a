"""Per-model input preprocessing, as Keras does it, and its inverse. Never modifies its argument."""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import jax
import numpy as np

from jaxviz.errors import unknown

# keras.applications.imagenet_utils 'caffe' mode: BGR channel means of the ImageNet training set.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
# keras.applications.imagenet_utils 'torch' mode (DenseNet): RGB scaled to [0, 1], ImageNet mean and std.
TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)


PREPROCESSORS: dict[str, tuple[Callable, Callable]] = {
    # name: (forward, inverse) on float RGB in [0, 255]; plain arithmetic, so numpy and traced jax
    # arrays take the same code (the filter ascent preprocesses inside its jit)
    "caffe": (lambda x: x[..., ::-1] - CAFFE_MEAN_BGR, lambda x: (x + CAFFE_MEAN_BGR)[..., ::-1]),
    "tf": (lambda x: x / 127.5 - 1.0, lambda x: (x + 1.0) * 127.5),
    "torch": (lambda x: (x / 255.0 - TORCH_MEAN_RGB) / TORCH_STD_RGB,
              lambda x: (x * TORCH_STD_RGB + TORCH_MEAN_RGB) * 255.0),
    # EfficientNet-Lite's PyTorch port: ToTensor() then Normalize(mean=0.498, std=0.502) per channel.
    "lite": (lambda x: (x / 255.0 - 0.498) / 0.502, lambda x: (x * 0.502 + 0.498) * 255.0),
    "scale255": (lambda x: x / 255.0, lambda x: x * 255.0),
    "none": (lambda x: x, lambda x: x),
}


def _float(x):
    """A float32 copy of numpy input (never the caller's array); jax arrays (traced too) as they are."""
    return x if isinstance(x, jax.Array) else np.array(x, np.float32)


def preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """RGB pixels in [0, 255] (..., H, W, C) -> float32 model input for ``mode`` (numpy in, numpy out;
    a jax array, also inside ``jit``, gives a jax array).

    ``caffe``: RGB->BGR then subtract the ImageNet BGR means (VGG16); ``tf``: x/127.5 - 1 (Xception);
    ``torch``: x/255, minus the ImageNet RGB mean, over its std (Keras's DenseNet);
    ``lite``: (x/255 - 0.498)/0.502 (EfficientNet-Lite);
    ``scale255``: x/255 (the books' small CNNs); ``none``: float32 copy.
    """
    return _lookup(mode)[0](_float(x))


def deprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """Inverse of :func:`preprocess`: model input -> RGB float32 in [0, 255] (not clipped)."""
    return _lookup(mode)[1](_float(x))


def _lookup(mode: str) -> tuple[Callable, Callable]:
    try:
        return PREPROCESSORS[mode]
    except KeyError:
        raise unknown("preprocessing", mode, list(PREPROCESSORS)) from None


class Origin(NamedTuple):
    """Where a model's preprocessing comes from (:func:`preprocessing_origin`).

    Attributes:
      mode: the model's preprocessing (a key of :data:`PREPROCESSORS`).
      source: ``layers`` (mode ``none``: the model's first layer transforms the pixels itself),
        ``family`` (the ``keras.applications`` family its name belongs to), ``zoo`` (the registered jaxviz
        architecture of that name), ``recorded`` (set where the model was made or saved), or ``none``
        (nothing records one: pixels go in as 0..255).
      detail: the first layer (``layers``), the family's name (``family``) or the architecture (``zoo``).
      first_layer: the model's first layer and its kind, e.g. ``('conv2d', 'conv')``.
    """

    mode: str
    source: str
    detail: str
    first_layer: tuple[str, str]


def preprocessing_origin(model) -> Origin:
    """Where ``model.preprocessing`` comes from, read off the model (any model of the protocol).

    A ``none`` model whose first layer is an ``input_transform`` (a Keras ``Rescaling`` or
    ``Normalization``) scales its pixels itself; a ``none`` model without one takes 0..255 pixels, which is
    right only when it was trained on them. Another mode comes from the ``keras.applications`` family of
    the model's name (Keras's ``preprocess_input``), from the registered architecture of that name, or was
    recorded with the model (a checkpoint, your own module)."""
    from jaxviz.nn.keras_graph import FAMILIES
    from jaxviz.nn.zoo import MODELS, get_model

    first = model.layer_names[0]
    kind = model.kind(first)
    mode = model.preprocessing
    if mode == "none":
        if kind == "input_transform":
            return Origin(mode, "layers", first, (first, kind))
        return Origin(mode, "none", "", (first, kind))
    name = str(model.name)
    for pattern, family_mode in FAMILIES:
        if family_mode == mode and re.fullmatch(pattern, name, re.IGNORECASE):
            return Origin(mode, "family", name, (first, kind))
    if name in MODELS and get_model(name).preprocessing == mode:
        return Origin(mode, "zoo", name, (first, kind))
    return Origin(mode, "recorded", "", (first, kind))
