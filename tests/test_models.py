"""Foundation: architectures against Keras, run-up-to/tap/split, preprocessing, labels, checkpoints, images."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import keras_ref
from jaxviz import JaxvizError, get_model, load_image, preprocess
from jaxviz.io.checkpoint import load_checkpoint, save_checkpoint
from jaxviz.io.labels import decode_predictions, imagenet_classes
from jaxviz.nn import MODELS
from jaxviz.nn.preprocess import deprocess
from conftest import assert_scaled_close

KERAS_ARCHS = ["vgg16", "vgg16_notop", "vgg16_finetuned", "cats_dogs_small", "fashion_cnn"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", KERAS_ARCHS)
def test_param_count_and_shapes_equal_keras(arch):
    km = keras_ref.build(arch)
    m = get_model(arch)
    assert m.param_count() == km.count_params()
    keras_shapes = [tuple(l.output.shape[1:]) for l in keras_ref.flat_layers(km)]
    assert [s for _, s in m.shapes()] == keras_shapes
    assert m.layer_names == [l.name for l in keras_ref.flat_layers(km)]


def test_documented_counts_and_shapes():
    assert get_model("vgg16").param_count() == 138_357_544
    assert get_model("vgg16_notop").param_count() == 14_714_688
    assert get_model("cats_dogs_small").param_count() == 3_453_121
    assert get_model("fashion_cnn").param_count() == 333_526
    shapes = dict(get_model("vgg16").shapes())
    assert shapes["block3_conv1"] == (56, 56, 256) and shapes["block5_conv3"] == (14, 14, 512)
    assert get_model("cats_dogs_small").shapes()[0] == ("conv2d", (148, 148, 32))


@pytest.fixture(scope="module")
def small():
    m = get_model("cats_dogs_small")
    params = m.init(jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (2, 150, 150, 3))
    return m, params, x


def test_until_equals_tap(small):
    m, params, x = small
    names = ["conv2d", "max_pooling2d_1", "conv2d_3", "dense"]
    taps = m.tap(params, x, names)
    for n in names:
        np.testing.assert_array_equal(m(params, x, until=n), taps[n])


def test_split_then_join_equals_whole(small):
    m, params, x = small
    head, tail = m.split("conv2d_2")
    assert head.layer_names[-1] == "conv2d_2" and tail.layer_names[0] == "max_pooling2d_2"
    assert_scaled_close(tail(params, head(params, x)), m(params, x), 1e-6, "split")
    assert m[:3].layer_names == m.layer_names[:3]


def test_logits_are_pre_softmax():
    m = get_model("fashion_cnn")
    params = m.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    assert_scaled_close(jax.nn.softmax(m(params, x, logits=True)), m(params, x), 1e-6, "softmax")


def test_until_computes_nothing_after_the_layer():
    m = get_model("vgg16_notop")
    params = m.init(jax.random.key(0), (32, 32, 3))
    del params["block5_conv1"]  # a later layer's weights are not even looked at
    out = m(params, jnp.zeros((1, 32, 32, 3)), until="block4_pool")
    assert out.shape == (1, 2, 2, 512)


def test_unknown_layer_lists_valid_names(small):
    m, params, x = small
    with pytest.raises(JaxvizError, match=r"unknown layer 'conv9' in cats_dogs_small; valid layers: conv2d, max_pooling2d"):
        m(params, x, until="conv9")
    with pytest.raises(JaxvizError, match="valid models: .*vgg16"):
        get_model("vgg99")


def test_too_small_and_wrong_inputs():
    with pytest.raises(JaxvizError, match="too small for vgg16_notop.*at least 32x32"):
        get_model("vgg16_notop").check_input((1, 20, 20, 3))
    with pytest.raises(JaxvizError, match="needs 224x224x3 inputs, got 150x150x3"):
        get_model("vgg16").check_input((1, 150, 150, 3))
    with pytest.raises(JaxvizError, match="takes H x W x 1"):
        get_model("fashion_cnn").check_input((1, 28, 28, 3))
    get_model("vgg16_notop").check_input((1, 32, 32, 3))


def test_preprocessing_matches_keras_and_does_not_modify_input():
    from keras.applications import vgg16 as kvgg

    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    before = x.copy()
    ours = preprocess(x, "caffe")
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(ours, kvgg.preprocess_input(x.copy()), rtol=0, atol=1e-4)
    np.testing.assert_allclose(deprocess(ours, "caffe"), x, atol=1e-4)
    from keras.applications import xception

    np.testing.assert_allclose(preprocess(x, "tf"), xception.preprocess_input(x.copy()), atol=1e-6)
    np.testing.assert_allclose(preprocess(x, "scale255"), x / 255.0, atol=1e-7)
    with pytest.raises(JaxvizError, match="valid preprocessings: caffe"):
        preprocess(x, "torch-ish")


def test_preprocessing_is_one_definition_for_numpy_and_jit():
    """The filter ascent preprocesses traced images with the same functions (EfficientNet's ``lite``
    once fell through to raw 0..255 pixels in a separate jnp copy)."""
    import jax

    from jaxviz.methods.features import model_input
    from jaxviz.nn.preprocess import PREPROCESSORS

    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(preprocess(x, "lite"), (x / 255 - 0.498) / 0.502, rtol=1e-6)
    for mode in PREPROCESSORS:
        traced = np.asarray(jax.jit(lambda v: preprocess(v, mode))(x))
        np.testing.assert_allclose(traced, preprocess(x, mode), atol=1e-6, err_msg=mode)
        np.testing.assert_allclose(deprocess(preprocess(x, mode), mode), x, atol=1e-3, err_msg=mode)
    lite = get_model("efficientnet_lite0")
    unit = x / 255.0
    np.testing.assert_allclose(np.asarray(jax.jit(lambda v: model_input(lite, v, "unit"))(unit)),
                               preprocess(x, "lite"), atol=1e-5)


def test_imagenet_classes_and_decode():
    classes = imagenet_classes()
    assert len(classes) == 1000 and [w for w, _ in classes] == sorted(w for w, _ in classes)
    assert classes[386] == ("n02504458", "African_elephant") and classes[277] == ("n02119022", "red_fox")
    assert classes[101] == ("n01871265", "tusker") and classes[385] == ("n02504013", "Indian_elephant")
    probs = np.full((2, 1000), 1e-4, np.float32)
    probs[0, [386, 101, 385]] = [0.9, 0.07, 0.004]
    probs[1, 277] = 0.5
    out = decode_predictions(probs, top=3)
    assert out[0] == [("n02504458", "African_elephant", pytest.approx(0.9)), ("n01871265", "tusker", pytest.approx(0.07)),
                      ("n02504013", "Indian_elephant", pytest.approx(0.004))]
    assert out[1][0][:2] == ("n02119022", "red_fox") and len(out[1]) == 3
    assert decode_predictions(np.array([[0.8]]), top=2, labels="cats_dogs")[0][0][1] == "dog"


def test_checkpoint_round_trip_is_bit_exact_and_never_overwrites(tmp_path):
    m = get_model("fashion_cnn")
    params = m.init(jax.random.key(3))
    path = save_checkpoint(tmp_path / "ck", m, params)
    m2, p2, meta = load_checkpoint(path)
    assert m2.name == "fashion_cnn" and meta["input_shape"] == [28, 28, 1] and meta["preprocessing"] == "scale255"
    for n in params:
        for k in params[n]:
            np.testing.assert_array_equal(np.asarray(params[n][k]), np.asarray(p2[n][k]))
    stamp = os.path.getmtime(tmp_path / "ck" / "jaxviz.json")
    with pytest.raises(JaxvizError, match="already exists"):
        save_checkpoint(tmp_path / "ck", m, m.init(jax.random.key(4)))
    assert os.path.getmtime(tmp_path / "ck" / "jaxviz.json") == stamp
    save_checkpoint(tmp_path / "ck", m, m.init(jax.random.key(4)), overwrite=True)
    assert not np.array_equal(load_checkpoint(path)[1]["conv2d"]["kernel"], params["conv2d"]["kernel"])
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temporary directories left behind


def test_checkpoint_refuses_wrong_params(tmp_path):
    m = get_model("fashion_cnn")
    params = m.init(jax.random.key(3))
    params["conv2d_1"]["kernel"] = np.zeros((3, 3, 32, 65), np.float32)
    with pytest.raises(JaxvizError, match=r"layer 'conv2d_1' kernel expected shape \(3, 3, 32, 64\), found \(3, 3, 32, 65\)"):
        save_checkpoint(tmp_path / "bad", m, params)
    assert not (tmp_path / "bad").exists()


def test_load_image_matches_keras_load_img(tmp_path):
    import keras
    from PIL import Image

    rgb = load_image("sample:chelsea")
    Image.fromarray(rgb).save(tmp_path / "cat.png")
    for interp in ("nearest", "bilinear"):
        ours = load_image(tmp_path / "cat.png", (150, 150), interpolation=interp)
        ref = keras.utils.img_to_array(keras.utils.load_img(tmp_path / "cat.png", target_size=(150, 150),
                                                             interpolation=interp))
        np.testing.assert_array_equal(ours, ref.astype(np.uint8))


def test_load_image_modes(tmp_path):
    from PIL import Image

    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img[-1, -1, 0] == (gray16[-1, -1] >> 8)  # scaled, not clipped at 255
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").shape == (10, 12, 3)
    assert load_image(tmp_path / "a.png", channels=1).shape == (10, 12, 1)
    with pytest.raises(JaxvizError, match="image not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(JaxvizError, match="cannot read image"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(JaxvizError, match="valid sample images: .*chelsea"):
        load_image("sample:nope")


@pytest.mark.slow
def test_every_registered_model_builds_and_runs():
    for name in MODELS:
        m = get_model(name)
        shape = m.input_shape if m.name != "vgg16" else (224, 224, 3)
        if m.name == "vgg16":
            continue  # covered by the Keras comparison; 138M parameters
        p = m.init(jax.random.key(0))
        out = m(p, jnp.zeros((1,) + shape))
        assert out.shape[0] == 1 and np.all(np.isfinite(out))


def test_max_pool_gradient_goes_to_first_maximum_like_select_and_scatter():
    """Post-ReLU zeros tie inside windows; the gradient must go where TensorFlow/XLA put it."""
    from jaxviz.nn.layers import max_pool

    x = jnp.asarray(np.maximum(np.random.RandomState(0).randn(2, 7, 9, 3), 0).astype(np.float32))
    ref = lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(max_pool(x, 2), ref(x))
    w = jnp.asarray(np.random.RandomState(1).randn(2, 3, 4, 3).astype(np.float32))
    g = jax.grad(lambda v: (max_pool(v, 2) * w).sum())(x)
    np.testing.assert_array_equal(g, jax.grad(lambda v: (ref(v) * w).sum())(x))
    assert np.sum(np.asarray(x)[:, :6, :8] == 0) > 50  # the test has ties to break
