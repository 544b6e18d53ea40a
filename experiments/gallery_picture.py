"""The README's picture: a few figures of ``jaxviz demo`` side by side.

    jaxviz demo --out gallery && python experiments/gallery_picture.py gallery docs/gallery.png
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PICKS = [
    ("digits/filters/conv2d_1.png", "digits_cnn conv2d_1: 64 filter patterns (dlwp2)"),
    ("digits/cam/gradcam/image3_overlay.png", "Grad-CAM, digit 3"),
    ("digits/cam/guided/image3_overlay.png", "guided backprop, digit 3"),
    ("fashion/weights/conv2d_hist.png", "seed 004: trained vs untrained weights"),
    ("fashion/weights/conv2d_kernels.png", "seed 004: conv2d kernels (trained)"),
    ("digits/activations/conv2d.png", "digits_cnn conv2d activations"),
]


def main(src: str, dest: str) -> None:
    fig, axs = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (rel, title) in zip(axs.ravel(), PICKS):
        im = plt.imread(f"{src}/{rel}")
        ax.imshow(im, interpolation="nearest", cmap="gray" if im.ndim == 2 else None)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(dest, dpi=72)


if __name__ == "__main__":
    main(*sys.argv[1:3])
