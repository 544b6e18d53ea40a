"""Class labels: ImageNet (Keras's order and spelling), Fashion-MNIST, digits, fruits, cats/dogs."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from jaxviz.errors import JaxvizError, unknown

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FRUITS = ("apple", "pineapple", "banana")
DIGITS = tuple(str(i) for i in range(10))
CATS_DOGS = ("cat", "dog")  # flow_from_directory's alphabetical order: a sigmoid output is P(dog)


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet classes as ``(wnid, name)``, index = Keras's class index (e.g. 386 = African_elephant)."""
    text = resources.files("jaxviz").joinpath("data/imagenet_classes.txt").read_text()
    rows = tuple(tuple(line.split(" ", 1)) for line in text.splitlines() if line)
    assert len(rows) == 1000
    return rows  # type: ignore[return-value]


def label_set(name: str) -> tuple[tuple[str, str], ...]:
    """``(id, name)`` per class for a label set name."""
    if name == "imagenet":
        return imagenet_classes()
    sets = {"fashion": FASHION, "fruits": FRUITS, "digits": DIGITS, "cats_dogs": CATS_DOGS}
    if name not in sets:
        raise unknown("label set", name, ["imagenet", *sets])
    return tuple((str(i), n) for i, n in enumerate(sets[name]))


def class_probabilities(probs: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities; a single sigmoid unit (N, 1) becomes two columns [1-p, p]."""
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 2:
        raise JaxvizError(f"expected predictions of shape (N, classes), got {probs.shape}")
    if probs.shape[1] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    return probs


def decode_predictions(probs: np.ndarray, top: int = 5,
                       labels: str | None = "imagenet") -> list[list[tuple[str, str, float]]]:
    """Like ``keras.applications.imagenet_utils.decode_predictions``: per sample, the ``top``
    classes as ``(id, name, probability)`` in decreasing probability (ids are WordNet ids for ImageNet;
    ``labels=None``: a model without a label set, ids and names are the class indices)."""
    probs = class_probabilities(probs)
    classes = label_set(labels) if labels is not None else tuple((str(i), f"class {i}") for i in range(probs.shape[1]))
    if probs.shape[1] != len(classes):
        raise JaxvizError(f"predictions have {probs.shape[1]} classes but label set {labels!r} has {len(classes)}")
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:top]
        out.append([(classes[i][0], classes[i][1], float(row[i])) for i in order])
    return out
