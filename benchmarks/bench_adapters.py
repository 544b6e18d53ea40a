"""An adapted Flax NNX model against the same architecture as a zoo graph: compile time (first call) and
steady time (median of later calls) of filter_patterns (16 filters) and explain (8 images).

The NNX module is seed 004's Fashion CNN written by hand (conv 32 same relu, 2x2 max pool, conv 64,
pool, flatten, dense 100 relu, dense 10) with the zoo model's weights copied in, so both compute the
same function (checked). Run: python benchmarks/bench_adapters.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxviz


class FashionNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv2d = nnx.Conv(1, 32, (3, 3), rngs=rngs)
        self.conv2d_1 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(64 * 7 * 7, 100, rngs=rngs)
        self.dense_1 = nnx.Linear(100, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.conv2d(x)), (2, 2), (2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2d_1(x)), (2, 2), (2, 2))
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.dense_1(x)


def timed(fn, repeat: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    zoo = jaxviz.load_model("fashion_cnn")
    net = FashionNNX(nnx.Rngs(0))
    for name in ("conv2d", "conv2d_1", "dense", "dense_1"):
        getattr(net, name).kernel[...] = jnp.asarray(zoo.params[name]["kernel"])
        getattr(net, name).bias[...] = jnp.asarray(zoo.params[name]["bias"])
    nnx_b = jaxviz.adapt(net, input_shape=(28, 28, 1), outputs="logits", name="fashion_nnx")
    x = np.asarray(jax.random.uniform(jax.random.key(1), (8, 28, 28, 1)), np.float32)
    diff = float(np.abs(np.asarray(nnx_b.model.run(nnx_b.params, x).logits)
                        - np.asarray(zoo.model.run(zoo.params, x).logits)).max())
    print(f"same function: max |logit difference| = {diff:.2e}")
    recipe = jaxviz.get_recipe("dlwp2", size=56, steps=30)
    print("| task | model | compile (first call) s | steady s |")
    print("| --- | --- | --- | --- |")
    for label, b, one in (("zoo graph", zoo, True), ("zoo graph, all channels computed", zoo, False),
                          ("adapted NNX", nnx_b, True)):
        first, steady = timed(lambda: jaxviz.filter_patterns(b.model, b.params, "conv2d_1", range(16), recipe,
                                                             single_channel=one).patterns, args.repeat)
        print(f"| filter_patterns, 16 filters, 30 steps | {label} | {first:.2f} | {steady:.2f} |")
    for label, b in (("zoo graph", zoo), ("adapted NNX", nnx_b)):
        first, steady = timed(lambda: jaxviz.explain(b.model, b.params, x, layer="conv2d_1").heatmaps, args.repeat)
        print(f"| explain (gradcam), 8 images | {label} | {first:.3f} | {steady:.4f} |")


if __name__ == "__main__":
    main()
