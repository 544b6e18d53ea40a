"""matplotlib figures in the seeds' styles. Only this module, io, the CLI and experiments plot."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def activation_figure(grid: np.ndarray, layer_name: str, tile_size: int):
    """Seed Listing 5.31: the grid with viridis, the layer name as title, figure size = grid / tile size."""
    scale = 1.0 / tile_size
    fig = plt.figure(figsize=(max(scale * grid.shape[1], 2.0), max(scale * grid.shape[0], 1.0)))
    plt.title(layer_name)
    plt.grid(False)
    plt.imshow(grid, aspect="auto", cmap="viridis")
    return fig


def feature_map_subplots(act: np.ndarray, rows: int, cols: int, figsize=None):
    """Seed 004: channels ``i*cols + j`` of an H x W x C map on a rows x cols grid of subplots (4x8, 8x8)."""
    figsize = figsize or {(4, 8): (15, 8), (8, 8): (12, 12)}.get((rows, cols), (1.5 * cols, 1.5 * rows))
    fig, axs = plt.subplots(rows, cols, figsize=figsize, squeeze=False)
    for i in range(rows):
        for j in range(cols):
            k = i * cols + j
            if k < act.shape[-1]:
                axs[i, j].imshow(act[:, :, k])
            axs[i, j].axis("off")
    return fig


def kernel_mosaic(kernel: np.ndarray, in_channel: int = 0, rows: int = 2, cols: int = 16, vmin=-0.5, vmax=0.5):
    """Seed 004: ``kernel[:, :, in_channel, i]`` for i < rows*cols, ``vmin=-0.5, vmax=0.5``.

    A kernel with 3 input channels and ``in_channel=None`` is shown as colour tiles (each filter
    min-max scaled to [0, 1]), as for VGG16 ``block1_conv1``.
    """
    fig, axs = plt.subplots(rows, cols, figsize=(15, 15 * rows / cols + 0.2), squeeze=False)
    n = kernel.shape[-1]
    for i in range(rows):
        for j in range(cols):
            k = i * cols + j
            ax = axs[i, j]
            ax.axis("off")
            if k >= n:
                continue
            if in_channel is None and kernel.shape[2] == 3:
                w = kernel[:, :, :, k]
                ax.imshow((w - w.min()) / max(float(w.max() - w.min()), 1e-12))
            else:
                ax.imshow(kernel[:, :, in_channel or 0, k], vmin=vmin, vmax=vmax)
    return fig


def histograms(arrays: dict[str, np.ndarray], bins: int = 10):
    """Seed 004: ``plt.hist(w.reshape(-1, 1))`` side by side for each named array (trained, untrained)."""
    fig, axs = plt.subplots(1, len(arrays), figsize=(5 * len(arrays), 4), squeeze=False)
    for ax, (title, w) in zip(axs[0], arrays.items()):
        ax.hist(np.asarray(w).reshape(-1, 1), bins=bins)
        ax.set_xlabel("weight")
        ax.set_ylabel("count")
        ax.set_title(title)
    fig.tight_layout()
    return fig


def heatmap_figure(heatmap: np.ndarray, title: str = ""):
    """Listing 5.42's ``plt.matshow(heatmap)``."""
    fig = plt.figure(figsize=(4, 4))
    plt.matshow(heatmap, fignum=fig.number)
    if title:
        plt.title(title)
    return fig


def save_figure(fig, path: "str | os.PathLike", dpi: int = 72) -> None:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
