"""Xception: names, order, shapes and parameter count as Keras; every layer's output against Keras
``Xception(weights=None)`` with random batch-norm statistics; every file format; inner layers of
residual blocks addressable; filters and Grad-CAM through the same code as VGG16."""


import jax
import keras
import numpy as np
import pytest

import keras_ref
from jaxviz import JaxvizError, get_model
from jaxviz.methods.attribution import explain
from jaxviz.methods.features import filter_patterns, get_recipe
from weights_convert import load_keras_weights, read_keras_file
from conftest import assert_scaled_close

# Parameter names in Keras's weight order, per Keras class.
PARAM_NAMES = {
    "Conv2D": ["kernel", "bias"], "Dense": ["kernel", "bias"],
    "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
}


def params_from_keras(km) -> dict:
    return {l.name: dict(zip(PARAM_NAMES[type(l).__name__], l.get_weights()))
            for l in keras_ref.flat_layers(km) if l.get_weights()}


def relative(a, b) -> float:
    """max |a - b| / max |b| (plain relative error, no floor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def assert_seed_gradcam(heatmaps, feats, classes, score) -> int:
    """Listing 5.42 on Keras-computed features and jax.grad of a Keras-written ``score(feats[None], c)``:
    each map equals ours to 1e-4; returns how many were not all zero."""
    nonzero = 0
    for j, c in enumerate(classes):
        g = np.asarray(jax.grad(score)(feats[None], c))[0]
        heat = np.maximum((feats * g.mean(axis=(0, 1))).mean(axis=-1), 0)
        heat = heat / heat.max() if heat.max() > 0 else heat
        nonzero += heat.max() > 0
        np.testing.assert_allclose(heatmaps[j], heat, atol=1e-4)
    return nonzero


@pytest.fixture(scope="module")
def keras_top():
    return keras_ref.build("xception")


@pytest.fixture(scope="module")
def reference(keras_top):
    """Every named layer's Keras output on one 299x299 image in [-1, 1] (the ``tf`` input range)."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32)
    names = [l.name for l in keras_top.layers[1:]]
    outs = keras.Model(keras_top.input, [keras_top.get_layer(n).output for n in names])(x)
    return x, dict(zip(names, [np.asarray(o) for o in outs]))


@pytest.fixture(scope="module")
def model():
    return get_model("xception")


@pytest.mark.slow
def test_names_order_shapes_and_parameter_count(keras_top, model):
    assert model.layer_names == [l.name for l in keras_top.layers[1:]]  # Keras's model.layers order
    assert model.shapes() == [(l.name, tuple(l.output.shape[1:])) for l in keras_top.layers[1:]]
    assert model.param_count() == keras_top.count_params() == 22_910_480
    notop = get_model("xception_notop")
    assert notop.param_count() == 20_861_480
    assert notop.layer_names == model.layer_names[:-2]
    assert notop.min_input_size() == 71
    with pytest.raises(JaxvizError, match="at least 71x71"):
        notop.shapes((70, 70, 3))
    assert notop.shapes((71, 71, 3))[-1] == ("block14_sepconv2_act", (3, 3, 2048))
    assert model.last_conv == "block14_sepconv2_act"
    assert model.preprocessing == "tf"


def _assert_matches(model, params, reference, tol=1e-5):
    x, ref = reference
    ours = model.jit_tap(params, x, tuple(ref))
    errs = {n: relative(ours[n], r) for n, r in ref.items()}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= tol, (worst, errs[worst])
    return errs[worst]


def test_every_named_layer_matches_keras(model, keras_top, reference):
    _assert_matches(model, params_from_keras(keras_top), reference)


def test_every_file_format_converts_exactly(model, keras_top, reference, tmp_path):
    """.keras, .weights.h5, legacy .h5, and the published Keras-1 layout (automatic group names,
    ``_running_std`` holding the variance, matched by order) all give Keras's own weights."""
    paths = {
        "keras": tmp_path / "x.keras", "weights_h5": tmp_path / "x.weights.h5", "legacy_h5": tmp_path / "x.h5",
        "keras1": tmp_path / "xception_weights_tf_dim_ordering_tf_kernels.h5",
    }
    keras_top.save(paths["keras"])
    keras_top.save_weights(paths["weights_h5"])
    keras_top.save(paths["legacy_h5"])
    keras_ref.write_keras1_published(keras_top, str(paths["keras1"]))
    assert read_keras_file(paths["keras1"]).layers[0].name == "convolution2d_1"
    expected = params_from_keras(keras_top)
    for fmt, path in paths.items():
        arch, params = load_keras_weights(path)
        assert arch == "xception", fmt
        assert params.keys() == expected.keys(), fmt
        for name, p in expected.items():
            for k, v in p.items():
                np.testing.assert_array_equal(params[name][k], v, err_msg=f"{fmt} {name} {k}")
        if fmt == "keras1":  # one full forward per reading path would repeat the same numbers
            _assert_matches(model, params, reference)


@pytest.mark.slow
@pytest.mark.parametrize("ext", [".keras", ".weights.h5", ".h5"])
def test_nested_in_sequential(ext, tmp_path):
    """A base nested inside a Sequential: the legacy .h5 lists every moving statistic after all
    trainable weights; the reader regroups them by layer."""
    base = keras_ref.build("xception_notop", (71, 71, 3))
    km = keras.Sequential([keras.Input((71, 71, 3)), base])
    path = str(tmp_path / f"nested{ext}")
    km.save_weights(path) if ext == ".weights.h5" else km.save(path)
    arch, params = load_keras_weights(path, "xception_notop")
    expected = params_from_keras(base)
    for name, p in expected.items():
        for k, v in p.items():
            np.testing.assert_array_equal(params[name][k], v, err_msg=f"{name} {k}")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 71, 71, 3)).astype(np.float32)
    ours = get_model("xception_notop")(params, x)
    assert relative(ours, km(x)) <= 1e-5


def test_misfit_names_the_first_mismatching_layer(tmp_path):
    km = keras_ref.build("xception_notop", (71, 71, 3))
    km.save_weights(tmp_path / "x.weights.h5")
    with pytest.raises(JaxvizError, match=r"block1_conv1.*kernel \(3, 3, 3, 64\).*\(3, 3, 3, 32\)"):
        load_keras_weights(tmp_path / "x.weights.h5", "vgg16_notop")


@pytest.mark.slow
def test_inner_layers_of_a_residual_block_are_addressable(model):
    """until, tap and split at a layer inside a residual block (the shortcut is carried across)."""
    params = model.init(jax.random.key(0), (71, 71, 3))
    x = np.random.default_rng(2).uniform(-1, 1, (2, 71, 71, 3)).astype(np.float32)
    notop = get_model("xception_notop")
    full = notop.tap(params, x, ["block3_sepconv1", "block3_sepconv2_bn", "block14_sepconv2_act", "block3"])
    np.testing.assert_array_equal(notop(params, x, until="block3_sepconv1"), full["block3_sepconv1"])
    np.testing.assert_array_equal(full["block3"], notop(params, x, until="add_1"))  # block alias
    head, tail = notop.split("block3_sepconv2_bn")  # inside block 3: the tail needs block 3's input
    assert tail.context_names == ("add",)
    feats = head(params, x)
    with pytest.raises(JaxvizError, match="also reads"):
        tail(params, feats)
    out = tail(params, feats, context={"add": notop(params, x, until="add")})
    assert_scaled_close(out, full["block14_sepconv2_act"], 1e-5, "block14_sepconv2_act")
    with pytest.raises(JaxvizError, match="block3_sepconv1_act"):
        notop.index("block3_sepconv_act")  # the error lists the valid names


@pytest.mark.slow
def test_filters_and_gradcam_run_through_the_shared_code(model, keras_top, tmp_path):
    """Seed 002's recipe on block3_sepconv1 (small size) and Grad-CAM on the default layer against
    the seed algorithm written with jax.grad through Keras."""
    kn = keras_ref.build("xception_notop", (80, 80, 3))
    recipe = get_recipe("dlwp2", size=80, steps=4)
    key = jax.random.key(1)
    pats = filter_patterns(get_model("xception_notop"), params_from_keras(kn), "block3_sepconv1", [2, 9], recipe, key)
    assert pats.images.shape == (2, 30, 30, 3)  # seed 002's 25-pixel crop
    for i, f in enumerate([2, 9]):
        start = recipe.param.init(jax.random.fold_in(jax.random.fold_in(key, f), 0), (80, 80, 3))
        ref = keras_ref.seed_filter_ascent(kn, "block3_sepconv1", f, start, 4, 10.0, "l2", True)
        assert abs(pats.objective[i] - ref) <= 0.1 * abs(ref) + 1e-6, (f, pats.objective[i], ref)
        assert pats.history[i, -1] > pats.history[i, 0]

    params = params_from_keras(keras_top)
    x = np.random.default_rng(3).uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32)
    classes = list(range(0, 1000, 50))
    cams = explain(model, params, x, [classes], score="probability")
    grad_model = keras.Model(keras_top.input, [keras_top.get_layer("block14_sepconv2_act").output,
                                               keras_top.output])
    f0 = np.asarray(grad_model(x)[0])

    def score(f, c):  # the tail of the Keras model from the CAM layer on
        return keras_top.get_layer("predictions")(keras_top.get_layer("avg_pool")(f))[0, c]

    assert_seed_gradcam(cams.heatmaps[0], f0[0], classes, score) >= 5  # random weights: some maps are all zero


@pytest.mark.slow
def test_gradcam_inside_a_residual_block_matches_a_keras_tail(model, keras_top):
    """Grad-CAM on block13_sepconv2_bn, whose tail also reads block 13's input (add_10) through the
    shortcut: against the tail written with Keras's own layers and differentiated with jax.grad."""
    params = params_from_keras(keras_top)
    x = np.random.default_rng(4).uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32)
    layer = "block13_sepconv2_bn"
    classes = list(range(3, 1000, 100))
    cams = explain(model, params, x, [classes], layer=layer)
    k = keras_top.get_layer
    f0, r0 = (np.asarray(o) for o in keras.Model(keras_top.input, [k(layer).output, k("add_10").output])(x))
    rest = [l.name for l in keras_top.layers[keras_top.layers.index(k("add_11")) + 1:]]

    def logit(f, c):
        h = k("add_11")([k("block13_pool")(f), k("batch_normalization_3")(k("conv2d_3")(r0))])
        for n in rest[:-1]:
            h = k(n)(h)
        return (h @ k("predictions").kernel + k("predictions").bias)[0, c]

    assert assert_seed_gradcam(cams.heatmaps[0], f0[0], classes, logit) >= 3
