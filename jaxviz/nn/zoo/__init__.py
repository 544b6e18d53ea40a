"""The model zoo: every registered architecture, one file per family. :data:`MODELS` is the one
place an architecture is added."""

from __future__ import annotations

import functools
from typing import Callable

from jaxviz.errors import unknown
from jaxviz.nn.graph import Sequential
from jaxviz.nn.zoo.efficientnet import efficientnet_lite0
from jaxviz.nn.zoo.small import cats_dogs_small, digits_cnn, fashion_cnn, fruits_cnn
from jaxviz.nn.zoo.vgg import vgg16, vgg16_finetuned
from jaxviz.nn.zoo.xception import xception

MODELS: dict[str, Callable[[], Sequential]] = {
    "vgg16": functools.partial(vgg16, include_top=True),
    "vgg16_notop": functools.partial(vgg16, include_top=False),
    "vgg16_finetuned": vgg16_finetuned,
    "efficientnet_lite0": functools.partial(efficientnet_lite0, include_top=True),
    "efficientnet_lite0_notop": functools.partial(efficientnet_lite0, include_top=False),
    "xception": functools.partial(xception, include_top=True),
    "xception_notop": functools.partial(xception, include_top=False),
    "cats_dogs_small": cats_dogs_small,
    "fashion_cnn": fashion_cnn,
    "digits_cnn": digits_cnn,
    "fruits_cnn": fruits_cnn,
}


def get_model(name: str) -> Sequential:
    """Build a registered architecture by name; an unknown name lists the valid ones."""
    try:
        build = MODELS[name]
    except KeyError:
        raise unknown("model", name, sorted(MODELS)) from None
    return build()
