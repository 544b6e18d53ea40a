"""Grad-CAM against the seed algorithm (Listing 5.42) computed through Keras on the same real weights."""

import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import keras_ref
from jaxviz import JaxvizError, load_model
from jaxviz.cam import gradcam, superimpose


@pytest.fixture(scope="module")
def fashion(fixtures_dir):
    path = fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5"
    fruits = np.load(fixtures_dir / "data" / "fruits_300.npy")[::60]
    x = np.asarray(jax.image.resize(fruits[..., None].astype(np.float32), (len(fruits), 28, 28, 1), "linear")) / 255.0
    return load_model(None, path), keras.models.load_model(path, compile=False), x


def seed_gradcam_keras(km, layer, x, c, logits):
    """Listing 5.42 through Keras (JAX backend): gradient of the class output w.r.t. the layer output."""
    leaves = keras_ref.flat_layers(km)
    k = [l.name for l in leaves].index(layer)
    h = x
    for l in leaves[: k + 1]:
        h = l(h)
    feat = jnp.asarray(h)

    def score(f):
        for l in leaves[k + 1:]:
            if l is leaves[-1] and logits:
                f = jnp.matmul(f, l.kernel.value) + l.bias.value
            else:
                f = l(f, training=False)
        return f[0, c]

    pooled = jax.grad(score)(feat).mean(axis=(0, 1, 2))
    heat = np.mean(np.asarray(feat[0]) * np.asarray(pooled), axis=-1)
    heat = np.maximum(heat, 0)
    return heat / heat.max() if heat.max() > 0 else heat


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_gradcam_matches_seed_algorithm_in_keras(fashion, score):
    loaded, km, x = fashion
    cams = gradcam(loaded.model, loaded.params, x, [[0, 3, 8]], layer="conv2d_1", score=score)
    assert cams.heatmaps.shape == (len(x), 3, 14, 14)
    for i in range(len(x)):
        for j, c in enumerate([0, 3, 8]):
            ref = seed_gradcam_keras(km, "conv2d_1", x[i:i + 1], c, score == "logit")
            np.testing.assert_allclose(cams.heatmaps[i, j], ref, atol=1e-4)


def test_default_class_is_top1_and_errors(fashion):
    loaded, _, x = fashion
    cams = gradcam(loaded.model, loaded.params, x)
    np.testing.assert_array_equal(cams.classes[:, 0], cams.probs.argmax(-1))
    assert np.all((cams.heatmaps >= 0) & (cams.heatmaps <= 1))
    with pytest.raises(JaxvizError, match=r"class index 10 out of range for fashion_cnn: valid 0..9"):
        gradcam(loaded.model, loaded.params, x, [10])
    with pytest.raises(JaxvizError, match="unknown layer 'conv7'"):
        gradcam(loaded.model, loaded.params, x, layer="conv7")


def test_all_negative_map_is_zero_with_warning(fashion):
    loaded, _, x = fashion
    params = jax.tree_util.tree_map(lambda a: a, loaded.params)
    params["dense_1"] = {"kernel": -jnp.abs(params["dense_1"]["kernel"]), "bias": params["dense_1"]["bias"]}
    params["dense"] = {"kernel": jnp.abs(params["dense"]["kernel"]), "bias": jnp.abs(params["dense"]["bias"])}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cams = gradcam(loaded.model, params, x[:1], [0], layer="conv2d_1")
    assert np.all(cams.heatmaps == 0) and not np.any(np.isnan(cams.heatmaps))
    assert any("all zero" in str(m.message) for m in w)


def test_superimpose_is_clipped_rgb():
    photo = np.full((40, 60, 3), 250, np.uint8)
    heat = np.zeros((5, 5), np.float32)
    heat[2, 2] = 1.0
    out = superimpose(photo, heat)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8 and out.max() == 255  # clipped, not wrapped
    dark = superimpose(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 2), np.float32))
    # JET at 0 is dark blue: in RGB order the blue channel is the strong one
    assert dark[0, 0, 2] > dark[0, 0, 0]


def test_cli_gradcam(fixtures_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "gradcam", "--weights",
                        str(fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5"), "--image", "sample:camera",
                        "--image", "sample:coins", "--out", str(tmp_path / "cam")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "sample:camera: Predicted: [(" in r.stdout
    data = np.load(tmp_path / "cam" / "gradcam.npz")
    assert data["heatmaps"].shape == (2, 14, 14) and data["classes"].shape == (2,) and data["probs"].shape == (2, 10)
    for stem in ("camera", "coins"):
        assert (tmp_path / "cam" / f"{stem}_overlay.png").exists() and (tmp_path / "cam" / f"{stem}_heatmap.png").exists()
    bad = subprocess.run([sys.executable, "-m", "jaxviz.cli", "gradcam", "--weights",
                          str(fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5"), "--image", "nope.jpg",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and "image not found: nope.jpg" in bad.stderr and not (tmp_path / "bad").exists()
