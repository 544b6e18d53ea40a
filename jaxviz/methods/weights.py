"""Weight statistics, histograms and kernel tiles (seed 004), as plain arrays.

Pure functions over one layer's parameters; :mod:`jaxviz.viz.plotting` draws them and the CLI writes them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.nn.arguments import check_layer, check_params
from jaxviz.nn.protocol import Model

STAT_NAMES = ("mean", "std", "min", "max", "near_zero")


class LayerWeights(NamedTuple):
    layer: str
    kernel: np.ndarray  # conv: kh x kw x in x out (HWIO, as Keras); dense: in x out
    bias: np.ndarray
    counts: np.ndarray  # histogram of the kernel values (int64, ``bins``)
    edges: np.ndarray  # bin edges (float64, ``bins + 1``)
    stats: np.ndarray  # float64, in the order of STAT_NAMES

    def _repr_html_(self) -> str:
        from jaxviz.viz.display import html

        return html(self)

    def _repr_png_(self) -> bytes | None:
        from jaxviz.viz.display import png

        return png(self)


def weight_stats(w: np.ndarray, near_zero: float = 0.01) -> np.ndarray:
    """``[mean, std, min, max, fraction with |w| < near_zero]`` of all values of ``w`` (float64)."""
    w = np.asarray(w, np.float64).ravel()
    return np.array([w.mean(), w.std(), w.min(), w.max(), np.mean(np.abs(w) < near_zero)])


def layer_weights(model: Model, params: Any, layer: str, bins: int = 10, near_zero: float = 0.01) -> LayerWeights:
    """Kernel, bias, histogram (``numpy.histogram``, ``bins`` equal bins as ``plt.hist``) and stats of one layer.

    Any layer with weights works: conv and dense kernels, the depthwise k x k kernels of separable and
    depthwise convs (as k x k x 1 x C), batch-norm gammas; a layer without weights is an error that
    names the layers that have them.
    """
    check_layer(model, layer)
    check_params(model, params)
    p = model.layer_params(params, layer)
    if not p:
        with_weights = [n for n in model.layer_names if model.layer_params(params, n)]
        raise JaxvizError(f"layer {layer!r} of {model.name} has no weights; layers with weights: {', '.join(with_weights)}")
    if "kernel" in p:
        kernel = np.asarray(p["kernel"], np.float32)
    elif "depthwise_kernel" in p:  # separable/depthwise: the spatial k x k kernels, one per channel (k x k x 1 x C)
        kernel = np.asarray(p["depthwise_kernel"], np.float32).transpose(0, 1, 3, 2)
    elif "gamma" in p or "scale" in p:  # batch norm: the scales (Keras gamma, Flax scale)
        kernel = np.asarray(p.get("gamma", p.get("scale")), np.float32)
    else:  # any other weighted layer: its first weight
        kernel = np.asarray(next(iter(p.values())), np.float32)
    counts, edges = np.histogram(kernel.reshape(-1), bins=bins)
    bias = np.asarray(p.get("bias", p.get("beta", np.zeros(0))), np.float32)
    return LayerWeights(layer, kernel, bias, counts, edges, weight_stats(kernel, near_zero))


def kernel_tiles(kernel: np.ndarray, in_channel: "int | str" = 0, limit: int | None = None) -> np.ndarray:
    """One tile per output filter of a conv kernel (kh x kw x in x out).

    ``in_channel``: an input-channel index → ``kernel[:, :, in_channel, i]`` as in seed 004 (values
    unchanged, N x kh x kw); ``"rgb"`` (3 input channels only) → colour tiles, each filter min-max
    scaled to [0, 1] on its own (N x kh x kw x 3), as for VGG16 ``block1_conv1``.
    """
    if kernel.ndim != 4:
        raise JaxvizError(f"kernel tiles need a conv kernel (kh x kw x in x out), got shape {kernel.shape}")
    n = kernel.shape[-1] if limit is None else min(limit, kernel.shape[-1])
    if in_channel == "rgb":
        if kernel.shape[2] != 3:
            raise JaxvizError(f"colour tiles need 3 input channels; this kernel has {kernel.shape[2]}: "
                              f"pick in_channel=0..{kernel.shape[2] - 1}")
        w = np.moveaxis(kernel[..., :n], -1, 0)
        lo = w.min(axis=(1, 2, 3), keepdims=True)
        span = np.maximum(w.max(axis=(1, 2, 3), keepdims=True) - lo, 1e-12)
        return (w - lo) / span
    if not isinstance(in_channel, (int, np.integer)) or not 0 <= in_channel < kernel.shape[2]:
        raise JaxvizError(f"input channel {in_channel!r} out of range: this kernel has {kernel.shape[2]} "
                          f"(0..{kernel.shape[2] - 1}{', or rgb' if kernel.shape[2] == 3 else ''})")
    return np.moveaxis(kernel[:, :, in_channel, :n], -1, 0)
