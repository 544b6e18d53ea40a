"""Seed-002 filter workload: VGG16 cut at block3_conv1, 200x200, 30 steps, N filters, random weights.

    python benchmarks/bench_filters.py [--filters 64] [--batch-size 8] [--dtype bfloat16] [--keras]

Prints compile time and steady-state time for jaxviz (float32); with --keras, also the seed loop
(tf.function + GradientTape, one filter at a time) in Keras on whatever backend is installed
(install tensorflow-cpu in the benchmark's own environment for the TensorFlow figure).
"""

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, ".")
from jaxviz import get_model  # noqa: E402
from jaxviz.methods.features import filter_patterns, get_recipe  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layer", default="block3_conv1")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--keras", action="store_true")
    args = p.parse_args()
    model = get_model("vgg16_notop")
    params = model.init(jax.random.key(0), (200, 200, 3))
    recipe = get_recipe("dlwp2", dtype=args.dtype)
    n, b = args.filters, args.batch_size
    t0 = time.perf_counter()
    filter_patterns(model, params, args.layer, range(b), recipe, batch_size=b)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    filter_patterns(model, params, args.layer, range(n), recipe, batch_size=b)
    steady = time.perf_counter() - t0
    print(f"device: {jax.devices()[0].device_kind}  layer {args.layer}  200x200  30 steps")
    print(f"jaxviz {args.dtype}: first call (compile + {b} patterns) {first:.1f} s; {n} patterns {steady:.1f} s "
          f"({steady / n:.2f} s/pattern, {n / steady * 64:.0f} s per 64 -> {steady / n * 64:.1f} s for 64)")
    if args.keras:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras
        import tensorflow as tf

        km = keras.applications.VGG16(weights=None, include_top=False, input_shape=(200, 200, 3))
        fe = keras.Model(km.input, km.get_layer(args.layer).output)

        @tf.function
        def step(image, f):
            with tf.GradientTape() as tape:
                tape.watch(image)
                loss = tf.reduce_mean(fe(image)[:, 2:-2, 2:-2, f])
            g = tf.math.l2_normalize(tape.gradient(loss, image))
            return image + 10.0 * g

        img = tf.random.uniform((1, 200, 200, 3), 0.4, 0.6)
        step(img, 0)
        t0 = time.perf_counter()
        for f in range(n):
            img = tf.random.uniform((1, 200, 200, 3), 0.4, 0.6)
            for _ in range(30):
                img = step(img, f)
        dt = time.perf_counter() - t0
        print(f"Keras seed loop ({keras.backend.backend()}): {n} patterns {dt:.1f} s -> ratio {dt / steady:.2f}x")


if __name__ == "__main__":
    main()
