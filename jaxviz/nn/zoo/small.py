"""The books' small convnets: DLwP 5.2 cats-vs-dogs, seed 004's Fashion-MNIST CNN and its trained siblings."""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn

from jaxviz.nn import layers as L
from jaxviz.nn.graph import Sequential, Shape

def _small_cnn(
    name: str,
    convs: Sequence[int],
    padding: str,
    input_shape: Shape,
    dense: Sequence[tuple[int, str]],
    dropout: float,
    dropout_after_flatten: bool,
    labels: str,
) -> Sequential:
    """The books' small convnets: Conv2D/MaxPool pairs, Flatten, dense layers with one Dropout."""
    steps: list[tuple[str, nn.Module]] = []

    def keras_name(base: str, i: int) -> str:
        return base if i == 0 else f"{base}_{i}"

    for i, features in enumerate(convs):
        steps += [(keras_name("conv2d", i), L.Conv2D(features, 3, padding)), (keras_name("max_pooling2d", i), L.MaxPool2D())]
    steps.append(("flatten", L.Flatten()))
    if dropout_after_flatten:
        steps.append(("dropout", L.Dropout(dropout)))
    for i, (features, act) in enumerate(dense):
        steps.append((keras_name("dense", i), L.Dense(features, act)))
        if i == 0 and not dropout_after_flatten:
            steps.append(("dropout", L.Dropout(dropout)))
    return Sequential(name, tuple(steps), input_shape, "scale255", labels)


cats_dogs_small = functools.partial(
    _small_cnn, "cats_dogs_small", (32, 64, 128, 128), "valid", (150, 150, 3), ((512, "relu"), (1, "sigmoid")),
    0.5, True, "cats_dogs",
)
cats_dogs_small.__doc__ = "*Deep Learning with Python* 5.2 convnet, 150x150x3, 3,453,121 parameters."

fashion_cnn = functools.partial(
    _small_cnn, "fashion_cnn", (32, 64), "same", (28, 28, 1), ((100, "relu"), (10, "softmax")), 0.4, False, "fashion",
)
fashion_cnn.__doc__ = "Seed 004's Fashion-MNIST CNN, 28x28x1, 333,526 parameters."

digits_cnn = functools.partial(
    _small_cnn, "digits_cnn", (32, 64), "same", (28, 28, 1), ((100, "relu"), (10, "softmax")), 0.4, False, "digits",
)
digits_cnn.__doc__ = "The fashion_cnn architecture trained on scikit-learn's handwritten digits."

fruits_cnn = functools.partial(
    _small_cnn, "fruits_cnn", (32, 64), "same", (28, 28, 1), ((100, "relu"), (3, "softmax")), 0.4, False, "fruits",
)
fruits_cnn.__doc__ = "The fashion_cnn architecture with 3 classes, for the book's fruit photos (apple, pineapple, banana)."

