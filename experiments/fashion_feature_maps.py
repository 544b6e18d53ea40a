"""Seed 004's Fashion-CNN feature maps (4x8 for conv2d, 8x8 for conv2d_1) with the real trained Keras file.

    python experiments/fashion_feature_maps.py [--weights ../shared/fixtures/keras/fashion_cnn_keras2.11.h5]

Fashion-MNIST itself is not shipped offline; the input is a real photo (scikit-image's camera man,
inverted to Fashion-MNIST's white-on-black and resized to 28x28) unless --image is given.
"""

import argparse
import os

import numpy as np

from jaxviz import load_image, load_model, preprocess
from jaxviz.methods.activations import activations
from jaxviz.io import output_dir
from jaxviz.viz.plotting import feature_map_subplots, save_figure

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "keras",
                               "fashion_cnn_keras2.11.h5")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=DEFAULT_WEIGHTS)
    p.add_argument("--image", default="sample:camera")
    p.add_argument("--out", default="out/fashion_feature_maps")
    args = p.parse_args()
    loaded = load_model(None, args.weights)
    pixels = load_image(args.image, (28, 28), interpolation="bilinear", channels=1)
    if args.image == "sample:camera":
        pixels = 255 - pixels
    x = preprocess(pixels[None], "scale255")
    acts = activations(loaded.model, loaded.params, x, ["conv2d", "conv2d_1"])
    with output_dir(args.out) as stage:
        save_figure(feature_map_subplots(np.asarray(acts["conv2d"][0]), 4, 8), os.path.join(stage, "conv2d_4x8.png"))
        save_figure(feature_map_subplots(np.asarray(acts["conv2d_1"][0]), 8, 8), os.path.join(stage, "conv2d_1_8x8.png"))
    print(f"wrote {args.out} ({loaded.source})")


if __name__ == "__main__":
    main()
