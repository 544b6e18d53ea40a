"""weights_convert: every Keras format against Keras itself, the real fixture files, and every error."""

import os
import subprocess
import sys
import zipfile

import h5py
import jax
import keras
import numpy as np
import pytest

import keras_ref
from conftest import rel_err
from jaxviz import JaxvizError, get_model
from jaxviz.io.checkpoint import load_checkpoint
from weights_convert import load_keras_weights
from weights_convert.cli import main as convert_main

CASES = [("fashion_cnn", (28, 28, 1)), ("cats_dogs_small", (150, 150, 3)), ("vgg16_notop", (64, 64, 3)),
         ("vgg16_finetuned", (150, 150, 3))]


def assert_same_activations(model, params, km, shape, tol=1e-5):
    x = np.random.default_rng(0).uniform(0, 1, (2,) + shape).astype(np.float32)
    ref = keras_ref.activations(km, x)
    ours = model.tap(params, x, model.layer_names)
    for (name, ref_act) in zip(model.layer_names, ref):
        assert rel_err(ours[name], ref_act) <= tol, name


@pytest.mark.slow
@pytest.mark.parametrize("arch,shape", CASES)
def test_every_format_matches_keras(arch, shape, tmp_path):
    km = keras_ref.build(arch, shape if arch == "vgg16_notop" else None)
    if arch == "vgg16_finetuned":  # seed 003: only block5 trainable -> trainable weights listed first
        for layer in km.layers[0].layers:
            layer.trainable = layer.name.startswith("block5")
    paths = keras_ref.write_all_formats(km, str(tmp_path))
    if arch == "vgg16_finetuned":
        names = list(h5py.File(paths["legacy_h5"])["model_weights"]["vgg16"].attrs["weight_names"])
        assert names[0].startswith("block5_conv1")  # the order this case is about
    for fmt, path in paths.items():
        detected, params = load_keras_weights(path)  # the architecture told by the file alone
        assert detected == arch, fmt
        model = get_model(arch)
        assert_same_activations(model, params, km, shape)
        named, forced = load_keras_weights(path, arch)  # naming it gives the same parameters
        assert named == arch and forced.keys() == params.keys(), fmt
        assert all(np.array_equal(forced[l][k], params[l][k]) for l in params for k in params[l]), fmt


@pytest.mark.slow
def test_vgg16_with_top_published_layout(tmp_path):
    km = keras_ref.build("vgg16")
    keras_ref.write_published(km, str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"))
    arch, params = load_keras_weights(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    assert arch == "vgg16"
    x = np.random.default_rng(1).uniform(-120, 120, (1, 224, 224, 3)).astype(np.float32)
    model = get_model("vgg16")
    ours = model.tap(params, x, ["block5_conv3", "predictions"])
    ref = keras.Model(km.input, [km.get_layer("block5_conv3").output, km.output])(x)
    assert rel_err(ours["block5_conv3"], ref[0]) <= 1e-5
    assert rel_err(ours["predictions"], ref[1]) <= 1e-5


@pytest.mark.parametrize("name", ["fashion_cnn_keras2.4.h5", "fashion_cnn_keras2.8.h5", "fashion_cnn_keras2.9.h5",
                                  "fashion_cnn_keras2.11.h5", "fashion_cnn_keras3.4.keras"])
def test_real_fixture_files_match_keras_loading_them(fixtures_dir, name):
    path = fixtures_dir / "keras" / name
    arch, params = load_keras_weights(path)
    assert arch == "fashion_cnn"
    km = keras.models.load_model(path, compile=False)
    fruits = np.load(fixtures_dir / "data" / "fruits_300.npy")[::37]
    x = (jax.image.resize(fruits[..., None].astype(np.float32), (len(fruits), 28, 28, 1), "linear") / 255.0)
    x = np.asarray(x)
    model = get_model(arch)
    ours = model.tap(params, x, model.layer_names)
    ref = keras_ref.activations(km, x)
    for n, r in zip(model.layer_names, ref):
        assert rel_err(ours[n], r) <= 1e-5, n
    assert rel_err(model(params, x), km.predict(x, verbose=0)) <= 1e-6


def test_cli_writes_checkpoint_and_never_overwrites(fixtures_dir, tmp_path, capsys):
    src = str(fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5")
    dest = tmp_path / "ck"
    assert convert_main([src, str(dest)]) == 0
    out = capsys.readouterr().out
    assert "conv2d_1" in out and "333,526" in out and "fashion_cnn" in out
    model, params, meta = load_checkpoint(dest)
    assert meta["info"]["source_format"] == "keras2-h5"
    np.testing.assert_array_equal(params["dense_1"]["bias"], load_keras_weights(src)[1]["dense_1"]["bias"])
    stamp = os.path.getmtime(dest / "jaxviz.json")
    assert convert_main([src, str(dest)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.path.getmtime(dest / "jaxviz.json") == stamp
    assert convert_main([src, str(tmp_path / "dry"), "--dry-run"]) == 0
    assert not (tmp_path / "dry").exists()
    assert sorted(os.listdir(tmp_path)) == ["ck"]


# --------------------------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def vgg_notop_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("vgg")
    km = keras_ref.build("vgg16_notop", (32, 32, 3))
    keras_ref.write_published(km, str(d / "notop.h5"))
    return d / "notop.h5"


def test_vgg19_into_vgg16_names_first_misfit(tmp_path):
    keras.backend.clear_session()
    km = keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3))
    keras_ref.write_published(km, str(tmp_path / "vgg19.h5"))
    with pytest.raises(JaxvizError, match=r"layer 'block4_conv1' kernel expected shape \(3, 3, 256, 512\), "
                                          r"found \(3, 3, 256, 256\) \(file layer 'block3_conv4'\)"):
        load_keras_weights(tmp_path / "vgg19.h5", "vgg16_notop")
    with pytest.raises(JaxvizError, match="cannot tell which architecture"):
        load_keras_weights(tmp_path / "vgg19.h5")


def test_with_top_file_into_notop(tmp_path):
    km = keras_ref.build("cats_dogs_small")
    km.save(tmp_path / "cd.keras")
    with pytest.raises(JaxvizError, match="layer 'block1_conv1' kernel expected shape"):
        load_keras_weights(tmp_path / "cd.keras", "vgg16_notop")
    # a real with-top VGG file into the notop model names the extra dense layers
    with h5py.File(tmp_path / "top.h5", "w") as f:
        names = [f"block{b}_conv{i}" for b, n in [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)] for i in range(1, n + 1)]
        shapes = get_model("vgg16_notop").param_shapes()
        f.attrs["layer_names"] = [n.encode() for n in names + ["fc1"]]
        for n in names:
            g = f.create_group(n)
            g.attrs["weight_names"] = [f"{n}_W_1:0".encode(), f"{n}_b_1:0".encode()]
            g[f"{n}_W_1:0"] = np.zeros(shapes[n]["kernel"], np.float32)
            g[f"{n}_b_1:0"] = np.zeros(shapes[n]["bias"], np.float32)
        g = f.create_group("fc1")
        g.attrs["weight_names"] = [b"fc1_W_1:0", b"fc1_b_1:0"]
        g["fc1_W_1:0"] = np.zeros((25088, 8), np.float32)
        g["fc1_b_1:0"] = np.zeros((8,), np.float32)
    with pytest.raises(JaxvizError, match=r"1 more dense layer\(s\).*'fc1'.*try arch='vgg16'"):
        load_keras_weights(tmp_path / "top.h5", "vgg16_notop")


def test_truncated_and_corrupt_files(vgg_notop_file, fixtures_dir, tmp_path):
    data = vgg_notop_file.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(JaxvizError, match="damaged or truncated HDF5"):
        load_keras_weights(tmp_path / "trunc.h5")
    zdata = (fixtures_dir / "keras" / "fashion_cnn_keras3.4.keras").read_bytes()
    (tmp_path / "trunc.keras").write_bytes(zdata[: len(zdata) // 2])
    with pytest.raises(JaxvizError, match="zip"):
        load_keras_weights(tmp_path / "trunc.keras")
    (tmp_path / "junk.h5").write_bytes(b"hello world, not hdf5")
    with pytest.raises(JaxvizError, match="not an HDF5 or .keras file"):
        load_keras_weights(tmp_path / "junk.h5")
    with pytest.raises(JaxvizError, match="weights file not found"):
        load_keras_weights(tmp_path / "nope.h5")


def test_missing_groups_and_nan(vgg_notop_file, tmp_path):
    import shutil

    shutil.copy(vgg_notop_file, tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        del f["block2_conv1"]
    with pytest.raises(JaxvizError, match="layer group 'block2_conv1' listed in layer_names is missing"):
        load_keras_weights(tmp_path / "m.h5")
    shutil.copy(vgg_notop_file, tmp_path / "n.h5")
    with h5py.File(tmp_path / "n.h5", "a") as f:
        ds = f["block3_conv2"]["block3_conv2_W_1:0"]
        w = ds[()]
        w[0, 0, 0, 0] = np.nan
        ds[...] = w
    with pytest.raises(JaxvizError, match="'block3_conv2' kernel contains NaN or Inf"):
        load_keras_weights(tmp_path / "n.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.attrs["something"] = 1
    with pytest.raises(JaxvizError, match="not a Keras weights file"):
        load_keras_weights(tmp_path / "empty.h5")
    with pytest.raises(JaxvizError, match="valid architectures: vgg16"):
        load_keras_weights(vgg_notop_file, "resnet50")


def test_lambda_and_custom_objects_refused(tmp_path):
    keras.backend.clear_session()
    inp = keras.Input((28, 28, 1))
    out = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)
    out = keras.layers.Conv2D(2, 3)(out)
    m = keras.Model(inp, out)
    m.save(tmp_path / "lam.h5")
    with pytest.raises(JaxvizError, match="Lambda layer 'double'"):
        load_keras_weights(tmp_path / "lam.h5")
    # a .keras archive whose config names a custom class from a user module
    src = zipfile.ZipFile(tmp_path / "c.keras", "w")
    src.writestr("config.json", '{"module": "keras", "class_name": "Sequential", "config": {"layers": ['
                                '{"module": "evil.layers", "class_name": "Sneaky", "registered_name": "Custom>Sneaky",'
                                ' "config": {"name": "sneaky"}}]}}')
    src.writestr("metadata.json", "{}")
    src.writestr("model.weights.h5", b"")
    src.close()
    with pytest.raises(JaxvizError, match="custom object 'Custom>Sneaky'"):
        load_keras_weights(tmp_path / "c.keras")


def test_pickle_is_refused(tmp_path):
    import pickle

    (tmp_path / "w.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(JaxvizError, match="pickled data is never loaded"):
        load_keras_weights(tmp_path / "w.pkl")


def test_cli_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "weights_convert.cli", str(tmp_path / "none.h5"), str(tmp_path / "d")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "weights file not found" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()


def test_keras20_sequential_config_as_plain_list(fixtures_dir, tmp_path):
    import json
    import shutil

    shutil.copy(fixtures_dir / "keras" / "fashion_cnn_keras2.4.h5", tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "a") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"] = cfg["config"]["layers"]  # Keras 2.0 wrote a Sequential's layers as a bare list
        f.attrs["model_config"] = json.dumps(cfg)
    arch, params = load_keras_weights(tmp_path / "old.h5")
    ref = load_keras_weights(fixtures_dir / "keras" / "fashion_cnn_keras2.4.h5")[1]
    assert arch == "fashion_cnn"
    np.testing.assert_array_equal(params["conv2d"]["kernel"], ref["conv2d"]["kernel"])
    # --arch overrides detection (digits_cnn has the same shapes)
    assert load_keras_weights(tmp_path / "old.h5", "digits_cnn")[0] == "digits_cnn"
