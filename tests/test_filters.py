"""Filter patterns: seed recipes against the seed algorithm in Keras, properties, engine guarantees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import keras_ref
from jaxviz import JaxvizError, get_model, load_model
import optax

from jaxviz import count_compilations
from jaxviz.methods.features import filter_patterns, get_recipe, normalize_l2, pixels, uniform_start
from weights_convert import load_keras_weights


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    km = keras_ref.build("vgg16_notop", (64, 64, 3))
    path = tmp_path_factory.mktemp("v") / "v.keras"
    km.save(path)
    return km, get_model("vgg16_notop"), load_keras_weights(path, "vgg16_notop")[1]


@pytest.mark.slow
@pytest.mark.parametrize("name,layer,normalize,lr,interior", [
    ("dlwp1", "block2_conv1", "rms", 1.0, False),
    ("dlwp2", "block3_conv1", "l2", 10.0, True),
])
def test_presets_reach_the_seed_objective(vgg, name, layer, normalize, lr, interior):
    km, model, params = vgg
    recipe = get_recipe(name, size=64, steps=6)
    key = jax.random.key(7)
    filters = [0, 3, 11]
    res = filter_patterns(model, params, layer, filters, recipe, key)
    for i, f in enumerate(filters):
        start = recipe.param.init(jax.random.fold_in(jax.random.fold_in(key, f), 0), (64, 64, 3))
        ref = keras_ref.seed_filter_ascent(km, layer, f, start, 6, lr, normalize, interior)
        assert abs(res.objective[i] - ref) <= 0.1 * abs(ref) + 1e-6, (f, res.objective[i], ref)
        assert res.dead[i] or res.history[i, -1] > res.history[i, 0]
    assert not res.dead.all()


@pytest.mark.slow
def test_same_key_same_patterns_and_batch_size_independent(vgg):
    _, model, params = vgg
    recipe = get_recipe("dlwp2", size=56, steps=3)
    a = filter_patterns(model, params, "block1_conv2", range(6), recipe, jax.random.key(1))
    b = filter_patterns(model, params, "block1_conv2", range(6), recipe, jax.random.key(1))
    np.testing.assert_array_equal(a.patterns, b.patterns)
    c = filter_patterns(model, params, "block1_conv2", range(6), recipe, jax.random.key(1), batch_size=4)
    np.testing.assert_allclose(c.patterns, a.patterns, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(c.images.shape, a.images.shape)
    assert a.images.shape == (6, 6, 6, 3) and a.images.dtype == np.uint8  # 56 - 2*25 crop


def test_second_call_does_not_recompile(vgg):
    _, model, params = vgg
    recipe = get_recipe("dlwp1", size=32, steps=2)
    with count_compilations() as first:
        filter_patterns(model, params, "block1_conv1", [0, 1], recipe)
    with count_compilations() as second:
        filter_patterns(model, params, "block1_conv1", [5, 6], recipe, jax.random.key(3))
    assert first.count >= 1 and second.count == 0


def test_single_channel_shortcut_equals_full_layer(vgg):
    _, model, params = vgg
    recipe = get_recipe("dlwp1", size=32, steps=3)
    a = filter_patterns(model, params, "block2_conv2", [1, 9], recipe, single_channel=True)
    b = filter_patterns(model, params, "block2_conv2", [1, 9], recipe, single_channel=False)
    np.testing.assert_allclose(a.patterns, b.patterns, rtol=0, atol=1e-3)


@pytest.mark.slow
def test_dead_filter_reported_without_nan():
    model = get_model("fashion_cnn")
    params = model.init(jax.random.key(0))
    params["conv2d"]["kernel"] = params["conv2d"]["kernel"].at[..., 4].set(0.0)
    params["conv2d"]["bias"] = params["conv2d"]["bias"].at[4].set(-1.0)
    for name in ("dlwp1", "dlwp2"):
        res = filter_patterns(model, params, "conv2d", [3, 4], get_recipe(name, size=56, steps=3))
        assert res.dead.tolist() == [False, True]
        assert np.all(np.isfinite(res.patterns)) and np.all(np.isfinite(res.objective))


def test_errors(vgg):
    _, model, params = vgg
    with pytest.raises(JaxvizError, match=r"filter index 64 out of range for block1_conv1 of vgg16_notop: valid 0..63"):
        filter_patterns(model, params, "block1_conv1", [0, 64], "dlwp1")
    with pytest.raises(JaxvizError, match="unknown layer 'block9_conv1'"):
        filter_patterns(model, params, "block9_conv1", [0], "dlwp1")
    with pytest.raises(JaxvizError, match="valid recipes: dlwp1, dlwp2, lucid"):
        filter_patterns(model, params, "block1_conv1", [0], "deepdream")
    with pytest.raises(JaxvizError, match="too small"):
        filter_patterns(model, params, "block5_conv1", [0], get_recipe("dlwp1", size=8))


def test_trained_model_patterns_excite_their_own_filters(fixtures_dir):
    loaded = load_model(None, fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5")
    model, params = loaded.model, loaded.params
    # seed 002's recipe composed for a [0, 1]-input model: a full-range start and a smaller step
    recipe = get_recipe("dlwp2", size=60, steps=30, param=pixels(uniform_start(0.0, 1.0)),
                        optimizer=optax.chain(normalize_l2(), optax.scale(-1.0)))
    res = filter_patterns(model, params, "conv2d_1", range(16), recipe, jax.random.key(0))
    live = ~res.dead
    assert live.sum() >= 6  # the rest see no gradient from noise (ReLU off everywhere): reported dead
    assert np.all(res.history[live, -1] > res.history[live, 0])  # the objective rises
    acts = np.asarray(model(params, jnp.asarray(res.patterns), until="conv2d_1"))[:, 2:-2, 2:-2, :16].mean(axis=(1, 2))
    own = np.diag(acts)
    others = (acts.sum(axis=0) - own) / (len(own) - 1)
    assert np.mean(own[live] - others[live]) > 0
    assert np.mean(own[live] > others[live]) >= 0.75


@pytest.mark.slow
def test_lucid_recipe_runs_and_rises(fixtures_dir):
    loaded = load_model(None, fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5")
    res = filter_patterns(loaded.model, loaded.params, "conv2d", [0, 1, 2], get_recipe("lucid", size=28, steps=80),
                          jax.random.key(0))
    assert res.images.dtype == np.uint8 and res.images.shape == (3, 28, 28, 1)
    live = ~res.dead
    assert np.all(res.objective[live] > res.history[live, 0])


def test_octaves_grow_the_image_and_keep_rising():
    loaded = load_model(None, "builtin:digits_cnn")
    recipe = get_recipe("dlwp1", size=28, steps=4, octaves=3, octave_scale=1.3)
    assert recipe.sizes() == [17, 22, 28]
    res = filter_patterns(loaded.model, loaded.params, "conv2d_1", range(4), recipe, jax.random.key(0))
    assert res.patterns.shape == (4, 28, 28, 1) and res.history.shape == (4, 13)
    assert np.all(res.history[:, -1] > res.history[:, 0])
    with pytest.raises(JaxvizError, match="too small"):
        filter_patterns(loaded.model, loaded.params, "conv2d_1", [0], recipe._replace(size=2), jax.random.key(0))  # octave 1: 1 px


def test_fft_resize_is_the_same_picture_at_a_larger_size():
    from jaxviz.methods.features import fft_decorrelated

    param = fft_decorrelated(sd=0.5)
    p = param.init(jax.random.key(0), (24, 24, 3))
    small = np.asarray(param.to_image(p))
    big = np.asarray(param.to_image(param.resize(p, (48, 48, 3))))
    assert big.shape == (48, 48, 3)
    np.testing.assert_allclose(big[::2, ::2], small, atol=1e-5)  # band-limited interpolation keeps the samples


@pytest.mark.slow
def test_bfloat16_mode_reaches_the_float32_objective():
    loaded = load_model(None, "builtin:digits_cnn")
    recipe = get_recipe("dlwp2", size=56, steps=8)
    f32 = filter_patterns(loaded.model, loaded.params, "conv2d_1", range(6), recipe, jax.random.key(2))
    bf16 = filter_patterns(loaded.model, loaded.params, "conv2d_1", range(6), recipe._replace(dtype="bfloat16"),
                           jax.random.key(2))
    assert bf16.patterns.dtype == np.float32 and np.all(np.isfinite(bf16.patterns))
    assert not np.array_equal(bf16.patterns, f32.patterns)  # it did run in bf16
    np.testing.assert_allclose(bf16.objective, f32.objective, rtol=0.1)
