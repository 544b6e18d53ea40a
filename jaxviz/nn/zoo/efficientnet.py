"""EfficientNet-Lite0 with Keras-EfficientNet layer names."""

from __future__ import annotations

import flax.linen as nn

from jaxviz.nn import layers as L
from jaxviz.nn.graph import Sequential

EFFICIENTNET_B0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))


def efficientnet_lite0(include_top: bool = True) -> Sequential:
    """EfficientNet-Lite0 (Tan & Le 2019, the TF-Lite variant): 4,652,008 trainable parameters plus
    batch-norm statistics, 224x224, ReLU6, TensorFlow "same" padding, batch-norm epsilon 1e-3.
    Layer names follow Keras's EfficientNet (``stem_conv``, ``block2b_expand_conv``, ``block2b_add``,
    ``top_conv``...); the aliases ``stem``, ``block1a`` ... ``block7a`` and ``top`` name each step's
    output. Weights: the published PyTorch file (see :mod:`jaxviz.io.torch`)."""
    steps: list[tuple[str, nn.Module]] = []
    wiring: dict[str, tuple[str, ...]] = {}
    aliases: list[tuple[str, str]] = []

    def conv_bn(prefix: str, conv: nn.Module, act: bool = True, bn: str = "bn", act_name: str = "activation") -> str:
        steps.append((f"{prefix}conv" if prefix in ("stem_", "top_") else prefix, conv))
        steps.append((f"{prefix}{bn}", L.BatchNormalization()))
        if act:
            steps.append((f"{prefix}{act_name}", L.Activation("relu6")))
        return steps[-1][0]

    x = conv_bn("stem_", L.Conv2D(32, 3, "same", "linear", strides=2, use_bias=False))
    aliases.append(("stem", x))
    channels = 32
    for s, (k, stride, expand, out, repeats) in enumerate(EFFICIENTNET_B0_STAGES, start=1):
        for r in range(repeats):
            b = f"block{s}{chr(ord('a') + r)}"
            block_in, strides = x, stride if r == 0 else 1
            if expand != 1:
                steps += [(f"{b}_expand_conv", L.Conv2D(channels * expand, 1, "same", "linear", use_bias=False)),
                          (f"{b}_expand_bn", L.BatchNormalization()), (f"{b}_expand_activation", L.Activation("relu6"))]
            steps += [(f"{b}_dwconv", L.DepthwiseConv2D(k, "same", strides=strides)),
                      (f"{b}_bn", L.BatchNormalization()), (f"{b}_activation", L.Activation("relu6")),
                      (f"{b}_project_conv", L.Conv2D(out, 1, "same", "linear", use_bias=False)),
                      (f"{b}_project_bn", L.BatchNormalization())]
            x = f"{b}_project_bn"
            if strides == 1 and channels == out:  # identity shortcut
                steps.append((f"{b}_add", L.Add()))
                wiring[f"{b}_add"] = (x, block_in)
                x = f"{b}_add"
            aliases.append((b, x))
            channels = out
    x = conv_bn("top_", L.Conv2D(1280, 1, "same", "linear", use_bias=False))
    aliases.append(("top", x))
    if include_top:
        steps += [("avg_pool", L.GlobalAveragePooling2D()), ("top_dropout", L.Dropout(0.2)),
                  ("predictions", L.Dense(1000, "softmax"))]
    return Sequential(
        "efficientnet_lite0" if include_top else "efficientnet_lite0_notop", tuple(steps), (224, 224, 3), "lite",
        "imagenet" if include_top else None, tuple(wiring.items()), aliases=tuple(aliases),
    )
