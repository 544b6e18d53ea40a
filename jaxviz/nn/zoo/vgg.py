"""VGG16 (Keras `VGG16` names) and seed 003's fine-tuned variant."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from jaxviz.nn import layers as L
from jaxviz.nn.graph import Sequential

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def _vgg_base(blocks: Sequence[tuple[int, int]] = VGG16_BLOCKS) -> list[tuple[str, nn.Module]]:
    steps: list[tuple[str, nn.Module]] = []
    for b, (features, n_convs) in enumerate(blocks, start=1):
        steps += [(f"block{b}_conv{i}", L.Conv2D(features, 3, "same")) for i in range(1, n_convs + 1)]
        steps.append((f"block{b}_pool", L.MaxPool2D()))
    return steps


def vgg16(include_top: bool = True) -> Sequential:
    """Keras ``VGG16``: 138,357,544 parameters with the top, 14,714,688 without (any input >= 32x32)."""
    steps = _vgg_base()
    if include_top:
        steps += [
            ("flatten", L.Flatten()),
            ("fc1", L.Dense(4096, "relu")),
            ("fc2", L.Dense(4096, "relu")),
            ("predictions", L.Dense(1000, "softmax")),
        ]
    return Sequential(
        "vgg16" if include_top else "vgg16_notop", tuple(steps), (224, 224, 3), "caffe",
        "imagenet" if include_top else None,
    )


def vgg16_finetuned() -> Sequential:
    """Seed 003's model: a ``vgg16_notop`` base at 150x150, then Flatten, Dense(256, relu), Dense(1, sigmoid)."""
    steps = _vgg_base() + [("flatten", L.Flatten()), ("dense", L.Dense(256, "relu")), ("dense_1", L.Dense(1, "sigmoid"))]
    return Sequential("vgg16_finetuned", tuple(steps), (150, 150, 3), "scale255", "cats_dogs")
