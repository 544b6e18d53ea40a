"""Where the time goes: per-layer and per-op time of the three benchmark workloads.

    python benchmarks/profile.py [--section filters|gradcam|activations|all] [--filter-batch 1]
                                 [--cam-batch 16] [--repeat 5]

Each row is a jitted piece timed at the shape it has inside the workload (median of ``--repeat`` calls
after one warm-up), next to the FLOPs and bytes XLA's own cost analysis gives for it
(``jax.jit(f).lower(...).compile().cost_analysis()``):

* ``filters``: seed 002's step (VGG16 cut at ``block3_conv1``, 200x200, one output channel) -- per
  layer the forward (convolution alone, + bias and ReLU) and the backward to the input (convolution
  transpose, ReLU mask, pooling's one-hot scatter), the step's gradient normalisation and update, the
  whole step as one jit, 30 steps in one ``lax.scan`` and :func:`jaxviz.filter_patterns` itself (the
  rest is the Python loop between chunks and the final read-back);
* ``gradcam``: VGG16 at 224x224, ``block5_conv3``, a batch: every layer's forward, the tail's
  backward to ``block5_conv3`` (``fc1`` alone is 411 MB of weights read forward and backward), the
  compiled Grad-CAM call, :func:`jaxviz.explain` around it;
* ``activations``: every layer's forward for one 224x224 image against the 18-layer tap.

"rest" rows are the whole minus the sum of its parts: the time lost between the pieces (copies,
transposes, fusions XLA forms differently inside the whole). Random weights: time does not depend on
values. The machine's load changes these figures; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from jaxviz import get_model  # noqa: E402
from jaxviz.nn import layers as L  # noqa: E402


def median_time(fn: Callable, *args: Any, repeat: int = 5) -> float:
    """Median seconds of ``fn(*args)`` (blocked until ready) after one untimed call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cost(fn: Callable, *args: Any) -> tuple[float, float]:
    """(GFLOP, GB accessed) of ``jax.jit(fn)`` at ``args`` by XLA's cost analysis (NaN if unknown)."""
    try:
        c = jax.jit(fn).lower(*args).compile().cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c
        return float(c.get("flops", np.nan)) / 1e9, float(c.get("bytes accessed", np.nan)) / 1e9
    except Exception:  # a backend without cost analysis
        return float("nan"), float("nan")


class Table:
    """Rows of (piece, seconds, GFLOP, GB), printed with ms, GFLOP/s, GB/s and the share of a whole."""

    def __init__(self, title: str):
        self.title, self.rows = title, []

    def add(self, name: str, seconds: float, gflop: float = float("nan"), gb: float = float("nan")) -> float:
        self.rows.append((name, seconds, gflop, gb))
        return seconds

    def print(self, whole: float) -> None:
        print(f"\n## {self.title}\n")
        print("| piece | ms | % of whole | GFLOP | GFLOP/s | GB accessed | GB/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, s, gf, gb in self.rows:
            rate = f"{gf / s:.0f}" if s > 0 and gf == gf and gf > 0.05 else "-"
            bw = f"{gb / s:.0f}" if s > 0 and gb == gb else "-"
            print(f"| {name} | {1e3 * s:.1f} | {100 * s / whole:.0f}% | {gf:.2f} | {rate} | {gb:.3f} | {bw} |")
        sys.stdout.flush()


def layer_fn(model, params, name: str, logits: bool = False, channel: bool = False) -> Callable:
    """``x -> layer(x)`` for the model's layer ``name`` alone (``channel``: output channel 0 only)."""
    layer = model.layer(name)
    variables = {"params": params[name]} if L.has_params(layer) else {}
    if channel:
        return lambda x: layer.apply(variables, x, jnp.int32(0), logits=logits, method="one_channel")
    return lambda x: layer.apply(variables, x, logits=logits)


def conv_only(model, params, name: str, channel: bool = False) -> Callable:
    """The layer's convolution without bias and activation."""
    layer, k = model.layer(name), params[name]["kernel"]
    k = k[..., :1] if channel else k
    return lambda x: L.conv(x, k, layer.strides, layer.padding)


def per_layer(table: Table, model, params, names, shape, *, backward: bool, last_channel: str | None = None,
              repeat: int) -> float:
    """Rows for each layer of ``names`` at batch ``shape``; returns the sum of the times."""
    model.shapes(tuple(shape[1:]))
    ins = {n: i[0] for n, _, i, _ in model._walk(tuple(shape[1:]))}  # every layer's input shape
    total = 0.0
    for name in names:
        kind = model.kind(name)
        one = name == last_channel
        x = jnp.asarray(np.random.default_rng(0).normal(size=(shape[0],) + tuple(ins[name])).astype(np.float32))
        f = layer_fn(model, params, name, channel=one)
        y = jax.eval_shape(f, x)
        g = jnp.ones(y.shape, y.dtype)
        if kind == "conv":
            c = conv_only(model, params, name, channel=one)
            t_conv = median_time(jax.jit(c), x, repeat=repeat)
            t_fwd = median_time(jax.jit(f), x, repeat=repeat)
            total += table.add(f"{name} fwd: conv", t_conv, *cost(c, x))
            total += table.add(f"{name} fwd: + bias + ReLU", max(t_fwd - t_conv, 0.0))
            if backward:
                # the input gradient of the conv alone (the transposed conv), then of conv + bias + ReLU
                bc = lambda x, g, c=c: jax.vjp(c, x)[1](g)[0]  # noqa: E731
                bf = lambda x, g, f=f: jax.vjp(f, x)[1](g)[0]  # noqa: E731
                t_bc = median_time(jax.jit(bc), x, g, repeat=repeat)
                t_bf = median_time(jax.jit(bf), x, g, repeat=repeat)
                total += table.add(f"{name} bwd: conv transpose to the input", t_bc, *cost(bc, x, g))
                # vjp of conv + ReLU runs the forward conv too (the mask needs it): subtract it
                total += table.add(f"{name} bwd: ReLU mask", max(t_bf - t_bc - t_fwd, 0.0))
        else:
            t_fwd = median_time(jax.jit(f), x, repeat=repeat)
            total += table.add(f"{name} fwd ({kind})", t_fwd, *cost(f, x))
            if backward:
                b = lambda x, g, f=f: jax.vjp(f, x)[1](g)[0]  # noqa: E731
                t_b = median_time(jax.jit(b), x, g, repeat=repeat)
                total += table.add(f"{name} bwd ({kind}, forward included)", t_b, *cost(b, x, g))
    return total


# ------------------------------------------------------------------------------------------------


def profile_filters(batch: int, repeat: int) -> None:
    """Seed 002's step at ``batch`` filters per call."""
    from jaxviz.methods.features import filter_patterns, get_recipe

    model = get_model("vgg16_notop")
    params = model.init(jax.random.key(0), (200, 200, 3))
    layer = "block3_conv1"
    names = model.layer_names[model.index(model.resolve("block1_conv1")): model.index(layer) + 1]
    t = Table(f"filters: VGG16 to {layer}, 200x200, one channel, {batch} filter(s) per call, one step")
    parts = per_layer(t, model, params, names, (batch, 200, 200, 3), backward=True, last_channel=layer,
                      repeat=repeat)

    def loss(img, f):
        out = model.run(params, img, taps=(layer,), output=False, channel=(layer, f)).taps[layer]
        return jnp.mean(out[:, 2:-2, 2:-2, 0], axis=(1, 2)).sum()

    def update(img, g):  # tf.math.l2_normalize per image, step 10
        n = jax.lax.rsqrt(jnp.maximum(jnp.sum(g * g, axis=(1, 2, 3), keepdims=True), 1e-12))
        return img + 10.0 * g * n

    img = jax.random.uniform(jax.random.key(1), (batch, 200, 200, 3), minval=0.4, maxval=0.6)
    f0 = jnp.int32(0)
    parts += t.add("gradient normalisation + update", median_time(jax.jit(update), img, img, repeat=repeat),
                   *cost(update, img, img))

    def step(img, f):
        return update(img, jax.grad(loss)(img, f))

    def scan30(img, f):
        return jax.lax.scan(lambda im, _: (step(im, f), None), img, None, length=30, unroll=30)[0]

    t_step = median_time(jax.jit(step), img, f0, repeat=repeat)
    gf, gb = cost(step, img, f0)
    t.add("rest: whole step minus the pieces above", t_step - parts)
    t.add("= one step, one jit", t_step, gf, gb)
    t_scan = median_time(jax.jit(scan30), img, f0, repeat=max(1, repeat // 2)) / 30
    t.add("one step inside 30 unrolled steps of one jit", t_scan, gf, gb)
    recipe = get_recipe("dlwp2")
    n = 2 * batch

    def patterns():
        return filter_patterns(model, params, layer, range(n), recipe, batch_size=batch, quality=False).patterns

    t_fp = median_time(patterns, repeat=max(1, repeat // 2)) / (30 * n / batch)
    t.add("one step inside jaxviz.filter_patterns (quality off)", t_fp, gf, gb)

    def patterns_q():
        return filter_patterns(model, params, layer, range(n), recipe, batch_size=batch).patterns

    t_q = median_time(patterns_q, repeat=1) / (30 * n / batch)
    t.add("... with the default quality measurement", t_q)
    t.print(t_step)


def profile_gradcam(batch: int, repeat: int) -> None:
    from jaxviz.methods.attribution import compiled_explain, explain

    model = get_model("vgg16")
    params = model.init(jax.random.key(0))
    layer = "block5_conv3"
    rep = max(1, repeat // 2)
    t = Table(f"Grad-CAM: VGG16 224x224, {layer}, batch {batch}")
    parts = per_layer(t, model, params, model.layer_names[model.index(model.resolve("block1_conv1")):],
                      (batch, 224, 224, 3), backward=False, repeat=rep)
    head, tail = model.split(layer)
    ins = {n: i[0] for n, _, i, _ in model._walk((224, 224, 3))}
    tail_names = tail.layer_names
    feats = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 14, 14, 512)).astype(np.float32))
    tp = {n: params[n] for n in tail_names if n in params}

    def tail_grad(f):  # gradient of the summed top logit at the layer
        return jax.grad(lambda f: tail.run(tp, f, output=True).logits.max(axis=-1).sum())(f)

    def tail_fwd(f):
        return tail.run(tp, f).logits

    t_tf = median_time(jax.jit(tail_fwd), feats, repeat=rep)
    t_tg = median_time(jax.jit(tail_grad), feats, repeat=rep)
    parts += t.add("tail (block5_pool..predictions) bwd to block5_conv3", t_tg - t_tf, *cost(tail_grad, feats))
    for name in ("fc1",):
        x = jnp.ones((batch,) + tuple(ins[name]), jnp.float32)
        fn = layer_fn(model, params, name)
        bb = lambda x, fn=fn: jax.vjp(fn, x)[1](jnp.ones((batch, 4096)))[0]  # noqa: E731
        t.add(f"  of which {name} bwd alone (weights read again)", median_time(jax.jit(bb), x, repeat=rep), *cost(bb, x))
    x = np.random.default_rng(0).uniform(-120, 120, (batch, 224, 224, 3)).astype(np.float32)
    xj = jnp.asarray(x)
    cls = jnp.zeros((batch, 1), jnp.int32)
    keys = jax.random.split(jax.random.key(0), batch)
    run = compiled_explain(model, (224, 224, 3), "gradcam", layer, top1=True)
    t_run = median_time(run, params, xj, cls, keys, repeat=rep)
    fwd = lambda p, x: model.run(p, x).output  # noqa: E731
    t_fwd = median_time(jax.jit(fwd), params, xj, repeat=rep)
    t.add("rest: compiled call minus the pieces above", t_run - parts)
    t.add("= the compiled Grad-CAM call", t_run, *cost(run, params, xj, cls, keys))
    t.add("  the plain forward pass, one jit (for comparison)", t_fwd, *cost(fwd, params, xj))
    t_ex = median_time(lambda: explain(model, params, x).heatmaps, repeat=rep)
    t.add("explain() around it: transfers, padding, checks", t_ex - t_run)
    t.add("= jaxviz.explain", t_ex)
    t.print(t_run)


def profile_activations(repeat: int) -> None:
    model = get_model("vgg16_notop")
    params = model.init(jax.random.key(0), (224, 224, 3))
    names = tuple(model.names_of_kind("conv", "pool"))
    t = Table("activations: VGG16, 18 conv/pool layers, one 224x224 image")
    parts = per_layer(t, model, params, names, (1, 224, 224, 3), backward=False, repeat=repeat)
    x = jnp.asarray(np.random.default_rng(0).uniform(-120, 120, (1, 224, 224, 3)).astype(np.float32))
    t_tap = median_time(lambda: model.jit_tap(params, x, names), repeat=repeat)
    t.add("rest: tap minus the pieces above (writing 18 outputs)", t_tap - parts)
    t.add("= jit_tap of the 18 layers", t_tap, *cost(lambda p, x: model.tap(p, x, names), params, x))
    t_np = median_time(lambda: [np.asarray(a) for a in model.jit_tap(params, x, names).values()], repeat=repeat)
    t.add("  + read back as numpy", t_np - t_tap)
    t.print(t_tap)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", default="all", choices=["filters", "gradcam", "activations", "all"])
    p.add_argument("--filter-batch", type=int, default=1, help="filters per compiled call (default 1)")
    p.add_argument("--cam-batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if args.section in ("filters", "all"):
        profile_filters(args.filter_batch, args.repeat)
    if args.section in ("gradcam", "all"):
        profile_gradcam(args.cam_batch, args.repeat)
    if args.section in ("activations", "all"):
        profile_activations(args.repeat)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
