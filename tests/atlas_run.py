"""Run by test_atlas.py in a subprocess: top_examples of an untrained digits_cnn over a generated
collection, written to an npz. ``python atlas_run.py OUT.npz [PROCESS NPROC PORT]``: with the last
three, this process joins a ``jax.distributed`` run on localhost (each reads its share). The device
count comes from XLA_FLAGS (--xla_force_host_platform_device_count)."""

import sys

import jax
import numpy as np


def collection() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (45, 28, 28, 1)).astype(np.float32)


def main():
    out = sys.argv[1]
    if len(sys.argv) > 2:
        index, count, port = (int(v) for v in sys.argv[2:5])
        jax.distributed.initialize(f"localhost:{port}", num_processes=count, process_id=index,
                                   initialization_timeout=60)
    from jaxviz import get_model
    from jaxviz.methods.atlas import top_examples

    m = get_model("digits_cnn")
    p = m.init(jax.random.key(0))
    x = collection()
    x[7] = x[30]  # identical images: equal values, the lower index first
    a = top_examples(m, p, x, ["conv2d", "max_pooling2d_1", "dense"], k=5, batch_size=8, chunk=2)
    fields = ("indices", "values", "peaks", "boxes", "mean", "max", "fire_rate")
    arrays = {f"{l}/{f}": getattr(a.layers[l], f) for l in a.layers for f in fields}
    arrays["count"] = np.array(a.count)
    arrays["devices"] = np.array([jax.local_device_count(), jax.process_count()])
    if jax.process_index() == 0:
        np.savez(out, **arrays)
    if len(sys.argv) > 2:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
