"""Trained small CNNs (shipped checkpoints, training) and weight visualisation (seed 004)."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxviz
from jaxviz.io import datasets
from jaxviz.errors import JaxvizError
from jaxviz.nn import get_model
from jaxviz.nn.train import accuracy, train_classifier
from jaxviz.methods.weights import kernel_tiles, layer_weights, weight_stats


def jaxviz_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jaxviz.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_weights_cli_histogram_equals_numpy_histogram_of_keras_weights(fixtures_dir, tmp_path):
    import keras

    path = fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5"
    km = keras.models.load_model(path, compile=False)
    r = jaxviz_cli("weights", "--weights", path, "--layer", "conv2d", "--layer", "conv2d_1", "--layer", "dense",
                   "--compare-untrained", "--out", tmp_path / "w")
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "w" / "weights.npz")
    for i, layer in ((0, "conv2d"), (2, "conv2d_1"), (5, "dense")):
        w = km.layers[i].get_weights()[0]
        counts, edges = np.histogram(w.reshape(-1, 1), bins=10)  # seed 004's plt.hist input
        np.testing.assert_array_equal(z[f"{layer}_counts"], counts)
        np.testing.assert_array_equal(z[f"{layer}_edges"], edges)
        np.testing.assert_array_equal(z[f"{layer}_kernel"], w)
        assert z[f"{layer}_untrained_counts"].sum() == w.size
        # glorot-uniform limit sqrt(6 / (fan_in + fan_out)) bounds the fresh weights
        fan_in, fan_out = np.prod(w.shape[:-1]), w.shape[-1]
        if w.ndim == 4:
            fan_in, fan_out = np.prod(w.shape[:3]), w.shape[0] * w.shape[1] * w.shape[3]
        assert np.abs(z[f"{layer}_untrained_kernel"]).max() <= np.sqrt(6 / (fan_in + fan_out))
    assert list(z["stat_names"]) == ["mean", "std", "min", "max", "near_zero"]
    files = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert files == ["conv2d_1_hist.png", "conv2d_1_kernels.png", "conv2d_1_kernels_untrained.png", "conv2d_hist.png",
                     "conv2d_kernels.png", "conv2d_kernels_untrained.png", "dense_hist.png", "weights.npz"]
    assert "conv2d           trained" in r.stdout and "untrained (fresh init)" in r.stdout


@pytest.mark.slow
def test_weights_cli_errors(tmp_path):
    r = jaxviz_cli("weights", "--model", "fashion_cnn", "--layer", "max_pooling2d", "--out", tmp_path / "w")
    assert r.returncode == 2 and "layer 'max_pooling2d' of fashion_cnn has no weights; layers with weights: conv2d" in r.stderr
    r = jaxviz_cli("weights", "--model", "fashion_cnn", "--layer", "conv7", "--out", tmp_path / "w")
    assert r.returncode == 2 and "unknown layer 'conv7' in fashion_cnn; valid layers: conv2d" in r.stderr
    r = jaxviz_cli("weights", "--model", "fashion_cnn", "--in-channel", "rgb", "--out", tmp_path / "w")
    assert r.returncode == 2 and "colour tiles need 3 input channels; this kernel has 1" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


def test_weight_stats_hand_computed():
    st = weight_stats(np.array([-1.0, 0.0, 0.005, 2.0]), near_zero=0.01)
    np.testing.assert_allclose(st, [0.25125, np.std([-1.0, 0.0, 0.005, 2.0]), -1.0, 2.0, 0.5])


def test_kernel_tiles_select_channel_and_colour():
    k = np.arange(3 * 3 * 3 * 4, dtype=np.float32).reshape(3, 3, 3, 4)
    t = kernel_tiles(k, 1)
    assert t.shape == (4, 3, 3)
    np.testing.assert_array_equal(t[2], k[:, :, 1, 2])
    rgb = kernel_tiles(k, "rgb", limit=2)
    assert rgb.shape == (2, 3, 3, 3)
    assert rgb[1].min() == 0 and rgb[1].max() == 1
    np.testing.assert_allclose(rgb[1], (k[..., 1] - k[..., 1].min()) / np.ptp(k[..., 1]))
    with pytest.raises(JaxvizError, match=r"input channel 3 out of range: this kernel has 3 \(0..2, or rgb\)"):
        kernel_tiles(k, 3)


def test_layer_weights_dense_has_histogram():
    m = get_model("fashion_cnn")
    lw = layer_weights(m, m.init(jax.random.key(0)), "dense_1", bins=7)
    assert lw.kernel.shape == (100, 10) and lw.counts.sum() == 1000 and len(lw.edges) == 8


def test_shipped_digits_checkpoint_classifies_held_out_digits():
    loaded = jaxviz.load_model("digits_cnn", "builtin")
    info = jaxviz.io.checkpoint.read_meta(jaxviz.io.builtin_weights("digits_cnn"))["info"]
    x, y = datasets.digits()
    held_out = datasets.split(jax.random.key(info["split_seed"]), x, y, info["test_fraction"])
    assert len(held_out.y_test) == info["n_test"] == 359
    acc = accuracy(loaded.model, loaded.params, held_out.x_test, held_out.y_test)
    assert acc >= 0.97
    assert acc == pytest.approx(info["test_accuracy"])


def test_shipped_fruits_checkpoint():
    loaded = jaxviz.load_model(None, "builtin:fruits_cnn")
    info = jaxviz.io.checkpoint.read_meta(jaxviz.io.builtin_weights("fruits_cnn"))["info"]
    x, y = datasets.fruits()  # the set packaged with jaxviz
    held_out = datasets.split(jax.random.key(info["split_seed"]), x, y, info["test_fraction"])
    assert accuracy(loaded.model, loaded.params, held_out.x_test, held_out.y_test) >= 0.95


@pytest.mark.slow
def test_training_is_deterministic_and_learns():
    x, y = datasets.digits()
    data = datasets.split(jax.random.key(0), x[:400], y[:400], 0.25)
    runs = [train_classifier(jax.random.key(3), get_model("digits_cnn"), *data, epochs=3, batch_size=50)
            for _ in range(2)]
    for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
        np.testing.assert_array_equal(a, b)
    h = runs[0].history
    assert [e.epoch for e in h] == [1, 2, 3]
    assert h[-1].loss < h[0].loss
    assert h[-1].test_accuracy > 0.5  # 10 classes: chance is 0.1


def test_split_is_stratified_and_disjoint():
    x = np.arange(100)[:, None]
    y = np.repeat([0, 1], 50)
    s = datasets.split(jax.random.key(1), x, y, 0.2)
    assert np.bincount(s.y_test).tolist() == [10, 10]
    assert not set(s.x_test.ravel()) & set(s.x_train.ravel())


def test_builtin_weights_errors():
    # the library names its arguments; the CLI says them as flags (tests/test_cli_errors.py)
    with pytest.raises(JaxvizError, match="weights='builtin' needs model=NAME; trained builtin weights exist for digits_cnn"):
        jaxviz.load_model(None, "builtin")
    with pytest.raises(JaxvizError, match="unknown builtin weights 'vgg16'; valid builtin weights: digits_cnn"):
        jaxviz.load_model("vgg16", "builtin")
    with pytest.raises(JaxvizError, match="holds digits_cnn weights, not fruits_cnn"):
        jaxviz.load_model("fruits_cnn", "builtin:digits_cnn")
