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
from jaxviz.methods.attribution import gradcam
from jaxviz.viz.render import superimpose
from conftest import assert_scaled_close


@pytest.fixture(scope="module")
def fashion(fixtures_dir):
    path = fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5"
    fruits = np.load(fixtures_dir / "data" / "fruits_300.npy")[::60]
    x = np.asarray(jax.image.resize(fruits[..., None].astype(np.float32), (len(fruits), 28, 28, 1), "linear")) / 255.0
    return load_model(None, path), keras.models.load_model(path, compile=False), x


def seed_gradcam_keras(km, layer, x, c, logits):
    """Listing 5.42 through Keras (JAX backend): gradient of the class output w.r.t. the layer output."""
    feat, grad = keras_feat_and_grad(km, layer, x, c, logits)
    heat = np.maximum(np.mean(feat * grad.mean(axis=(0, 1)), axis=-1), 0)
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


# ---------------------------------------------------------------------------------------------
# The other methods, each against an independent computation


def keras_feat_and_grad(km, layer, x, c, logits):
    """The layer output and d score / d output for one image, through the Keras layers (JAX backend)."""
    leaves = keras_ref.flat_layers(km)
    k = [l.name for l in leaves].index(layer)
    h = x
    for l in leaves[: k + 1]:
        h = l(h)
    feat = jnp.asarray(h)

    def score(f):
        for l in leaves[k + 1:]:
            f = jnp.matmul(f, l.kernel.value) + l.bias.value if (l is leaves[-1] and logits) else l(f, training=False)
        return f[0, c]

    return np.asarray(feat[0]), np.asarray(jax.grad(score)(feat)[0])


def test_gradcam_plus_plus_matches_formula_on_keras_gradients(fashion):
    loaded, km, x = fashion
    from jaxviz.methods.attribution import explain

    cams = explain(loaded.model, loaded.params, x, [2, 7], method="gradcam++", layer="conv2d_1")
    for i in range(len(x)):
        for j, c in enumerate([2, 7]):
            A, g = keras_feat_and_grad(km, "conv2d_1", x[i:i + 1], c, True)
            a = g**2 / (2 * g**2 + A.sum(axis=(0, 1)) * g**3 + 1e-7)
            a = np.where(g != 0, a, 0)
            w = (a * np.maximum(g, 0)).sum(axis=(0, 1))
            ref = np.maximum((A * w).sum(-1), 0)
            np.testing.assert_allclose(cams.heatmaps[i, j], ref / ref.max(), atol=1e-4)


def test_scorecam_matches_masked_keras_predictions(fashion):
    import cv2

    loaded, km, x = fashion
    from jaxviz.methods.attribution import Settings, explain

    cams = explain(loaded.model, loaded.params, x[:2], [[1], [4]], method="scorecam", layer="conv2d_1",
                   settings=Settings(chunk=24))  # 64 masks per image: chunks need not divide them
    for i, c in ((0, 1), (1, 4)):
        A, _ = keras_feat_and_grad(km, "conv2d_1", x[i:i + 1], c, True)
        masks = np.stack([cv2.resize(A[..., k], (28, 28), interpolation=cv2.INTER_LINEAR) for k in range(A.shape[-1])])
        lo, hi = masks.min(axis=(1, 2), keepdims=True), masks.max(axis=(1, 2), keepdims=True)
        masks = np.where(hi > lo, (masks - lo) / np.where(hi > lo, hi - lo, 1), 0)
        probs = km.predict(x[i][None] * masks[..., None], verbose=0)[:, c]
        ref = np.maximum((A * probs).sum(-1), 0)
        np.testing.assert_allclose(cams.heatmaps[i, 0], ref / ref.max(), atol=1e-4)


def test_saliency_matches_keras_input_gradient(fashion):
    loaded, km, x = fashion
    from jaxviz.methods.attribution import explain

    cams = explain(loaded.model, loaded.params, x, [3], method="saliency", score="probability")
    for i in range(len(x)):
        g = np.asarray(jax.grad(lambda z: km(z, training=False)[0, 3])(jnp.asarray(x[i:i + 1])))[0]
        ref = np.abs(g).max(-1)
        np.testing.assert_allclose(cams.heatmaps[i, 0], ref / ref.max(), atol=1e-4)


def test_integrated_gradients_completeness(fashion):
    loaded, _, x = fashion
    from jaxviz.methods.attribution import integrated_gradients

    attr = np.asarray(integrated_gradients(loaded.model, loaded.params, jnp.asarray(x), jnp.array([[0, 5]] * len(x)),
                                           steps=1024))
    logits = np.asarray(loaded.model(loaded.params, x, logits=True))
    base = np.asarray(loaded.model(loaded.params, np.zeros_like(x[:1]), logits=True))[0]
    for i in range(len(x)):
        for j, c in enumerate([0, 5]):
            want = logits[i, c] - base[c]
            # ReLU kinks make the Riemann sum converge slowly: 40% off at 64 steps, <= 4% at 1024 here
            assert attr[i, j].sum() == pytest.approx(want, rel=0.06, abs=0.05)


def test_guided_relu_gradient_by_hand():
    from jaxviz.nn.layers import guided_relu

    z = jnp.array([-1.0, 2.0, 3.0, 0.5])
    c = jnp.array([5.0, -2.0, 4.0, 1.0])
    g = jax.grad(lambda v: jnp.sum(c * guided_relu(v)))(z)
    np.testing.assert_array_equal(g, [0.0, 0.0, 4.0, 1.0])  # needs input > 0 and gradient > 0
    np.testing.assert_array_equal(guided_relu(z), jax.nn.relu(z))


def test_guided_relu6_gradient_by_hand():
    from jaxviz.nn.layers import guided_relu6

    z = jnp.array([-1.0, 2.0, 7.0, 0.5, 3.0])
    c = jnp.array([5.0, -2.0, 4.0, 1.0, 2.0])
    g = jax.grad(lambda v: jnp.sum(c * guided_relu6(v)))(z)
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.0, 1.0, 2.0])  # 0 < input < 6 and gradient > 0
    np.testing.assert_array_equal(guided_relu6(z), jax.nn.relu6(z))


def test_guided_model_same_outputs_different_maps(fashion):
    loaded, _, x = fashion
    from jaxviz.methods.attribution import explain

    guided = loaded.model.with_activation("relu", "guided_relu")
    np.testing.assert_array_equal(guided(loaded.params, x), loaded.model(loaded.params, x))
    g = explain(loaded.model, loaded.params, x, [0], method="guided").heatmaps
    s = explain(loaded.model, loaded.params, x, [0], method="saliency").heatmaps
    assert g.shape == (len(x), 1, 28, 28) and g.min() >= 0 and np.allclose(g.max(axis=(2, 3)), 1)
    assert np.abs(g - s).max() > 0.1


def test_smoothgrad_keyed_and_reduces_to_saliency(fashion):
    loaded, _, x = fashion
    from jaxviz.methods.attribution import Settings, explain

    run = lambda key, **kw: explain(loaded.model, loaded.params, x, [1], method="smoothgrad", key=key,
                                    settings=Settings(**kw)).heatmaps
    a, b = run(jax.random.key(1), samples=8), run(jax.random.key(1), samples=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - run(jax.random.key(2), samples=8)).max() > 1e-3
    sal = explain(loaded.model, loaded.params, x, [1], method="saliency").heatmaps
    np.testing.assert_allclose(run(jax.random.key(1), samples=1, noise=0.0), sal, atol=1e-6)


def test_second_call_does_not_recompile(fashion):
    loaded, _, x = fashion
    from jaxviz import count_compilations, explain

    jax.clear_caches()  # earlier tests may have compiled the same chunk shapes
    with count_compilations() as first:
        explain(loaded.model, loaded.params, x, [0, 1], method="gradcam++")
    with count_compilations() as second:
        explain(loaded.model, loaded.params, x[::-1].copy(), [3, 4], method="gradcam++")
    assert first.count >= 1 and second.count == 0


def test_randomization_sanity_check_on_trained_digits():
    """Adebayo et al. (2018): re-initialising the dense layers above conv2d_1 must change Grad-CAM
    (rank correlation < 0.5); guided backprop is known to stay similar."""
    from jaxviz.io import datasets
    from jaxviz.methods.attribution import randomization_check
    from jaxviz.nn.preprocess import preprocess

    loaded = load_model(None, "builtin:digits_cnn")
    x, _ = datasets.digits()
    xs = preprocess(x[1500:1516].astype(np.float32), "scale255")
    rho = {m: randomization_check(jax.random.key(1), loaded.model, loaded.params, xs, method=m).mean()
           for m in ("gradcam", "guided")}
    assert rho["gradcam"] < 0.5
    assert rho["guided"] > rho["gradcam"] + 0.2


def test_unknown_method_lists_valid():
    from jaxviz.methods.attribution import explain
    from jaxviz.nn import get_model

    m = get_model("fashion_cnn")
    with pytest.raises(JaxvizError, match="unknown method 'lime'; valid methods: gradcam, gradcam\\+\\+, scorecam"):
        explain(m, m.init(jax.random.key(0)), np.zeros((1, 28, 28, 1)), method="lime")


@pytest.mark.parametrize("method", ["gradcam++", "scorecam", "smoothgrad", "ig", "guided"])
def test_cli_methods(fixtures_dir, tmp_path, method):
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "gradcam", "--weights", "builtin:digits_cnn", "--image",
                        "sample:camera", "--method", method, "--samples", "4", "--steps", "8", "--class", "3",
                        "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "m" / "gradcam.npz")
    side = 14 if method in ("gradcam++", "scorecam") else 28
    assert z["heatmaps"].shape == (1, side, side) and z["classes"].tolist() == [3]
    assert 0 <= z["heatmaps"].min() and z["heatmaps"].max() <= 1


def test_compiled_explain_is_the_call_explain_makes():
    """The public compiled call (what benchmarks time) gives explain's maps, is one function for equal
    arguments, and checks its arguments as explain does."""
    from jaxviz.methods.attribution import compiled_explain, explain

    m = load_model(None, "builtin:digits_cnn")
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    run = compiled_explain(m.model, (28, 28, 1), "gradcam", top1=True)
    maps, probs, cls = run(m.params, x, jnp.zeros((3, 1), jnp.int32), jax.random.split(jax.random.key(0), 3))
    assert compiled_explain(m.model, (28, 28, 1), "gradcam", top1=True) is run
    cams = explain(m.model, m.params, x, batch_size=3)
    assert_scaled_close(np.asarray(maps), cams.heatmaps, 1e-5, "heatmaps")
    assert np.asarray(cls).tolist() == cams.classes.tolist() and np.asarray(probs).shape == (3, 10)
    with pytest.raises(JaxvizError, match=r"unknown method 'gradcam\+\+\+'"):
        compiled_explain(m.model, (28, 28, 1), "gradcam+++")
    with pytest.raises(JaxvizError, match="flatten"):
        compiled_explain(m.model, (28, 28, 1), layer="flatten")
