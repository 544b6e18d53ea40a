"""Any Keras model, rebuilt from its file's own config (issue 16), checked against Keras itself on every
layer; the refusals and size caps of the Keras reader (issue 19, defects 5 and 6).

The models are built with Keras (JAX backend, ``weights=None``, seeded, random batch-norm statistics and
biases), saved as ``.keras`` and as legacy ``.h5``, and opened with the public ``jaxviz.load_model``.
"""

import json
import os
import subprocess
import sys
import tracemalloc
import types
import zipfile

import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import keras_ref
import jaxviz
from jaxviz import JaxvizError
from jaxviz.io import keras as keras_io
from jaxviz.io.checkpoint import load_checkpoint
from jaxviz.nn import layers as L
from jaxviz.nn.keras_graph import build_graph, graph_from_spec, graph_spec, preprocessing_for
from jaxviz.nn.preprocess import deprocess, preprocess
from weights_convert.cli import main as convert_main
from conftest import assert_scaled_close

TOL = 1e-5


def rel(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def build_and_save(km: keras.Model, directory, batch: int, seed: int = 0, low: float = -1.0, high: float = 1.0):
    """Save ``km`` as .keras and legacy .h5 and compute Keras's own answers once: every leaf layer's output
    (by path) and the predictions for a random batch."""
    paths = {"keras": str(directory / f"{km.name}.keras"), "h5": str(directory / f"{km.name}.h5")}
    km.save(paths["keras"])
    km.save(paths["h5"])
    shape = tuple(km.inputs[0].shape[1:])
    x = np.random.default_rng(seed).uniform(low, high, (batch,) + shape).astype(np.float32)
    return types.SimpleNamespace(km=km, paths=paths, x=x, layers=keras_ref.layer_outputs(km, x),
                                 preds=np.asarray(km.predict(x, verbose=0)))


def worst_layer_error(case, fmt: str) -> tuple[float, jaxviz.Loaded]:
    """Open the file with jaxviz and compare every layer and the predictions with Keras; returns the worst
    relative error over layers."""
    loaded = jaxviz.load_model(weights=case.paths[fmt])
    model, params = loaded.model, loaded.params
    by_leaf: dict[str, list] = {}
    for path in case.layers:
        by_leaf.setdefault(path[-1], []).append(path)
    paths = {n: tuple(n.split("/")) if "/" in n else by_leaf[n][0] for n in model.layer_names}
    # every Keras leaf layer is exactly one jaxviz step
    assert sorted(paths.values()) == sorted(case.layers)
    out = model.run(params, case.x, taps=model.layer_names)
    errors = {n: rel(out.taps[n], case.layers[paths[n]]) for n in model.layer_names}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, (worst, errors[worst])
    assert rel(out.output, case.preds) <= TOL
    return errors[worst], loaded


# ------------------------------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def user_sequential(tmp_path_factory):
    return build_and_save(keras_ref.user_cnn_sequential(), tmp_path_factory.mktemp("useq"), 3, low=0, high=255)


@pytest.fixture(scope="module")
def user_functional(tmp_path_factory):
    return build_and_save(keras_ref.user_cnn_functional(), tmp_path_factory.mktemp("ufun"), 3, low=0, high=255)


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    """An applications base inside a Sequential with a new head, the first 100 base layers frozen."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3))
    for layer in base.layers[:100]:
        layer.trainable = False
    km = keras.Sequential([keras.Input((96, 96, 3)), base, keras.layers.GlobalAveragePooling2D(),
                           keras.layers.Dropout(0.2), keras.layers.Dense(3, activation="softmax")], name="transfer")
    keras_ref.randomize_weights(km)
    return build_and_save(km, tmp_path_factory.mktemp("transfer"), 2)


def _application(build, tmp_path_factory):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    km = build(weights=None)
    keras_ref.randomize_weights(km)
    return build_and_save(km, tmp_path_factory.mktemp(km.name), 1)


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    return _application(keras.applications.ResNet50, tmp_path_factory)


@pytest.fixture(scope="module")
def mobilenetv2(tmp_path_factory):
    return _application(keras.applications.MobileNetV2, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_user_sequential_cnn_every_layer(user_sequential, fmt):
    _, loaded = worst_layer_error(user_sequential, fmt)
    model = loaded.model
    assert model.name == "user_cnn" and model.preprocessing == "none" and model.labels is None
    kinds = {model.kind(n) for n in model.layer_names}
    assert kinds >= {"input_transform", "conv", "norm", "act", "pool", "pad", "resize", "dropout", "dense",
                     "global_pool", "flatten"}
    assert isinstance(model.layer("re_lu"), L.ReLU)  # max_value 4, slope, threshold: Keras's general formula


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_user_functional_cnn_every_layer(user_functional, fmt):
    _, loaded = worst_layer_error(user_functional, fmt)
    model = loaded.model
    assert dict(model.wiring)["average"] == ("branch_a", "branch_b", "stem")  # three inbound tensors
    # every Keras activation function (Keras writes the aliases swish/hard_swish as silu/hard_silu)
    assert {model.layer(f"act_{n}").activation for n in keras_ref.KERAS_ACTIVATIONS} == \
        set(keras_ref.KERAS_ACTIVATIONS) - {"swish", "hard_swish"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_transfer_learning_model_nested_base(transfer, fmt):
    _, loaded = worst_layer_error(transfer, fmt)
    model = loaded.model
    assert model.preprocessing == "tf"  # from the nested MobileNetV2 base
    assert model.labels is None and "input_layer" not in model.layer_names
    assert model.resolve("mobilenetv2_1.00_96") == "out_relu"  # the nested model's name: its output
    assert model.layer("Conv1_relu").activation == "relu6"  # ReLU(6.) takes part in guided backprop
    guided = model.guided()
    assert guided.layer("Conv1_relu").activation == "guided_relu6"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_resnet50(resnet50, fmt):
    _, loaded = worst_layer_error(resnet50, fmt)
    assert (loaded.model.name, loaded.model.preprocessing, loaded.model.labels) == ("resnet50", "caffe", "imagenet")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_mobilenetv2(mobilenetv2, fmt):
    _, loaded = worst_layer_error(mobilenetv2, fmt)
    assert (loaded.model.preprocessing, loaded.model.labels) == ("tf", "imagenet")


def keras_gradcam(feats, score) -> np.ndarray:
    """The seeds' Grad-CAM through Keras's own layers: channel weights = mean gradient of the score over
    the map, ReLU of the weighted sum, divided by its maximum."""
    grads = jax.grad(lambda f: jnp.sum(score(f)))(jnp.asarray(feats))
    cam = np.maximum(np.einsum("nhwc,nc->nhw", np.asarray(feats), np.asarray(grads).mean(axis=(1, 2))), 0)
    return cam / cam.max(axis=(1, 2), keepdims=True)


@pytest.mark.slow
def test_gradcam_inside_resnet50_block_equals_keras(resnet50):
    km, layer, cls = resnet50.km, "conv4_block6_out", 7
    feats = keras.Model(km.input, km.get_layer(layer).output)(resnet50.x)
    tail = keras.Model(km.get_layer(layer).output, km.output)
    ref = keras_gradcam(feats, lambda f: tail(f)[:, cls])
    loaded = jaxviz.load_model(weights=resnet50.paths["keras"])
    cams = jaxviz.explain(loaded.model, loaded.params, resnet50.x, [cls], layer=layer, score="probability")
    assert np.abs(cams.heatmaps[:, 0] - ref).max() <= 1e-4


@pytest.mark.slow
def test_gradcam_inside_nested_base_equals_keras(transfer):
    """The case that gives "Graph disconnected" in Keras recipes: a layer inside the nested base."""
    km, layer, cls = transfer.km, "block_13_expand_relu", 1
    base = km.layers[0]
    feats = keras.Model(base.input, base.get_layer(layer).output)(transfer.x)
    base_tail = keras.Model(base.get_layer(layer).output, base.output)

    def score(f):
        h = base_tail(f)
        for head_layer in km.layers[1:]:
            h = head_layer(h, training=False)
        return h[:, cls]

    ref = keras_gradcam(feats, score)
    loaded = jaxviz.load_model(weights=transfer.paths["h5"])
    cams = jaxviz.explain(loaded.model, loaded.params, transfer.x, [cls], layer=layer, score="probability")
    assert np.abs(cams.heatmaps[:, 0] - ref).max() <= 1e-4


def test_checkpoint_carries_the_graph(user_functional, tmp_path, capsys):
    assert convert_main([user_functional.paths["keras"], str(tmp_path / "ck")]) == 0
    assert "user_functional" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ck" / "jaxviz.json").read_text())
    assert meta["graph"]["layers"][0][1] == "Normalization"
    loaded = jaxviz.load_model(weights=str(tmp_path / "ck"))  # nothing else needed
    assert loaded.model.layer_names == jaxviz.load_model(weights=user_functional.paths["keras"]).model.layer_names
    assert rel(loaded.model.run(loaded.params, user_functional.x).output, user_functional.preds) <= TOL
    # a zoo architecture's checkpoint stores no graph (its name is enough) and still loads
    zoo = jaxviz.get_model("digits_cnn")
    from jaxviz.io.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "zoo", zoo, zoo.init(jax.random.key(0)))
    assert json.loads((tmp_path / "zoo" / "jaxviz.json").read_text())["graph"] is None
    assert load_checkpoint(tmp_path / "zoo")[0].name == "digits_cnn"


def test_keras2_node_format(user_functional, tmp_path):
    """Keras 2 configs list each call as ``[[layer, node, tensor, kwargs], ...]`` (tf.keras); the same model
    written that way gives the same graph and predictions."""
    import shutil

    shutil.copy(user_functional.paths["h5"], tmp_path / "k2.h5")
    with h5py.File(tmp_path / "k2.h5", "a") as f:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            nodes = []
            for node in layer["inbound_nodes"]:
                first = node["args"][0]
                tensors = first if isinstance(first, list) else [first]
                nodes.append([t["config"]["keras_history"] + [{}] for t in tensors])
            layer["inbound_nodes"] = nodes
        cfg["config"]["input_layers"] = [cfg["config"]["input_layers"]]
        cfg["config"]["output_layers"] = [cfg["config"]["output_layers"]]
        f.attrs["model_config"] = json.dumps(cfg)
    loaded = jaxviz.load_model(weights=str(tmp_path / "k2.h5"))
    assert dict(loaded.model.wiring) == dict(jaxviz.load_model(weights=user_functional.paths["h5"]).model.wiring)
    assert rel(loaded.model.run(loaded.params, user_functional.x).output, user_functional.preds) <= TOL


def test_damaged_stored_graph_is_refused():
    spec = graph_spec(jaxviz.get_model("digits_cnn"))
    assert graph_from_spec(json.loads(json.dumps(spec))).layer_names == jaxviz.get_model("digits_cnn").layer_names
    for damage in (lambda s: s["layers"][0].__setitem__(1, "os.system"),
                   lambda s: s["layers"][0][2].__setitem__("features", "many"),
                   lambda s: s["layers"][0][2].__setitem__("__class__", 1),
                   lambda s: s["wiring"].append(["dense", ["nowhere"]]),
                   lambda s: s.pop("input_shape")):
        bad = json.loads(json.dumps(spec))
        damage(bad)
        with pytest.raises(JaxvizError, match="stored graph is damaged"):
            graph_from_spec(bad, "ck")


def test_zoo_architectures_keep_their_names(tmp_path):
    """A file whose config is exactly a registered architecture opens as that architecture (its
    preprocessing and labels); one layer more and it is imported as its own graph."""
    km = keras_ref.build("cats_dogs_small")
    km.save(tmp_path / "cd.keras")
    assert jaxviz.load_model(weights=str(tmp_path / "cd.keras")).model.name == "cats_dogs_small"
    keras.backend.clear_session()
    L_ = keras.layers
    own = keras.Sequential([keras.Input((150, 150, 3)), L_.Conv2D(32, 3, activation="relu"), L_.BatchNormalization(),
                            L_.MaxPooling2D(2), L_.Conv2D(64, 3, activation="relu"), L_.GlobalAveragePooling2D(),
                            L_.Dense(1, activation="sigmoid")], name="own")
    own.save(tmp_path / "own.h5")
    loaded = jaxviz.load_model(weights=str(tmp_path / "own.h5"))
    assert loaded.model.name == "own" and "batch_normalization" in loaded.model.layer_names


def test_input_size_left_open_defaults_to_224(tmp_path):
    keras.backend.clear_session()
    inp = keras.Input((None, None, 3))
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    keras.Model(inp, out, name="anysize").save(tmp_path / "a.keras")
    model = jaxviz.load_model(weights=str(tmp_path / "a.keras")).model
    assert model.input_shape == (224, 224, 3)
    assert model.shapes((50, 70, 3))[0][1] == (48, 68, 4)


def test_preprocessing_by_family():
    assert preprocessing_for(["sequential", "resnet50"]) == "caffe"
    assert preprocessing_for(["resnet101v2"]) == "tf" and preprocessing_for(["xception"]) == "tf"
    assert preprocessing_for(["densenet121"]) == "torch" and preprocessing_for(["efficientnetb0"]) == "none"
    assert preprocessing_for(["MobileNetV3Small"]) == "none" and preprocessing_for(["resnet_like_mine"]) == "none"
    x = np.array([[0.0, 127.5, 255.0]], np.float32)
    expected = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(preprocess(x, "torch"), expected, rtol=1e-6)
    np.testing.assert_allclose(deprocess(preprocess(x, "torch"), "torch"), x, atol=1e-4)


# ------------------------------------------------------------------------------------------------ layers


@pytest.mark.parametrize("layer", [
    L.Conv2D(6, (3, 2), "same", "relu", strides=(2, 1), groups=2, dilation=1),
    L.Conv2D(4, 3, "valid", "linear", dilation=2, use_bias=False),
    L.DepthwiseConv2D(3, "same", "relu6", depth_multiplier=3, use_bias=True),
    L.SeparableConv2D(5, 3, "valid", "swish", depth_multiplier=2),
    L.Conv2DTranspose(5, 3, "same", "elu", strides=2),
])
def test_one_channel_equals_the_full_layer(layer):
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 4))
    variables = layer.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), variables)
    full = layer.apply(variables, x)
    assert full.shape[1:] == layer.out_shape(x.shape[1:])
    for index in range(full.shape[-1]):
        one = layer.apply(variables, x, jnp.int32(index), method="one_channel")
        assert_scaled_close(one[..., 0], full[..., index], 1e-5, f"channel {index}")


def test_layer_facts():
    assert [L.kind(l) for l in (L.Conv2D(1), L.Add(), L.Rescaling(), L.ZeroPadding2D(), L.Reshape((4,)))] == \
        ["conv", "merge", "input_transform", "pad", "reshape"]
    assert L.GlobalMaxPooling2D(keepdims=True).keeps_spatial and not L.GlobalMaxPooling2D().keeps_spatial
    assert not L.Flatten().keeps_spatial and L.Dense(3).keeps_spatial and L.Dense(3).out_shape((5, 5, 8)) == (5, 5, 3)
    assert L.has_params(L.Normalization()) and not L.has_params(L.Normalization(mean=0.0, variance=1.0))
    assert L.param_shapes(L.BatchNormalization(center=False), (7, 7, 3)) == {"gamma": (3,), "moving_mean": (3,),
                                                                              "moving_variance": (3,)}
    assert L.param_shapes(L.PReLU(shared_axes=(1, 2)), (7, 7, 3)) == {"alpha": (1, 1, 3)}
    assert not hasattr(L.MaxPool2D(), "one_channel")  # the shortcut exists only where it is exact


# ------------------------------------------------------------------------------------------------ refusals


def assert_refused(path, *needles):
    with pytest.raises(JaxvizError) as e:
        jaxviz.load_model(weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


@keras.saving.register_keras_serializable(package="pkg")
class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def _tiny(middle, name="m", outputs=None):
    keras.backend.clear_session()
    inp = keras.Input((8, 8, 3))
    out = middle(inp)
    return keras.Model(inp, outputs(inp) if outputs else out, name=name)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_lambda_and_custom_classes_refused(tmp_path, fmt):
    _tiny(keras.layers.Lambda(lambda t: t * 2.0, name="double")).save(tmp_path / f"lam.{fmt}")
    assert_refused(tmp_path / f"lam.{fmt}", "Lambda", "'double'")
    _tiny(Scale(name="scale")).save(tmp_path / f"custom.{fmt}")
    assert_refused(tmp_path / f"custom.{fmt}", "'scale'", "pkg>Scale")


def test_keras3_h5_custom_class_name_refused(tmp_path):
    """Keras 3 writes a custom layer into .h5 as class_name "pkg>Scale" with no module (defect 5)."""
    _tiny(Scale(name="scale")).save(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5") as f:
        cfg = json.loads(f.attrs["model_config"])
    entry = next(l for l in cfg["config"]["layers"] if l["config"]["name"] == "scale")
    assert entry["class_name"] == "pkg>Scale" and "module" not in entry  # the layout this test is about
    assert_refused(tmp_path / "c.h5", "'scale'", "pkg>Scale")
    with pytest.raises(JaxvizError, match="custom object"):  # also without a registered_name, by module
        build_graph({"class_name": "Sequential", "config": {"layers": [
            {"class_name": "Conv2D", "module": "mypkg.layers", "config": {"name": "c", "filters": 1}}]}}, "cfg")


def test_unknown_class_several_outputs_shared_layer_refused(tmp_path):
    _tiny(keras.layers.UnitNormalization(name="unit")).save(tmp_path / "unknown.keras")
    assert_refused(tmp_path / "unknown.keras", "'unit'", "UnitNormalization", "does not know")
    conv = keras.layers.Conv2D(3, 3, padding="same", name="twice")
    _tiny(lambda t: conv(conv(t))).save(tmp_path / "shared.keras")
    assert_refused(tmp_path / "shared.keras", "'twice'", "Conv2D", "called 2 times")
    keras.backend.clear_session()
    inp = keras.Input((8, 8, 3))
    a, b = keras.layers.Conv2D(2, 1, name="a")(inp), keras.layers.Conv2D(2, 1, name="b")(inp)
    keras.Model(inp, [a, b], name="two").save(tmp_path / "two.h5")
    assert_refused(tmp_path / "two.h5", "2 outputs", "'two'")


def test_unsupported_options_refused_by_name():
    def conv(**options):
        return {"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "InputLayer", "config": {"name": "i", "batch_shape": [None, 8, 8, 3]}},
            {"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": [3, 3], **options}}]}}

    assert build_graph(conv(padding="same", kernel_initializer={"class_name": "Zeros"})).model.layer("c").padding == "same"
    for options, needle in [({"padding": "causal"}, "option padding = 'causal'"),
                            ({"data_format": "channels_first"}, "data_format 'channels_first'"),
                            ({"conv_op": "fast"}, "option conv_op"),
                            ({"lora_rank": 4}, "option lora_rank"),
                            ({"activation": "eval"}, "activation 'eval'"),
                            ({"dtype": "float16"}, "dtype policy 'float16'"),
                            ({"filters": "many"}, "option filters")]:
        with pytest.raises(JaxvizError, match="layer 'c' \\(Conv2D\\): " + needle):
            build_graph(conv(**options), "cfg")


def test_cli_refusal_is_one_line_exit_2(tmp_path):
    _tiny(keras.layers.Lambda(lambda t: t + 1.0, name="plus")).save(tmp_path / "bad.keras")
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "predict", "--weights", str(tmp_path / "bad.keras"),
                        "sample:chelsea"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "'plus'" in r.stderr and "Lambda" in r.stderr


# ------------------------------------------------------------------------------------------------ size caps


def test_huge_config_json_refused_before_decompressing(tmp_path):
    """A 65 MB config.json that compresses to almost nothing (defect 6): refused from the archive's
    directory, without inflating it."""
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", '{"class_name": "Sequential", "pad": "' + " " * (65 << 20) + '"}')
        z.writestr("metadata.json", "{}")
        z.writestr("model.weights.h5", b"")
    assert os.path.getsize(tmp_path / "bomb.keras") < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(JaxvizError, match="config.json is 65 MB, over the 64 MB"):
            keras_io.read_keras_file(tmp_path / "bomb.keras")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_weights_over_the_cap_refused_before_reading(tmp_path):
    """An 8 GiB dataset that takes no space on disk (chunked, never written): refused from its declared size."""
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.attrs["layer_names"] = [b"big"]
        g = f.create_group("big")
        g.attrs["weight_names"] = [b"big/kernel:0"]
        g.create_dataset("big/kernel:0", shape=(1 << 20, 1 << 11), dtype="f4", chunks=(1024, 1024), compression="gzip")
    assert os.path.getsize(tmp_path / "big.h5") < 1 << 20
    with pytest.raises(JaxvizError, match="weights exceed 4096 MB"):
        keras_io.read_keras_file(tmp_path / "big.h5")


# ------------------------------------------------------------------------------------------------ fuzz

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 1 << 40) | st.floats(allow_nan=True) |
                    st.text(max_size=8) | st.sampled_from(["same", "valid", "relu", "Conv2D", "InputLayer", "Add"]),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


def _nodes(value, path=()):
    """Every (path, value) inside a JSON value."""
    yield path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield from _nodes(v, path + (k,))


@pytest.fixture(scope="module")
def functional_config():
    return json.loads(json.dumps(keras.saving.serialize_keras_object(keras_ref.user_cnn_functional())))


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_configs_build_or_raise_one_line_errors(functional_config, data):
    """Any value anywhere in a real config: the importer builds a graph or raises a one-line JaxvizError."""
    cfg = json.loads(json.dumps(functional_config))
    for _ in range(data.draw(st.integers(1, 3))):
        nodes = [p for p, _ in _nodes(cfg) if p]
        path = data.draw(st.sampled_from(nodes))
        parent = cfg
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = data.draw(JSON)
    try:
        build_graph(cfg, "fuzz")
    except JaxvizError as e:
        assert "\n" not in str(e)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_cli_runs_every_command_with_only_the_file(user_functional, fmt, tmp_path, capsys):
    """predict, activations, filters and gradcam on an imported model with nothing but --weights FILE:
    the model's own defaults (input size, preprocessing, layers) and answers equal to the API's."""
    from jaxviz.cli import main

    w = user_functional.paths[fmt]
    for args in (["predict", "--weights", w, "sample:chelsea", "--json"],
                 ["activations", "--weights", w, "--image", "sample:chelsea", "--out", tmp_path / "a"],
                 ["filters", "--weights", w, "--count", "2", "--steps", "2", "--size", "32", "--out", tmp_path / "f"],
                 ["gradcam", "--weights", w, "--image", "sample:chelsea", "--out", tmp_path / "g"]):
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert rc == 0, (args[0], err)
        if args[0] == "predict":
            probs = np.asarray(json.loads(out)[0]["probs"])
    loaded = jaxviz.load_model(weights=w)
    m = loaded.model
    x = jaxviz.preprocess(jaxviz.load_image("sample:chelsea", m.input_shape[:2])[None].astype(np.float32),
                          m.preprocessing)
    np.testing.assert_allclose(probs, np.asarray(m.run(loaded.params, x).output)[0], atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == sorted(f"{n}.png" for n in m.feature_layers())
    assert len(list((tmp_path / "f").glob("*.npz"))) == 1
    # its Reshape fixes 32x32: without --recipe, the seeds' dlwp1 at 32 (lucid's padded images do not fit), and a
    # lucid pattern or another size is a one-line error
    rc = main(["filters", "--weights", w, "--count", "2", "--steps", "2", "--out", str(tmp_path / "f32")])
    assert rc == 0 and "recipe: dlwp1 at 32x32" in capsys.readouterr().err
    rc = main(["filters", "--weights", w, "--count", "2", "--size", "64", "--recipe", "dlwp1", "--out",
               str(tmp_path / "f64")])
    assert rc == 2 and "needs 32x32x3 inputs, got 64x64x3" in capsys.readouterr().err
    rc = main(["filters", "--weights", w, "--count", "2", "--recipe", "lucid", "--size", "32", "--out",
               str(tmp_path / "fl")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs 32x32x3 inputs, got" in err and len(err.strip().splitlines()[-1]) > 0
    cam = np.load(tmp_path / "g" / "gradcam.npz")["heatmaps"]
    ref = jaxviz.explain(m, loaded.params, x).heatmaps[:, 0]
    np.testing.assert_allclose(cam, ref, atol=1e-5)
