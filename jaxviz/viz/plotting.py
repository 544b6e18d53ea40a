"""matplotlib figures in the seeds' styles. Only this module, io, the CLI and experiments plot."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def activation_figure(grid: np.ndarray, layer_name: str, tile_size: int):
    """Seed Listing 5.31: the grid with viridis, the layer name as title, figure size = grid / tile size.
    No axes: the grid's pixel coordinates mean nothing to a reader (the seed's ticks are dropped)."""
    scale = 1.0 / tile_size
    fig = plt.figure(figsize=(max(scale * grid.shape[1], 2.0), max(scale * grid.shape[0], 1.0)))
    plt.title(layer_name)
    plt.grid(False)
    plt.imshow(grid, aspect="auto", cmap="viridis")
    plt.axis("off")
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


def kernel_mosaic(tiles: np.ndarray, rows: int = 2, cols: int = 16, vmin=-0.5, vmax=0.5, title: str = ""):
    """Seed 004: ``tiles[i]`` (from :func:`jaxviz.methods.weights.kernel_tiles`) on a rows x cols grid,
    ``imshow(..., vmin=-0.5, vmax=0.5)``, axes off. Colour tiles (N x kh x kw x 3) are shown as they are.
    """
    fig, axs = plt.subplots(rows, cols, figsize=(15, 15 * rows / cols + (0.4 if title else 0.2)), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            k = i * cols + j
            ax = axs[i, j]
            ax.axis("off")
            if k < len(tiles):
                ax.imshow(tiles[k], vmin=vmin, vmax=vmax) if tiles.ndim == 3 else ax.imshow(tiles[k])
    if title:
        fig.suptitle(title)
    return fig


def histograms(hists: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Seed 004's ``plt.hist(w.reshape(-1, 1))`` side by side, one panel per ``title: (counts, edges)``.

    Drawn from precomputed ``numpy.histogram`` counts so the picture and ``weights.npz`` agree.
    """
    fig, axs = plt.subplots(1, len(hists), figsize=(5 * len(hists), 4), squeeze=False)
    for ax, (title, (counts, edges)) in zip(axs[0], hists.items()):
        ax.stairs(counts, edges, fill=True)
        ax.set_xlabel("weight")
        ax.set_ylabel("count")
        ax.set_title(title)
    fig.tight_layout()
    return fig


def image_strip(images: np.ndarray, titles: list[str], cmap: str | None = "gray_r"):
    """A row of images with a title each (seed 004 shows digits and clothes with ``cmap="gray_r"``; colour
    photos take ``cmap=None``)."""
    fig, axs = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2.0), squeeze=False)
    for ax, im, t in zip(axs[0], images, titles):
        ax.imshow(im, cmap=cmap)
        ax.set_title(t, fontsize=7)
        ax.axis("off")
    return fig


def heatmap_figure(heatmap: np.ndarray, title: str = ""):
    """Listing 5.42's ``plt.matshow(heatmap)``, in the JET colours of the overlay
    (:func:`jaxviz.viz.render.superimpose`) on the same 0..1 scale, with a colour bar and no axes."""
    fig = plt.figure(figsize=(4, 4))
    im = plt.matshow(heatmap, fignum=fig.number, cmap="jet", vmin=0.0, vmax=1.0)
    plt.axis("off")
    plt.colorbar(im, fraction=0.046, pad=0.04)
    if title:
        plt.title(title, fontsize=9)
    return fig


def curves_figure(curves: dict, title: str = ""):
    """The mean deletion and insertion curves of each method (``{method: {"deletion"|"insertion": S+1
    values}}``, :class:`jaxviz.methods.evaluate.Evaluation`'s ``curves``), the random map dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for m, per in curves.items():
            if kind in per:
                c = np.asarray(per[kind])
                ax.plot(np.linspace(0, 1, len(c)), c, "--" if m == "random" else "-", label=m)
        ax.set_title(f"{kind}{': lower is better' if kind == 'deletion' else ': higher is better'}", fontsize=9)
        ax.set_xlabel("share of pixels changed", fontsize=8)
        ax.set_ylabel("class probability", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: "str | os.PathLike", dpi: int = 72) -> None:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
