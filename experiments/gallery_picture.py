"""The README's picture: the real network's rows of the full ``jaxviz demo`` gallery, one above the other.

    jaxviz demo --out gallery && python experiments/gallery_picture.py gallery docs/gallery.png

Rows: EfficientNet-Lite0's filter patterns at two depths (titles carry their measured quality, read from
the demo's npz files), its class visualisations of the photos' classes, and the comparison of every
attribution method on the photos.
"""

import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LAYERS = ("block2b_expand_activation", "block4b_expand_activation")


def pattern_title(src: str, layer: str) -> str:
    """The layer's quality figures, read from the demo's npz: good = above the best photo and structured
    (:func:`jaxviz.methods.featurevis.quality.structure` on the pictures as shown)."""
    from jaxviz.methods.featurevis.quality import structure

    z = np.load(f"{src}/lite0/filters/{layer}.npz")
    beat = z["objective"] > z["photo_best"]
    good = int(np.sum(beat & structure(z["images"]).structured))
    n = len(z["filters"])
    return (f"EfficientNet-Lite0 {layer}, units {z['filters'].min()}..{z['filters'].max()} (lucid): {good}/{n} good "
            f"(above the best photo and structured), robustness {np.median(z['robustness']):.2f}, high-freq. "
            f"energy {np.median(z['hf_energy']):.2f}, own unit strongest {int(np.sum(z['selectivity'] > 0))}/{n}")


def main(src: str, dest: str) -> None:
    rows = [(f"{src}/lite0/filters/{layer}.png", pattern_title(src, layer)) for layer in LAYERS]
    rows += [(f"{src}/lite0/classes/classes.png", "EfficientNet-Lite0: class visualisations of the photos' classes "
              "(recipe lucid_class); p: the model's probability at 224x224"),
             (f"{src}/lite0/compare.png", "EfficientNet-Lite0: every attribution method on the photos, for each "
              "photo's top-1 class (layer maps over the photo, pixel maps alone)")]
    import textwrap

    images = [plt.imread(path) for path, _ in rows]
    line_px, gap_px = 15, 10
    width = max(im.shape[1] for im in images)  # each picture at its own pixel size, none enlarged
    # titles wrapped to the picture's width (at most 8 pixels per character at 9 points), never cut
    titles = [textwrap.fill(title, max(40, width // 8)) for _, title in rows]
    title_pxs = [line_px * (t.count("\n") + 1) + 7 for t in titles]
    height = sum(im.shape[0] + t + gap_px for im, t in zip(images, title_pxs))
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    top = height
    for im, title, title_px in zip(images, titles, title_pxs):
        top -= title_px
        fig.text(0.0, top / height, title, fontsize=9, va="bottom", linespacing=1.2)
        h, w = im.shape[:2]
        ax = fig.add_axes([0.0, (top - h) / height, w / width, h / height])
        ax.imshow(im, interpolation="nearest")
        ax.axis("off")
        top -= h + gap_px
    fig.savefig(dest, dpi=dpi, facecolor="white")


if __name__ == "__main__":
    main(*sys.argv[1:3])
