"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=4 by test_sharding.py: each batched task
sharded over 4 CPU devices against the single-device run. Prints one JSON line of results."""

import json

import jax
import numpy as np

from jaxviz.methods.attribution import Settings, explain
from jaxviz.methods.features import filter_patterns, get_recipe
from jaxviz.io import load_model
from jaxviz.methods.sharding import batch_mesh, shard_batch


def main():
    out = {"devices": jax.device_count()}
    one = jax.devices()[:1]
    m = load_model(None, "builtin:digits_cnn")
    mesh = batch_mesh()
    out["input_devices"] = len(shard_batch(mesh, np.zeros((8, 2)))[0].sharding.device_set)

    # filters: 10 filters in chunks of 8 = 2 per device (the last chunk padded)
    r = get_recipe("dlwp2", size=56, steps=4)
    kw = dict(key=jax.random.key(3))
    sharded = filter_patterns(m.model, m.params, "conv2d_1", range(10), r, batch_size=8, **kw)
    per_device = filter_patterns(m.model, m.params, "conv2d_1", range(10), r, batch_size=2, devices=one, **kw)
    whole = filter_patterns(m.model, m.params, "conv2d_1", range(10), r, batch_size=8, devices=one, **kw)
    out["filters_equal_per_device_batch"] = bool(np.array_equal(sharded.patterns, per_device.patterns))
    out["filters_max_diff_single_call"] = float(np.abs(sharded.patterns - whole.patterns).max())
    out["filters_dead_equal"] = bool(np.array_equal(sharded.dead, whole.dead))

    # class visualisation: every class logit of the last layer
    cls = filter_patterns(m.model, m.params, "dense_1", range(10), get_recipe("dlwp1", size=28, steps=4),
                          batch_size=4, **kw)
    cls1 = filter_patterns(m.model, m.params, "dense_1", range(10), get_recipe("dlwp1", size=28, steps=4),
                           batch_size=1, devices=one, **kw)
    out["classes_equal_per_device_batch"] = bool(np.array_equal(cls.patterns, cls1.patterns))

    # heatmaps over many images: 10 images in chunks of 4 (1 per device)
    x = np.random.default_rng(0).uniform(0, 1, (10, 28, 28, 1)).astype(np.float32)
    for method in ("gradcam", "smoothgrad"):
        s = Settings(samples=4)
        a = explain(m.model, m.params, x, method=method, batch_size=4, settings=s)
        b = explain(m.model, m.params, x, method=method, batch_size=1, devices=one, settings=s)
        c = explain(m.model, m.params, x, method=method, devices=one, settings=s)
        out[f"{method}_equal_per_device_batch"] = bool(np.array_equal(a.heatmaps, b.heatmaps))
        out[f"{method}_classes_equal"] = bool(np.array_equal(a.classes, c.classes))
        out[f"{method}_max_diff_single_call"] = float(np.abs(a.heatmaps - c.heatmaps).max())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
