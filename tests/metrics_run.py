"""Run by test_metrics.py under XLA_FLAGS=--xla_force_host_platform_device_count=4: evaluate on 4 CPU
devices against 1 device. Prints one JSON line."""

import json
import warnings

import jax
import numpy as np


def main():
    warnings.simplefilter("ignore")
    import jaxviz
    from jaxviz.methods.evaluate import evaluate
    from jaxviz.methods.metrics import Definitions

    m = jaxviz.get_model("digits_cnn")
    p = m.init(jax.random.key(0))
    x = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1)).astype(np.float32)
    kw = dict(methods=["gradcam", "smoothgrad"], metrics=["deletion", "insertion", "road", "average_drop"],
              definitions=Definitions(steps=10), settings=jaxviz.methods.attribution.Settings(samples=4))
    four = evaluate(m, p, x, batch_size=4, **kw)
    one = evaluate(m, p, x, batch_size=1, devices=jax.devices()[:1], **kw)
    # in probability units (Average Drop is in percent)
    diff = max(float(np.nanmax(np.abs(four.scores[a][b] - one.scores[a][b]))) / (100 if b == "average_drop" else 1)
               for a in four.scores for b in four.scores[a])
    print(json.dumps({"devices": jax.device_count(), "max_diff": diff}))


if __name__ == "__main__":
    main()
