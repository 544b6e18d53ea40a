"""Grad-CAM throughput: VGG16 at 224x224, block5_conv3, a batch of images, seconds per image.

    python benchmarks/bench_gradcam.py [--batch 16] [--method gradcam] [--repeat 3]

Random (untrained) weights: the cost does not depend on the values. Compile time is reported
separately and excluded from the per-image figure.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxviz.methods.attribution import compiled_explain
from jaxviz.nn import get_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--method", default="gradcam")
    p.add_argument("--layer", default="block5_conv3")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    model = get_model("vgg16")
    params = model.init(jax.random.key(0))
    x = jax.numpy.asarray(np.random.default_rng(0).uniform(-120, 120, (args.batch, 224, 224, 3)).astype(np.float32))
    cls = jax.numpy.asarray(np.arange(args.batch)[:, None] % 1000, jax.numpy.int32)
    fn = compiled_explain(model, (224, 224, 3), args.method, args.layer)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, x, cls, jax.random.split(jax.random.key(0), args.batch)))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x, cls, jax.random.split(jax.random.key(0), args.batch)))
        times.append(time.perf_counter() - t0)
    best = min(times)
    gflop = 30.7 * args.batch  # VGG16 conv+dense forward at 224x224: 15.5 G multiply-adds per image
    print(f"{args.method} vgg16 {args.layer} batch {args.batch} on {jax.devices()[0].device_kind}: "
          f"{best / args.batch:.4f} s/image (best of {args.repeat}; first call {compile_s:.1f} s incl. compile), "
          f"{gflop / best:.0f} GFLOP/s of forward work")


if __name__ == "__main__":
    main()
