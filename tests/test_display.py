"""Results draw themselves (jaxviz.viz.display): every result type's ``_repr_html_`` holds an image, is
self-contained (PNG data URIs, no script, no network), is bounded for large results, and the CLI's
pattern grid is the notebook's picture byte for byte. One test runs the renderers in a real Jupyter kernel."""

from __future__ import annotations

import base64
import io
import re
import time

import numpy as np
import pytest
from PIL import Image

import jaxviz
from jaxviz.methods.atlas import Atlas, LayerAtlas
from jaxviz.methods.evaluate import Evaluation
from jaxviz.nn.receptive import RF

SRC = re.compile(r"""<img[^>]*\bsrc=['"]([^'"]+)['"]""")


def _self_contained(text: str) -> int:
    """Number of images; every one a PNG data URI; no script, no external reference."""
    srcs = SRC.findall(text)
    assert srcs, "no <img> in the html"
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    low = text.lower()
    assert "<script" not in low and "http://" not in low and "https://" not in low
    return len(srcs)


@pytest.fixture(scope="module")
def digits():
    loaded = jaxviz.load_model(weights="builtin:digits_cnn")
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    return loaded, x


def _patterns(n: int, size: int = 28) -> jaxviz.Patterns:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    z = np.zeros(n, np.float32)
    return jaxviz.Patterns(imgs.astype(np.float32), imgs, np.arange(n, dtype=np.int32), z + 1, np.ones((n, 3), np.float32),
                           np.zeros(n, bool), photo_best=z + 0.5, relative=z + 2, robustness=z + 0.9,
                           hf_energy=z + 0.1, selectivity=z + 0.3, structured=np.ones(n, bool))


def test_patterns_html_grid_and_quality_line():
    res = _patterns(64)
    t0 = time.perf_counter()
    text = res._repr_html_()
    print(f"64-pattern grid html: {time.perf_counter() - t0:.3f} s, {len(text)} bytes")
    assert _self_contained(text) == 1
    assert "good (above the best photo and structured): 64/64" in text  # the quality line
    big = _patterns(100)._repr_html_()
    assert "first 64 of 100 patterns shown; 36 more not shown" in big
    png = res._repr_png_()
    assert png.startswith(b"\x89PNG")


def test_cli_pattern_grid_is_the_notebook_picture(tmp_path, digits):
    """write_filters (the CLI's writer) saves exactly Patterns._repr_png_: one renderer, two outputs."""
    from jaxviz.viz.writers import write_filters

    loaded, _ = digits
    recipe = jaxviz.get_recipe("dlwp1")._replace(steps=3) if hasattr(jaxviz.get_recipe("dlwp1"), "_replace") else None
    import jax

    files, res = write_filters(str(tmp_path), loaded.model, loaded.params, "conv2d", [0, 1, 2], recipe,
                               jax.random.key(0), quality=False)
    assert (tmp_path / files[0].path).read_bytes() == res._repr_png_()


def test_activations_cams_weights_loaded(digits):
    loaded, x = digits
    m, p = loaded.model, loaded.params
    acts = jaxviz.activations(m, p, x)
    assert isinstance(acts, dict) and list(acts) == ["conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1"]
    np.testing.assert_array_equal(np.asarray(acts["conv2d"]), np.asarray(dict(acts)["conv2d"]))
    import jax

    assert jax.tree.map(lambda a: a.shape[0], acts) == {k: 3 for k in acts}  # still a pytree
    assert _self_contained(acts._repr_html_()) == 4  # one grid per spatial layer
    grids = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in SRC.findall(acts._repr_html_())]
    # 16 maps a row, each enlarged to at least 40 px by an integer factor: 28 -> 2x, 14 -> 3x, 7 -> 6x
    assert [g.size for g in grids] == [(16 * 56, 2 * 56), (16 * 42, 2 * 42), (16 * 42, 4 * 42), (16 * 42, 4 * 42)]
    assert re.search(r"conv2d_1 3x14x14x64: \d+ dead, drawn 3x<", acts._repr_html_())
    cams = jaxviz.explain(m, p, x)
    text = cams._repr_html_()
    assert _self_contained(text) == 3
    c = int(cams.classes[0, 0])
    assert f"image 0: class {c}, p={float(cams.probs[0, c]):.2f}" in text
    # the maps carry their method and layer (the default: the last conv layer) and show them
    assert (cams.method, cams.layer) == ("gradcam", "conv2d_1")
    assert "Cams: gradcam at conv2d_1; 3 images x 1 classes, maps 14x14" in text
    assert text.count("title='gradcam at conv2d_1'") == 3
    first = jaxviz.explain(m, p, x, method="layercam", layer="conv2d")
    assert (first.method, first.layer) == ("layercam", "conv2d") and "layercam at conv2d;" in first._repr_html_()
    sal = jaxviz.explain(m, p, x, method="saliency")
    assert sal.layer is None and "Cams: saliency at the input pixels; 3 images x 1 classes, maps 28x28 in [0, 1], " \
        "drawn from their 1st to 99th percentile" in sal._repr_html_()
    # the picture is the CLI overlay's colouring of the scaled map (write_cams: display_map, then JET)
    from jaxviz.viz.render import display_map, plain_map

    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(SRC.findall(sal._repr_html_())[0].split(",", 1)[1]))))
    np.testing.assert_array_equal(first, plain_map(display_map(sal.heatmaps[0, 0]), (128, 128)))
    heat = np.zeros((2, 1, 4, 4), np.float32)
    heat[1, 0, 2, 2] = 1
    two = jaxviz.Cams(heat, np.zeros((2, 1), np.int64), np.full((2, 10), 0.1, np.float32), "gradcam", "conv2d")
    assert two._repr_html_().count("blank: all zero") == 1  # only the all-zero map says so
    old = jaxviz.Cams(cams.heatmaps, cams.classes, cams.probs)  # built as before the fields existed
    assert (old.method, old.layer) == ("", None) and "Cams: unknown method; 3 images" in old._repr_html_()
    lw = jaxviz.layer_weights(m, p, "conv2d")
    assert _self_contained(lw._repr_html_()) == 2 and "kernel 3x3x1x32" in lw._repr_html_()  # histogram, mosaic
    assert _self_contained(jaxviz.layer_weights(m, p, "dense")._repr_html_()) == 1  # no mosaic of a dense kernel
    table = loaded._repr_html_()
    for name in ("conv2d", "max_pooling2d_1", "dense_1"):
        assert f"<td style='text-align:left'>{name}</td>" in table


def _decode(src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def test_cams_on_photos_are_the_opencv_blend():
    """CamsOnPhotos draws each map over its photo as the CLI and the gallery do: the map resized to the
    photo by OpenCV, JET, 0.4 x map + photo (cv2.addWeighted, saturated): within rounding (1 level),
    and unlike both the bare photo and the bare map."""
    import cv2

    from jaxviz.viz.display import CamsOnPhotos

    yy, xx = np.mgrid[0:128, 0:128]
    photo = np.stack([xx * 2 % 256, yy * 2 % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
    heat = np.zeros((1, 1, 8, 8), np.float32)
    heat[0, 0] = np.outer(np.linspace(0, 1, 8), np.linspace(1, 0, 8))
    cams = jaxviz.Cams(heat, np.array([[3]]), np.full((1, 10), 0.1, np.float32), "gradcam", "conv2d")
    text = CamsOnPhotos(cams, photo[None])._repr_html_()
    assert _self_contained(text) == 1 and "gradcam at conv2d over the photos" in text
    shown = _decode(SRC.findall(text)[0]).astype(int)
    assert shown.shape == photo.shape
    m = cv2.resize(heat[0, 0], (128, 128))
    jet = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * np.clip(m, 0, 1)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blend = cv2.addWeighted(jet, 0.4, photo, 1.0, 0).astype(int)
    assert np.abs(shown - blend).max() <= 1
    assert np.abs(shown - photo.astype(int)).mean() > 20 and np.abs(shown - jet.astype(int)).mean() > 20
    plain = _decode(SRC.findall(cams._repr_html_())[0]).astype(int)  # without photos: the map alone, as before
    assert np.abs(plain - jet.astype(int)).max() <= 1


def test_comparison_and_predictions(digits):
    from jaxviz.viz.display import Comparison, Predictions, png_size

    loaded, x = digits
    photos = (x[..., 0] * 255).astype(np.uint8)[..., None]
    cams = {m: jaxviz.explain(loaded.model, loaded.params, x, method=m) for m in ("gradcam", "saliency")}
    text = Comparison(photos, cams, ["a", "b", "c"], ["0", "1", "2"])._repr_html_()
    assert _self_contained(text) == 1 and "Comparison of 2 attribution methods on 3 photos" in text
    probs = np.asarray(cams["gradcam"].probs)
    pr = Predictions(photos, probs, probs.argmax(1), [str(c) for c in probs.argmax(1)], ["a", "b", "c"])
    text = pr._repr_html_()
    w, h = png_size(base64.b64decode(SRC.findall(text)[0].split(",", 1)[1]))
    assert _self_contained(text) == 1 and f"width='{w}' height='{h}'" in text and w <= 1152


def _atlas(tmp_path, units: int, k: int = 9, n_images: int = 12) -> Atlas:
    paths = []
    for i in range(n_images):
        f = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((28, 28), 20 * i, np.uint8)).save(f)
        paths.append(str(f))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, n_images, (units, k))
    la = LayerAtlas(np.arange(units), idx, rng.random((units, k)).astype(np.float32), np.zeros((units, k, 2), np.int32),
                    np.tile(np.array([0, 0, 10, 10], np.int32), (units, k, 1)), rng.random(units).astype(np.float32),
                    rng.random(units).astype(np.float32), rng.random(units).astype(np.float32), np.zeros(units, bool),
                    (4, 4), RF((3, 3), (1, 1), (0, 0)))
    return Atlas({"conv2d": la}, paths, [], n_images, (28, 28, 1), "max")


def test_atlas_html_bounded(tmp_path):
    small = _atlas(tmp_path, 8)._repr_html_()
    assert _self_contained(small) == 1 + 8 * 4  # the fire-rate plot and 4 exemplars per card
    big = _atlas(tmp_path, 4096)._repr_html_()
    print(f"4,096-unit atlas html: {len(big)} bytes")
    assert len(big) < 2_000_000
    assert "first 24 of 4096 units shown; 4072 more not shown" in big


def test_evaluation_html():
    curves = {"gradcam": {"deletion": np.linspace(1, 0, 5), "insertion": np.linspace(0, 1, 5)},
              "random": {"deletion": np.linspace(1, .5, 5), "insertion": np.linspace(0, .5, 5)}}
    board = [dict(method="gradcam", metric="deletion", higher_is_better=False, mean=0.25, low=0.2, high=0.3, n=4,
                  beats_random=0.75),
             dict(method="random", metric="deletion", higher_is_better=False, mean=0.5, low=0.4, high=0.6, n=4,
                  beats_random=None)]
    ev = Evaluation(["a", "b", "c", "d"], np.zeros(4, np.int64), {"gradcam": {}, "random": {}}, curves, board, [],
                    None)
    text = ev._repr_html_()
    assert _self_contained(text) == 1
    assert "<td>0.25</td><td>[0.2, 0.3]</td><td>4</td><td>75%</td>" in text


def test_show_writes_a_page(tmp_path):
    path = jaxviz.show(_patterns(4), tmp_path / "p.html")
    text = open(path, encoding="utf-8").read()
    assert text.startswith("<!doctype html>") and _self_contained(text) == 1


KERNEL_CODE = r"""
import time, numpy as np, jax, jaxviz
from IPython.display import display
L = jaxviz.load_model(weights="builtin:digits_cnn")
x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
rng = np.random.default_rng(1); imgs = rng.integers(0, 256, (64, 28, 28, 3), dtype=np.uint8); z = np.zeros(64, np.float32)
pats = jaxviz.Patterns(imgs.astype(np.float32), imgs, np.arange(64, dtype=np.int32), z, np.ones((64, 2), np.float32), np.zeros(64, bool))
t0 = time.perf_counter(); pats._repr_html_(); print(f"grid64 {time.perf_counter() - t0:.3f}")
for r in (L, jaxviz.activations(L.model, L.params, x), jaxviz.explain(L.model, L.params, x),
          jaxviz.layer_weights(L.model, L.params, "conv2d"), pats):
    display(r)
"""


@pytest.mark.slow
def test_results_render_in_a_jupyter_kernel():
    """A real ipykernel (started by jupyter_client) displays each result as text/html with an image."""
    pytest.importorskip("ipykernel", reason="ipykernel (the test extra) is not installed")
    jc = pytest.importorskip("jupyter_client", reason="jupyter_client (the test extra) is not installed")
    km, kc = jc.manager.start_new_kernel(kernel_name="python3")
    try:
        outputs = []
        reply = kc.execute_interactive(KERNEL_CODE, timeout=240, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    htmls = [o["content"]["data"]["text/html"] for o in outputs if o["msg_type"] == "display_data"]
    assert len(htmls) == 5
    assert "<img" not in htmls[0] and "dense_1" in htmls[0]  # the layer table
    for h in htmls[1:]:
        _self_contained(h)
    print("".join(o["content"].get("text", "") for o in outputs if o["msg_type"] == "stream"))
