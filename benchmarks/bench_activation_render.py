"""Rendering all 8 layers of cats_dogs_small: the seed's nested loops vs jaxviz's vectorised grid.

    python benchmarks/bench_activation_render.py

Both render the same arrays (one forward pass on sample:chelsea at 150x150); best of 7 runs.
"""

import sys
import time
import warnings

import jax
import numpy as np

sys.path.insert(0, ".")
from benchmarks.seed_render import seed_display_grid  # noqa: E402
from jaxviz import get_model, load_image, preprocess  # noqa: E402
from jaxviz.methods.activations import activations  # noqa: E402
from jaxviz.viz.render import activation_grid  # noqa: E402


def best_of(f, n=7):
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    model = get_model("cats_dogs_small")
    params = model.init(jax.random.key(0))
    x = preprocess(load_image("sample:chelsea", (150, 150))[None], "scale255")
    acts = {k: np.asarray(v) for k, v in activations(model, params, x).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the seed divides dead channels by a zero std
        seed = best_of(lambda: [seed_display_grid(a) for a in acts.values()])
    ours = best_of(lambda: [activation_grid(a[0]) for a in acts.values()])
    print(f"{'renderer':28s} {'seconds (8 layers)':>20s}")
    print(f"{'seed nested loops':28s} {seed:20.4f}")
    print(f"{'jaxviz activation_grid':28s} {ours:20.4f}")
    print(f"speed-up: {seed / ours:.1f}x")


if __name__ == "__main__":
    main()
