"""The table of keras.applications families (issue 29's note): each family built by Keras itself (JAX
backend, ``weights=None``, seeded, random batch-norm statistics, layer-norm and layer-scale factors and
biases, as tests/test_keras_apps.py does), saved as ``.keras`` and ``.h5``, opened with the public
``jaxviz.load_model``, and compared with Keras's own output of every layer and raw operation.

Columns: imported (yes, or jaxviz's one-line refusal); the worst layer error over both files
(max |jaxviz - Keras| / max |Keras| of each layer's output, the worst layer named); the prediction error;
the time to open each file; the first jitted predict (compilation included) and a second one (the same
batch, already compiled); jaxviz's default Grad-CAM layer (``jaxviz.nn.policy.cam_layer``) with its map
size; the number of default activation layers (``policy.feature_layers``, at most ``policy.FEATURE_CAP``).
Random weights: the errors measure the import, not any trained behaviour; times are one run each on
whatever machine runs this (no medians), so read them as sizes, not as a benchmark of record.

Run (one family at a time; a few minutes on two loaded cores for all 15):

    KERAS_BACKEND=jax python benchmarks/bench_keras_families.py [--families VGG16,MobileNetV3Small]
        [--size N] [--batch 2] [--out /tmp/notes/families_table.md]

``--size`` sets every family's input size (at least the family's own minimum); by default 96, and 107 for
InceptionV3 and InceptionResNetV2, whose 96 x 96 input ends in a 1 x 1 map (107 leaves 2 x 2).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import jaxviz  # noqa: E402
import keras_ref  # noqa: E402  (tests/keras_ref.py: randomize_weights, layer_outputs, flat_layers)
from jaxviz.nn import policy  # noqa: E402

FAMILIES = ["VGG16", "ResNet50", "ResNet50V2", "InceptionV3", "Xception", "MobileNet", "MobileNetV2",
            "MobileNetV3Small", "MobileNetV3Large", "DenseNet121", "NASNetMobile", "EfficientNetB0",
            "EfficientNetV2B0", "ConvNeXtTiny", "InceptionResNetV2"]
SIZE = {"InceptionV3": 107, "InceptionResNetV2": 107}  # else 96; 96 would leave their last map 1 x 1
MINIMUM = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}  # keras.applications' own; else 32
DEFAULT_OUT = "/tmp/notes/families_table.md"
logging.getLogger("absl").setLevel(logging.ERROR)  # Keras's "HDF5 is legacy" warning on every .h5 save


def rel(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def build(family: str, size: int) -> keras.Model:
    """The family at ``size`` x ``size`` with seeded random weights and non-trivial constants."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    km = getattr(keras.applications, family)(weights=None, input_shape=(size, size, 3))
    keras_ref.randomize_weights(km, 0)
    rng = np.random.default_rng(7)
    for layer in keras_ref.flat_layers(km):  # ConvNeXt's layer scale: 1e-6 fresh, every residual branch would vanish
        if type(layer).__name__ == "LayerScale":
            layer.set_weights([rng.uniform(0.2, 0.6, w.shape).astype(np.float32) for w in layer.get_weights()])
    return km


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "") if isinstance(e, jaxviz.JaxvizError) else f"{type(e).__name__}: {text[0] if text else ''}"


def compare(loaded: jaxviz.Loaded, steps: dict, preds: np.ndarray, x: np.ndarray) -> dict:
    """Worst layer error (named), prediction error and how many jaxviz layers matched no Keras step."""
    model = loaded.model
    by_leaf: dict[str, tuple[str, ...]] = {}
    for path in steps:
        by_leaf.setdefault(path[-1], path)
    paths = {n: tuple(n.split("/")) if "/" in n else by_leaf.get(n) for n in model.layer_names}
    names = [n for n in model.layer_names if paths[n] in steps]
    taps = jax.jit(lambda p, x: model.run(p, x, taps=names))(loaded.params, x)
    errors = {n: rel(taps.taps[n], steps[paths[n]]) for n in names}
    worst = max(errors, key=errors.get)
    return {"worst": errors[worst], "layer": worst, "pred": rel(taps.output, preds),
            "unmatched": len(model.layer_names) - len(names), "keras_only": len(set(steps) - set(paths.values()))}


def measure(family: str, size: int, batch: int, directory: str) -> dict:
    row: dict = {"family": family, "size": size}
    t0 = time.perf_counter()
    km = build(family, size)
    x = np.random.default_rng(1).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    paths = {fmt: os.path.join(directory, f"{family}.{fmt}") for fmt in ("keras", "h5")}
    for p in paths.values():
        km.save(p)
    steps = keras_ref.keras_steps(km, x)
    preds = np.asarray(km(x, training=False))
    row["params"] = km.count_params()
    row["keras_s"] = time.perf_counter() - t0
    del km
    gc.collect()
    for fmt, path in paths.items():
        t0 = time.perf_counter()
        try:
            loaded = jaxviz.load_model(weights=path)
        except Exception as e:  # noqa: BLE001 -- the table reports a refusal or a crash, whatever it is
            row[f"imported_{fmt}"] = one_line(e)
            continue
        row[f"open_{fmt}"] = time.perf_counter() - t0
        row[f"imported_{fmt}"] = "yes"
        if fmt == "keras":
            model = loaded.model
            predict = jax.jit(lambda p, x: model.run(p, x).output)
            for key in ("first", "second"):
                t0 = time.perf_counter()
                jax.block_until_ready(predict(loaded.params, x))
                row[key] = time.perf_counter() - t0
            row["cam"] = policy.cam_layer(model)
            row["cam_shape"] = dict(model.shapes())[row["cam"]]
            row["acts"] = len(policy.feature_layers(model))
            row["layers"] = len(model.layer_names)
        try:
            row[f"cmp_{fmt}"] = compare(loaded, steps, preds, x)
        except Exception as e:  # noqa: BLE001
            row[f"cmp_{fmt}"] = {"error": one_line(e)}
        del loaded
        gc.collect()
    del steps
    jax.clear_caches()
    gc.collect()
    return row


def cell(row: dict) -> list[str]:
    def s(v):
        return "-" if v is None else f"{v:.2f}"

    imported = [row.get(f"imported_{f}") for f in ("keras", "h5")]
    if imported == ["yes", "yes"]:
        imp = "yes"
    else:
        imp = "; ".join(f".{f}: {i}" for f, i in zip(("keras", "h5"), imported) if i != "yes") or "yes"
        imp = imp.replace("|", "\\|")
    cmps = [row[f"cmp_{f}"] for f in ("keras", "h5") if f"cmp_{f}" in row]
    good = [c for c in cmps if "error" not in c]
    if good:
        w = max(good, key=lambda c: c["worst"])
        worst = f"{w['worst']:.1e} (`{w['layer']}`)"
        if w["unmatched"] or w["keras_only"]:
            worst += f"; {w['unmatched']} jaxviz / {w['keras_only']} Keras steps unmatched"
        pred = f"{max(c['pred'] for c in good):.1e}"
    else:
        worst = "; ".join(c["error"] for c in cmps).replace("|", "\\|") or "-"
        pred = "-"
    cam = f"`{row['cam']}` {row['cam_shape'][0]}x{row['cam_shape'][1]}" if "cam" in row else "-"
    acts = f"{row['acts']} of {row['layers']}" if "acts" in row else "-"
    return [row["family"], str(row["size"]), f"{row['params'] / 1e6:.1f}M", imp, worst, pred,
            s(row.get("open_keras")), s(row.get("open_h5")), s(row.get("first")), s(row.get("second")), cam, acts]


HEADER = ["family", "input", "params", "imported (.keras and .h5)", "worst layer error", "prediction error",
          "open .keras (s)", "open .h5 (s)", "first predict (s)", "second predict (s)", "default CAM layer",
          "default activations"]


def table(rows: list[dict], batch: int) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell(r)) + " |" for r in rows]
    note = (f"\nRandom seeded weights (`weights=None`), batch {batch} of uniform 0-255 images; errors are "
            "max |jaxviz - Keras| / max |Keras| per layer (the worst over every layer and raw operation of both "
            "files) and of the predictions; predict times for the .keras import, jitted, the first including "
            f"compilation; JAX {jax.__version__}, Keras {keras.__version__}, {jax.devices()[0].platform}.\n")
    return "\n".join(lines) + "\n" + note


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated keras.applications names")
    ap.add_argument("--size", type=int, default=None, help="input size for every family (default: 96; 107 for Inception)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default=DEFAULT_OUT, help="where the Markdown table is written")
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if not hasattr(keras.applications, f)]
    if unknown:
        print(f"bench_keras_families: not in keras.applications: {', '.join(unknown)}", file=sys.stderr)
        return 2
    rows, start = [], time.perf_counter()
    for family in families:
        size = max(args.size or SIZE.get(family, 96), MINIMUM.get(family, 32))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            try:
                rows.append(measure(family, size, args.batch, d))
            except Exception as e:  # noqa: BLE001 -- Keras itself failed to build or save
                rows.append({"family": family, "size": size, "params": 0, "imported_keras": one_line(e),
                             "imported_h5": one_line(e)})
        gc.collect()
        print(f"{family}: {time.perf_counter() - t0:.0f} s  |  " + " | ".join(cell(rows[-1])[3:]), flush=True)
    text = table(rows, args.batch) + f"Total {time.perf_counter() - start:.0f} s for {len(rows)} families.\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
