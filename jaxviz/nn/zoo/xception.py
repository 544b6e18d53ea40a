"""Keras `Xception`, residual branches as wired steps."""

from __future__ import annotations

import flax.linen as nn

from jaxviz.nn import layers as L
from jaxviz.nn.graph import Sequential

def xception(include_top: bool = True) -> Sequential:
    """Keras ``Xception`` (Chollet 2017), Keras's layer names and ``model.layers`` order: 22,910,480
    parameters with the top (299x299), 20,861,480 without (any input >= 71x71). The residual
    branches are Keras's unnamed ``conv2d``/``batch_normalization``/``add`` layers, named as a
    fresh Keras session names them; ``block1`` ... ``block14`` alias each block's output."""
    steps: list[tuple[str, nn.Module]] = []
    wiring: dict[str, tuple[str, ...]] = {}
    auto: dict[str, int] = {}

    def keras_auto(base: str) -> str:
        n = auto.get(base, 0)
        auto[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def add(name: str, layer: nn.Module, *sources: str) -> str:
        steps.append((name, layer))
        if sources:
            wiring[name] = sources
        return name

    def conv_bn_act(name: str, layer: nn.Module, act: str = "relu", act_first: bool = False) -> str:
        if act_first:
            add(f"{name}_act", L.Activation(act))
        add(name, layer)
        last = add(f"{name}_bn", L.BatchNormalization())
        return last if act_first else add(f"{name}_act", L.Activation(act))

    def sep(features: int) -> nn.Module:
        return L.SeparableConv2D(features, 3, "same", use_bias=False)

    def downsampling_block(b: int, features: int, block_in: str, sep1_features: int) -> str:
        """Two separable convs and a 3x3/2 max pool, plus a strided 1x1 conv shortcut (entry flow, block 13)."""
        if b == 2:  # block 2's first separable conv reads block 1's activation directly
            add("block2_sepconv1", sep(sep1_features))
            add("block2_sepconv1_bn", L.BatchNormalization())
        else:
            conv_bn_act(f"block{b}_sepconv1", sep(sep1_features), act_first=True)
        conv_bn_act(f"block{b}_sepconv2", sep(features), act_first=True)
        conv = add(keras_auto("conv2d"), L.Conv2D(features, 1, "same", "linear", strides=2, use_bias=False), block_in)
        pool = add(f"block{b}_pool", L.MaxPool2D(3, 2, "same"), f"block{b}_sepconv2_bn")
        bn = add(keras_auto("batch_normalization"), L.BatchNormalization(), conv)
        return add(keras_auto("add"), L.Add(), pool, bn)

    def middle_block(b: int, block_in: str) -> str:
        """Three separable convs around an identity shortcut."""
        for i in (1, 2, 3):
            conv_bn_act(f"block{b}_sepconv{i}", sep(728), act_first=True)
        return add(keras_auto("add"), L.Add(), f"block{b}_sepconv3_bn", block_in)

    conv_bn_act("block1_conv1", L.Conv2D(32, 3, "valid", "linear", strides=2, use_bias=False))
    x = conv_bn_act("block1_conv2", L.Conv2D(64, 3, "valid", "linear", use_bias=False))
    aliases = [("block1", x)]
    for b, features in ((2, 128), (3, 256), (4, 728)):  # entry flow
        x = downsampling_block(b, features, x, features)
        aliases.append((f"block{b}", x))
    for b in range(5, 13):  # middle flow
        x = middle_block(b, x)
        aliases.append((f"block{b}", x))
    x = downsampling_block(13, 1024, x, 728)  # exit flow
    aliases.append(("block13", x))
    conv_bn_act("block14_sepconv1", sep(1536))
    x = conv_bn_act("block14_sepconv2", sep(2048))
    aliases.append(("block14", x))
    if include_top:
        steps += [("avg_pool", L.GlobalAveragePooling2D()), ("predictions", L.Dense(1000, "softmax"))]
    return Sequential(
        "xception" if include_top else "xception_notop", tuple(steps), (299, 299, 3), "tf",
        "imagenet" if include_top else None, tuple(wiring.items()), aliases=tuple(aliases), min_size=71,
    )


# EfficientNet-B0's stages (kernel, stride, expansion, output channels, repeats); Lite0 keeps them,
# drops squeeze-excitation, uses ReLU6 and keeps the 32-channel stem and 1280-channel head.
