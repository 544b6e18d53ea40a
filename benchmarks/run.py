"""One benchmark runner: jaxviz beside the seed algorithm in Keras, on whatever device JAX finds.

    python benchmarks/run.py [--quick] [--filters N] [--cam-batch N] [--rounds R] [--skip-keras]
                             [--profile] [--sweep]

Three workloads, each timed after compilation (the first call is reported separately), jaxviz and
Keras in turn (A B A B ...: ``--rounds`` pairs); the table gives each side's median and the median
of the pairwise ratios, so a change in the machine's load during the run falls on both sides:

* ``filters``: seed 002's filter grid -- VGG16 cut at ``block3_conv1``, 200x200, 30 steps of the
  L2-normalised gradient, N filters (jaxviz: ``filter_patterns`` with its default chunking and
  without its quality measurement, which the seed does not do; the seed's Python loop of one
  ``tf.function`` step per iteration and filter in Keras);
* ``gradcam``: VGG16 at 224x224, Grad-CAM on ``block5_conv3`` for a batch (jaxviz: one jitted call;
  Keras: the seed's eager GradientTape per image, and the same inside one ``tf.function`` batch);
* ``activations``: every conv and pool layer of VGG16 for one 224x224 image (jaxviz ``tap``; Keras: a
  multi-output ``keras.Model(...).predict`` as in Listing 5.28).

Keras runs on TensorFlow when it is installed (``pip install tensorflow-cpu`` in this benchmark's own
environment: the seeds' setting), else on its JAX backend. Random weights throughout: time does not
depend on values. GFLOP/s counts convolution and dense multiply-adds (x2) of the work each method must
do, against the measured ceilings: a large float32 matmul (XLA, numpy, TensorFlow) and, on a CPU
with a C compiler, the register-only FMA kernel ``benchmarks/fma_ceiling.c``. Prints one table;
``--profile`` adds the per-op breakdown of ``benchmarks/profile.py`` and ``--sweep`` the batch-size
sweeps of ``benchmarks/sweep.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

if importlib.util.find_spec("tensorflow") and "KERAS_BACKEND" not in os.environ:
    os.environ["KERAS_BACKEND"] = "tensorflow"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from jaxviz import get_model  # noqa: E402
from jaxviz.nn import layers as L  # noqa: E402
from jaxviz.methods.attribution import explain  # noqa: E402
from jaxviz.methods.features import filter_patterns, get_recipe  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def ab(ours: Callable, seed: Callable | None, rounds: int) -> tuple[float, float | None, float | None]:
    """(jaxviz median s, Keras median s, median of the pairwise ratios Keras/jaxviz): the two timed in
    turn, ``rounds`` pairs, each already warm. ``seed`` None: jaxviz alone."""
    a, b = [], []
    for _ in range(rounds):
        a.append(timed(ours))
        if seed is not None:
            b.append(seed())
    if seed is None:
        return statistics.median(a), None, None
    return statistics.median(a), statistics.median(b), statistics.median([y / x for x, y in zip(a, b)])


def fma_ceiling() -> float | None:
    """GFLOP/s of ``fma_ceiling.c`` (one thread per CPU) when a C compiler builds it, else None."""
    src = os.path.join(os.path.dirname(__file__), "fma_ceiling.c")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "fma")
        try:
            subprocess.run(["cc", "-O2", "-march=native", "-fopenmp", src, "-o", exe], check=True,
                           capture_output=True, timeout=60)
            env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
            out = subprocess.run([exe, "50000000"], check=True, capture_output=True, text=True, env=env, timeout=120)
            return float(out.stdout.split()[-1])
        except (OSError, subprocess.SubprocessError, ValueError):
            return None


def measured_peak() -> tuple[float, str]:
    """The best GFLOP/s of a 4096^3 float32 matmul by XLA, numpy (BLAS) and TensorFlow (when installed)."""
    n = 4096
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    rates = {"XLA": 2 * n**3 / timed(lambda: f(a), 5) / 1e9}
    b = np.ones((n, n), np.float32)
    rates["numpy"] = 2 * n**3 / timed(lambda: b @ b, 3) / 1e9
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        import tensorflow as tf

        t = tf.ones((n, n))
        (t @ t).numpy()
        rates["TensorFlow"] = 2 * n**3 / timed(lambda: (t @ t).numpy(), 5) / 1e9
    best = max(rates, key=rates.get)
    text = ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
    if jax.default_backend() == "cpu":
        fma = fma_ceiling()
        text += f"; register-only FMA ceiling {fma:.0f}" if fma else "; FMA ceiling: no C compiler"
    return rates[best], text


def forward_gflop(model, until: str, shape, last_channels: int | None = None) -> float:
    """Multiply-adds x 2 of the conv and dense layers up to ``until`` for one image; the last layer
    counted with ``last_channels`` output channels (1 when only one filter is needed)."""
    total, shapes = 0.0, dict(model.shapes(shape))
    ins = model._input_shapes(shape)
    for name, layer in model.layers[: model.index(until) + 1]:
        if isinstance(layer, L.Conv2D):
            h, w, c = shapes[name]
            c = last_channels if (name == until and last_channels) else c
            total += 2 * h * w * c * layer.kernel_size**2 * ins[name][-1]
        elif isinstance(layer, L.Dense):
            total += 2 * ins[name][-1] * layer.features
    return total / 1e9


# ---------------------------------------------------------------------------------------------
# Keras (seed) versions


def keras_filters(n: int, steps: int) -> Callable[[], float]:
    """The seed loop, compiled and warm: calling it runs ``n`` patterns and returns its seconds."""
    import keras

    km = keras.applications.VGG16(weights=None, include_top=False, input_shape=(200, 200, 3))
    fe = keras.Model(km.input, km.get_layer("block3_conv1").output)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(image, f):  # seed 002's gradient_ascent_step
            with tf.GradientTape() as tape:
                tape.watch(image)
                loss = tf.reduce_mean(fe(image)[:, 2:-2, 2:-2, f])
            return image + 10.0 * tf.math.l2_normalize(tape.gradient(loss, image))

        def start():
            return tf.random.uniform((1, 200, 200, 3), 0.4, 0.6)
    else:  # the same loop on Keras's JAX backend: a jitted stateless step
        tv = [v.value for v in fe.trainable_variables]
        ntv = [v.value for v in fe.non_trainable_variables]

        def loss(image, f):
            out, _ = fe.stateless_call(tv, ntv, image)
            return jnp.mean(jax.lax.dynamic_index_in_dim(out[:, 2:-2, 2:-2, :], f, axis=3, keepdims=False))

        @jax.jit
        def step(image, f):
            g = jax.grad(loss)(image, f)
            return image + 10.0 * g * jax.lax.rsqrt(jnp.maximum(jnp.sum(g * g), 1e-12))

        def start():
            return jax.random.uniform(jax.random.key(0), (1, 200, 200, 3), minval=0.4, maxval=0.6)

    jax.block_until_ready(step(start(), 0))  # trace/compile once

    def loop() -> float:
        t0 = time.perf_counter()
        for f in range(n):
            img = start()
            for _ in range(steps):
                img = step(img, f)
            np.asarray(img)
        return time.perf_counter() - t0

    return loop


def keras_gradcam(batch: int) -> tuple[Callable[[], float], Callable[[], float]]:
    """(seed eager tape, one image at a time; the same in one tf.function over the batch), each a warm
    callable returning its seconds."""
    import keras

    km = keras.applications.VGG16(weights=None, include_top=True)
    gm = keras.Model(km.input, [km.get_layer("block5_conv3").output, km.output])
    x = np.random.default_rng(0).uniform(-120, 120, (batch, 224, 224, 3)).astype(np.float32)
    if keras.backend.backend() != "tensorflow":  # Keras on JAX: the same algorithm, jax.grad for the tape
        tail = [km.get_layer(n) for n in ("block5_pool", "flatten", "fc1", "fc2", "predictions")]

        def cam(xb):
            feats, preds = gm(xb)
            c = jnp.argmax(preds, axis=-1)

            def score(f):
                for layer in tail:
                    f = layer(f)
                return jnp.sum(jnp.take_along_axis(f, c[:, None], axis=1))

            w = jax.grad(score)(feats).mean(axis=(1, 2), keepdims=True)
            return jax.nn.relu((feats * w).mean(-1))

        jcam = jax.jit(cam)
        jax.block_until_ready(jcam(x[:1]))
        jax.block_until_ready(jcam(x))
        return (lambda: timed(lambda: [jcam(x[i:i + 1]) for i in range(batch)][-1])), (lambda: timed(lambda: jcam(x)))
    import tensorflow as tf

    def eager(xi):  # Listing 5.42 with GradientTape, one image
        with tf.GradientTape() as tape:
            feats, preds = gm(xi)
            c = tf.argmax(preds[0])
            loss = preds[:, c]
        g = tape.gradient(loss, feats)
        w = tf.reduce_mean(g, axis=(0, 1, 2))
        return tf.nn.relu(tf.reduce_mean(feats[0] * w, axis=-1))

    @tf.function
    def batched(xb):
        with tf.GradientTape() as tape:
            feats, preds = gm(xb)
            loss = tf.reduce_sum(tf.reduce_max(preds, axis=-1))
        g = tape.gradient(loss, feats)
        w = tf.reduce_mean(g, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_mean(feats * w, axis=-1))

    eager(x[:1])
    batched(x).numpy()
    return (lambda: timed(lambda: [eager(x[i:i + 1]).numpy() for i in range(batch)])), \
        (lambda: timed(lambda: batched(x).numpy()))


def keras_activations() -> Callable[[], float]:
    import keras

    km = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    layers = [l for l in km.layers[1:]]
    am = keras.Model(km.input, [l.output for l in layers])
    x = np.random.default_rng(0).uniform(-120, 120, (1, 224, 224, 3)).astype(np.float32)
    am.predict(x, verbose=0)
    return lambda: timed(lambda: am.predict(x, verbose=0))


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts (4 filters, batch 4, 2 rounds)")
    p.add_argument("--filters", type=int, help="filter patterns (default 64, --quick 4)")
    p.add_argument("--cam-batch", type=int, help="Grad-CAM batch (default 16, --quick 4)")
    p.add_argument("--rounds", type=int, help="jaxviz/Keras pairs timed in turn per workload (default 3, --quick 2)")
    p.add_argument("--skip-keras", action="store_true", help="jaxviz only")
    p.add_argument("--profile", action="store_true", help="add the per-op breakdown (benchmarks/profile.py)")
    p.add_argument("--sweep", action="store_true", help="add the batch-size sweeps (benchmarks/sweep.py)")
    p.add_argument("--all-conv1", action="store_true",
                   help="add jaxviz's time for all 64 patterns of each block*_conv1 layer (seed 002's settings)")
    args = p.parse_args(argv)
    n_f = args.filters or (4 if args.quick else 64)
    n_c = args.cam_batch or (4 if args.quick else 16)
    rounds = args.rounds or (2 if args.quick else 3)
    dev = jax.devices()[0]
    load = os.getloadavg()[0]
    peak, peaks = measured_peak()
    backend = None
    if not args.skip_keras:
        import keras

        backend = keras.backend.backend()
    print(f"{time.strftime('%Y-%m-%d')}, device: {jax.device_count()} x {dev.device_kind} ({dev.platform}), "
          f"{os.cpu_count()} CPUs; float32 GFLOP/s: {peaks} (peak = the best matmul); Keras "
          f"{'skipped' if backend is None else backend}; load average {load:.2f} at the start")
    rows = []
    key = jax.random.key(0)

    # 1. filters (default chunking, as a user gets it; no quality measurement: the seed has none)
    vgg = get_model("vgg16_notop")
    params = vgg.init(key, (200, 200, 3))
    recipe = get_recipe("dlwp2")

    def ours_filters():
        return filter_patterns(vgg, params, "block3_conv1", range(n_f), recipe, key, quality=False).patterns

    t0 = time.perf_counter()
    jax.block_until_ready(ours_filters())
    first = time.perf_counter() - t0
    fwd = forward_gflop(vgg, "block3_conv1", (200, 200, 3), last_channels=1)
    work = n_f * recipe.steps * 2 * fwd  # forward + input gradient per step
    seed = keras_filters(n_f, recipe.steps) if backend else None
    rows.append((f"filters: {n_f} patterns, 200px, 30 steps", *ab(ours_filters, seed, rounds), work, first))

    # 2. Grad-CAM
    vt = get_model("vgg16")
    params = vt.init(key)
    x = np.random.default_rng(0).uniform(-120, 120, (n_c, 224, 224, 3)).astype(np.float32)
    t0 = time.perf_counter()
    explain(vt, params, x)
    first = time.perf_counter() - t0

    def ours_cam():
        return explain(vt, params, x).heatmaps

    work = n_c * (forward_gflop(vt, "predictions", (224, 224, 3)) + forward_gflop(vt, "predictions", (224, 224, 3))
                  - forward_gflop(vt, "block5_conv3", (224, 224, 3)))  # forward + gradient of the tail
    if backend:
        eager, batched = keras_gradcam(n_c)
        compiled = "tf.function" if backend == "tensorflow" else "jax.jit"
        rows.append((f"gradcam: {n_c} images (Keras: {compiled} batch)", *ab(ours_cam, batched, rounds), work, first))
        rows.append((f"gradcam: {n_c} images (Keras: seed, per image)", *ab(ours_cam, eager, 1), work, None))
    else:
        rows.append((f"gradcam: {n_c} images", *ab(ours_cam, None, rounds), work, first))

    # 3. activations
    names = tuple(vgg.names_of_kind("conv", "pool"))
    params = vgg.init(key, (224, 224, 3))
    x1 = x[:1]
    t0 = time.perf_counter()
    jax.block_until_ready(vgg.jit_tap(params, x1, names))
    first = time.perf_counter() - t0
    seed = keras_activations() if backend else None
    rows.append(("activations: 18 VGG16 layers, 1 image", *ab(lambda: vgg.jit_tap(params, x1, names), seed, rounds * 5),
                 forward_gflop(vgg, "block5_pool", (224, 224, 3)), first))

    print(f"\n| workload | jaxviz s | Keras s | Keras / jaxviz (median of {rounds} pairs) | jaxviz GFLOP/s | % of peak "
          f"| 1st call s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, ours, seed, ratio, work, first in rows:
        print(f"| {name} | {ours:.2f} | {seed if seed else float('nan'):.2f} | "
              f"{f'{ratio:.2f}x' if ratio else '-'} | {work / ours:.0f} | {100 * work / ours / peak:.0f}% | "
              f"{first if first else float('nan'):.1f} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    sys.stdout.flush()
    if args.all_conv1:
        vgg = get_model("vgg16_notop")
        params = vgg.init(key, (200, 200, 3))
        print("\n| layer | 64 patterns, s (first call, compile included) | then, s |\n| --- | ---: | ---: |")
        for b in range(1, 6):
            def run64(layer=f"block{b}_conv1"):
                return filter_patterns(vgg, params, layer, range(64), recipe, key, quality=False).patterns

            t0 = time.perf_counter()
            jax.block_until_ready(run64())
            first = time.perf_counter() - t0
            print(f"| block{b}_conv1 | {first:.2f} | {timed(run64):.2f} |", flush=True)
    if args.profile:
        from benchmarks import profile

        profile.main(["--cam-batch", str(n_c), "--repeat", "3"])
    if args.sweep:
        from benchmarks import sweep

        sweep.main(["--rounds", str(rounds)])


if __name__ == "__main__":
    main()
