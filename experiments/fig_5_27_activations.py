"""Figure 5.27 (DLwP 1st ed.): every channel of the first 8 layers of cats_dogs_small on a cat photo.

    python experiments/fig_5_27_activations.py [--weights CKPT_OR_H5] [--out out/fig_5_27]

The book's trained cats-vs-dogs model is not available offline; without --weights the network is
untrained (said in the output), which still shows the layer-by-layer decomposition and sparsity.
"""

import argparse
import os

import numpy as np

from jaxviz import load_image, load_model, preprocess
from jaxviz.methods.activations import activations
from jaxviz.viz.render import layer_summary
from jaxviz.io import output_dir
from jaxviz.viz.plotting import activation_figure, save_figure


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights")
    p.add_argument("--image", default="sample:chelsea")
    p.add_argument("--out", default="out/fig_5_27")
    args = p.parse_args()
    loaded = load_model("cats_dogs_small" if args.weights is None else None, args.weights)
    print(f"{loaded.model.name}: {loaded.source}")
    x = preprocess(load_image(args.image, (150, 150))[None], "scale255")
    names = loaded.model.layer_names[:8]
    acts = {k: np.asarray(v) for k, v in activations(loaded.model, loaded.params, x, names).items()}
    with output_dir(args.out) as stage:
        for row in layer_summary(acts, 16):
            fig = activation_figure(row["grid"], row["layer"], acts[row["layer"]].shape[1])
            save_figure(fig, os.path.join(stage, f"{row['layer']}.png"))
            print(f"{row['layer']:18s} {str(row['shape']):16s} dead {row['dead']}/{row['channels']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
