"""Intermediate activations: parity with a Keras multi-output model, the renderer's recipe and properties."""

import os
import subprocess
import sys

import hypothesis.extra.numpy as hnp
import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_ref
from benchmarks.seed_render import seed_display_grid
from conftest import rel_err
from jaxviz import get_model, load_image, preprocess
from jaxviz.methods.activations import activations, default_layers
from jaxviz.viz.render import activation_grid, normalize_channels
from weights_convert import load_keras_weights


@pytest.fixture(scope="module")
def cats_dogs(tmp_path_factory):
    km = keras_ref.build("cats_dogs_small")
    path = tmp_path_factory.mktemp("cd") / "cd.keras"
    km.save(path)
    arch, params = load_keras_weights(path)
    return km, get_model(arch), params


def test_activations_equal_keras_multi_output_model(cats_dogs):
    km, model, params = cats_dogs
    x = preprocess(load_image("sample:chelsea", (150, 150))[None], "scale255")
    ours = activations(model, params, x)
    assert list(ours) == [l.name for l in km.layers[:8]]  # the seeds' model.layers[:8]
    multi = keras.Model(km.inputs, [l.output for l in km.layers[:8]])
    for (name, a), r in zip(ours.items(), multi.predict(x, verbose=0)):
        assert a.shape == r.shape
        assert rel_err(a, r) <= 1e-5, name


def test_second_call_does_not_recompile(cats_dogs):
    _, model, params = cats_dogs
    x = np.zeros((3, 150, 150, 3), np.float32)  # a batch size no other test uses: the first call compiles
    from jaxviz import count_compilations

    with count_compilations() as first:
        activations(model, params, x)
    with count_compilations() as second:
        activations(model, params, x + 1)
    assert first.count >= 1 and second.count == 0


def test_default_layers_are_conv_and_pool():
    assert default_layers(get_model("fashion_cnn")) == ["conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1"]


def test_grid_equals_seed_recipe_and_keeps_every_channel():
    rng = np.random.default_rng(0)
    act = rng.gamma(2.0, 1.0, (1, 12, 12, 40)).astype(np.float32)
    act[..., 5] = 3.0  # a dead channel
    seed = seed_display_grid(np.delete(act, 5, axis=-1)[..., :32])  # seed drops the remainder (and NaNs dead ones)
    ours_live = activation_grid(np.delete(act, 5, axis=-1)[0, ..., :32]).image
    diff = np.abs(ours_live.astype(int) - seed.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float64 statistics vs the seed's float32: rare 1-level ties
    g = activation_grid(act[0], images_per_row=16)
    assert g.image.shape == (3 * 12, 16 * 12)  # 40 channels -> 3 rows, the last one partial
    assert g.dead == 1
    assert np.all(g.image[:12, 5 * 12:6 * 12] == 128)  # dead channel: mid-grey
    assert np.all(g.image[24:, 8 * 12:] == 0)  # padding of the partial last row
    # hand-computed: a channel [0, 2] -> mean 1, std 1 -> (-1*64+128, 1*64+128) = (64, 192)
    two = np.array([[[0.0], [2.0]]], np.float32)
    np.testing.assert_array_equal(normalize_channels(two)[0][..., 0], [[64, 192]])


@settings(max_examples=60, deadline=None)
@given(
    act=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 20)),
        elements=st.one_of(
            st.floats(width=32, allow_nan=False, allow_infinity=False),
            st.floats(min_value=-2.0**-100, max_value=2.0**-100, width=32, allow_subnormal=True, exclude_min=True,
                      exclude_max=True),
        ),
    ),
    per_row=st.integers(1, 17),
)
def test_renderer_properties(act, per_row):
    g = activation_grid(act, per_row)
    h, w, c = act.shape
    assert g.image.dtype == np.uint8
    assert g.image.shape == (-(-c // per_row) * h, per_row * w)
    assert 0 <= g.dead <= c
    const = np.all(act == act[:1, :1], axis=(0, 1))
    assert g.dead >= int(const.sum())


def test_cli_activations_writes_pngs_and_npz(fixtures_dir, tmp_path):
    out = tmp_path / "acts"
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "activations", "--weights",
                        str(fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5"), "--image", "sample:camera",
                        "--out", str(out), "--per-row", "8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dead channels" in r.stdout and "conv2d_1" in r.stdout
    data = np.load(out / "activations.npz")
    assert set(data.files) == {"conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1"}
    assert data["conv2d"].shape == (28, 28, 32) and data["conv2d"].dtype == np.float32
    assert sorted(os.listdir(out)) == sorted([f"{n}.png" for n in data.files] + ["activations.npz"])
    bad = subprocess.run([sys.executable, "-m", "jaxviz.cli", "activations", "--model", "fashion_cnn", "--image",
                          "sample:camera", "--out", str(tmp_path / "bad"), "--layers", "conv9"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown layer 'conv9' in fashion_cnn; valid layers: conv2d" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
