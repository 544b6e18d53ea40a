"""Batch-size sweeps, interleaved: Grad-CAM images per compiled call, filter patterns per compiled call.

    python benchmarks/sweep.py [--cam 1,2,4,8,16,32] [--filters 1,2,4,8] [--rounds 3]

Every batch size is compiled first; then each round times one call of every size in turn, so a change
in the machine's load during the run falls on all sizes alike. Prints the median per-image (per-pattern)
time of each size and its ratio to batch 1. Grad-CAM: VGG16 224x224, ``block5_conv3``, the compiled
call of :func:`jaxviz.explain` (top-1 class) and ``explain`` itself with its default chunking; filters:
seed 002 (VGG16 to ``block3_conv1``, 200x200, 30 steps) through :func:`jaxviz.filter_patterns` with
``batch_size`` = the size and as many filters, quality measurement off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from jaxviz import get_model  # noqa: E402


def interleaved(fns: dict[int, Callable], rounds: int) -> dict[int, float]:
    """Median seconds per item of each ``fns[size]()`` (which handles ``size`` items), sizes taken in turn."""
    for f in fns.values():
        jax.block_until_ready(f())
    times: dict[int, list[float]] = {b: [] for b in fns}
    for _ in range(rounds):
        for b, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[b].append((time.perf_counter() - t0) / b)
    return {b: statistics.median(t) for b, t in times.items()}


def report(title: str, per: dict[int, float], unit: str) -> None:
    base = per[min(per)]
    print(f"\n{title}\n\n| batch | s/{unit} | vs batch {min(per)} |\n| ---: | ---: | ---: |")
    for b, s in per.items():
        print(f"| {b} | {s:.4f} | {s / base:.2f}x |")
    sys.stdout.flush()


def cam_sweep(sizes: list[int], rounds: int) -> tuple[dict[int, float], dict[int, float]]:
    """(compiled call at each batch size, jaxviz.explain with its default chunking) per image."""
    from jaxviz.methods.attribution import compiled_explain, explain

    model = get_model("vgg16")
    params = model.init(jax.random.key(0))
    run = compiled_explain(model, (224, 224, 3), "gradcam", "block5_conv3", top1=True)
    x = np.random.default_rng(0).uniform(-120, 120, (max(sizes), 224, 224, 3)).astype(np.float32)

    def call(b):
        xb, cls = jax.numpy.asarray(x[:b]), jax.numpy.zeros((b, 1), jax.numpy.int32)
        keys = jax.random.split(jax.random.key(0), b)
        return lambda: run(params, xb, cls, keys)[0]

    compiled = interleaved({b: call(b) for b in sizes}, rounds)
    whole = interleaved({b: (lambda b=b: explain(model, params, x[:b]).heatmaps) for b in sizes}, rounds)
    return compiled, whole


def filter_sweep(sizes: list[int], rounds: int) -> dict[int, float]:
    from jaxviz.methods.features import filter_patterns, get_recipe

    model = get_model("vgg16_notop")
    params = model.init(jax.random.key(0), (200, 200, 3))
    recipe = get_recipe("dlwp2")

    def call(b):
        return lambda: filter_patterns(model, params, "block3_conv1", range(b), recipe, batch_size=b,
                                       quality=False).patterns

    return interleaved({b: call(b) for b in sizes}, rounds)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cam", default="1,2,4,8,16,32", help="Grad-CAM batch sizes ('' to skip)")
    p.add_argument("--filters", default="1,2,4,8", help="filter batch sizes ('' to skip)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if args.cam:
        compiled, whole = cam_sweep([int(s) for s in args.cam.split(",")], args.rounds)
        report("Grad-CAM, VGG16 224x224, block5_conv3: one compiled call of B images", compiled, "image")
        report("the same through jaxviz.explain (default chunking)", whole, "image")
    if args.filters:
        report("filters, seed 002, B patterns in one compiled call", filter_sweep(
            [int(s) for s in args.filters.split(",")], args.rounds), "pattern")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
