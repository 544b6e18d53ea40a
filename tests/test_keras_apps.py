"""keras.applications families whose graphs hold raw Keras operations and Keras's own application layers
(issue 29): MobileNetV3Small/Large (``x + 3.0``, ``x * (1 / 6)``), ConvNeXtTiny (``inputs + x``,
``LayerScale``) and InceptionResNetV2 (``CustomScaleLayer``), and every raw operation jaxviz reads.

Each model is built once per module with Keras itself (JAX backend, ``weights=None``, seeded, random
batch-norm statistics, layer-norm and layer-scale factors and biases) at a small input size, saved as
``.keras`` and as ``.h5``, and opened with the public ``jaxviz.load_model``; every step (layers and raw
operations) is compared with Keras's own output of that operation, the predictions too, and Grad-CAM with
the seeds' formula computed through Keras's layers. Refusals name the custom class and its package.
"""

import collections
import io
import json
import types
import zipfile

import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import hostile as H
import keras_ref
import jaxviz
from jaxviz import JaxvizError
from jaxviz.io.torch import load_torch_weights
from jaxviz.nn import layers as L
from jaxviz.nn import policy
from jaxviz.nn.keras_graph import OPERATIONS, graph_from_spec, graph_spec

TOL = 1e-5
ops = keras.ops


def rel(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def operation(km: keras.Model, name: str):
    """The layer or raw operation ``name`` of a functional model (raw operations are not in ``km.layers``)."""
    return next(op for op in km.operations if op.name == name)


def randomize(km: keras.Model, seed: int = 0) -> keras.Model:
    """Non-trivial weights where a fresh model has constants (keras_ref.randomize_weights: batch-norm
    statistics, layer-norm factors, biases), and ConvNeXt's layer-scale factors (1e-6 when fresh, which
    would make every residual branch vanish)."""
    keras_ref.randomize_weights(km, seed)
    rng = np.random.default_rng(seed + 7)
    for layer in keras_ref.flat_layers(km):
        if type(layer).__name__ == "LayerScale":
            layer.set_weights([rng.uniform(0.2, 0.6, w.shape).astype(np.float32) for w in layer.get_weights()])
    return km


def save_case(km: keras.Model, directory, batch: int = 2, low: float = 0.0, high: float = 255.0):
    """``km`` saved as .keras and .h5, with Keras's own answers for a random batch: every operation's
    output and the predictions."""
    paths = {"keras": str(directory / f"{km.name}.keras"), "h5": str(directory / f"{km.name}.h5")}
    km.save(paths["keras"])
    km.save(paths["h5"])
    x = np.random.default_rng(1).uniform(low, high, (batch,) + tuple(km.inputs[0].shape[1:])).astype(np.float32)
    return types.SimpleNamespace(km=km, paths=paths, x=x, steps=keras_ref.keras_steps(km, x),
                                 preds=np.asarray(km(x, training=False)))


def worst_step_error(case, fmt: str) -> tuple[float, jaxviz.Loaded]:
    """Open the file with jaxviz; every step equals Keras's operation of that name within TOL, and the
    predictions too. Returns the worst relative error over the steps."""
    loaded = jaxviz.load_model(weights=case.paths[fmt])
    model = loaded.model
    by_leaf: dict[str, list] = {}
    for path in case.steps:
        by_leaf.setdefault(path[-1], []).append(path)
    paths = {n: tuple(n.split("/")) if "/" in n else by_leaf[n][0] for n in model.layer_names}
    assert sorted(paths.values()) == sorted(case.steps)  # every Keras layer and operation is one jaxviz step
    out = model.run(loaded.params, case.x, taps=model.layer_names)
    errors = {n: rel(out.taps[n], case.steps[paths[n]]) for n in model.layer_names}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, (worst, errors[worst])
    assert rel(out.output, case.preds) <= TOL
    return errors[worst], loaded


def head_map(model) -> str:
    """The layer the head's global pooling reads, from the graph's wiring: the last map larger than 1 x 1
    before the pooling (what issue 29 asks the default CAM layer to be)."""
    pooled = [n for n in model.layer_names if model.kind(n) == "global_pool"][-1]
    return model.sources[pooled][0]


def keras_gradcam(km: keras.Model, layer: str, x: np.ndarray, cls: int) -> np.ndarray:
    """The seeds' Grad-CAM through Keras's own layers: channel weights = the mean gradient of the class
    probability over the map, ReLU of the weighted sum, divided by its maximum."""
    tensor = operation(km, layer).output
    feats = keras.Model(km.input, tensor)(x, training=False)
    tail = keras.Model(tensor, km.output)
    grads = jax.grad(lambda f: jnp.sum(tail(f, training=False)[:, cls]))(jnp.asarray(feats))
    cam = np.maximum(np.einsum("nhwc,nc->nhw", np.asarray(feats), np.asarray(grads).mean(axis=(1, 2))), 0)
    top = cam.max(axis=(1, 2), keepdims=True)
    return np.where(top > 0, cam / np.where(top > 0, top, 1), 0)  # all negative: zeros, as jaxviz returns


def assert_gradcam_equals_keras(case, layer: str) -> None:
    """Grad-CAM at the default layer, which is ``layer``, for each image's top class equals the seeds' formula
    through Keras at ``layer``; at least one map is not all zero (random weights can make every weighted
    channel negative)."""
    loaded = jaxviz.load_model(weights=case.paths["keras"])
    assert policy.cam_layer(loaded.model) == layer
    shape = dict(loaded.model.shapes())[layer]
    assert shape[0] > 1 and shape[1] > 1, shape  # a map, not the 1 x 1 a classifier conv gives
    for cls in np.unique(case.preds.argmax(-1)):
        cams = jaxviz.explain(loaded.model, loaded.params, case.x, [int(cls)], score="probability")  # default layer
        ref = keras_gradcam(case.km, layer, case.x, int(cls))
        assert ref.max() > 0 and np.abs(cams.heatmaps[:, 0] - ref).max() <= 1e-4


def assert_round_trip(model) -> None:
    """The graph a checkpoint stores (graph_spec, as JSON) rebuilds the same graph."""
    spec = json.loads(json.dumps(graph_spec(model)))
    again = graph_from_spec(spec, "ck")
    assert graph_spec(again) == graph_spec(model)
    assert again.shapes() == model.shapes()


# ------------------------------------------------------------------------------------------------ raw operations


def every_operation_model() -> keras.Model:
    """One small functional model with every raw Keras operation jaxviz reads, each as Keras writes it:
    arithmetic between tensors and with a number on either side, the unary math, the activations, the
    reductions, reshapes and a concatenation."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inp)
    y = keras.layers.Conv2D(4, 1, name="other")(x)
    pos = ops.abs(x) + 0.5  # (Absolute, Add): inputs of sqrt, log, ...
    branches = [
        x + 3.0, 2.0 + x, x - 1.5, 1.0 - x, x * (1.0 / 6.0), 0.5 * x, x / 4.0, 2.0 / pos, ops.divide(x, pos),
        ops.divide(2.0, pos), pos ** 1.5, 2.0 ** ops.tanh(x), pos ** ops.tanh(y), ops.maximum(x, 0.1),
        ops.minimum(0.2, x), x + y, x - y, x * y, x / pos, ops.maximum(x, y), ops.minimum(x, y),
        -x, ops.square(x), ops.sqrt(pos), ops.rsqrt(pos), ops.reciprocal(pos), ops.exp(-pos), ops.expm1(x / 4.0),
        ops.log(pos), ops.log1p(pos), ops.sign(x), ops.floor(x), ops.ceil(x), ops.erf(x), ops.tanh(x),
        ops.clip(x, -1.0, 2.0),
        ops.relu(x), ops.relu6(x * 4.0), ops.sigmoid(x), ops.hard_sigmoid(x), ops.hard_silu(x), ops.silu(x),
        ops.softplus(x), ops.softsign(x), ops.log_sigmoid(x), ops.selu(x), ops.hard_tanh(x), ops.gelu(x),
        ops.gelu(x, approximate=False), ops.leaky_relu(x, 0.3), ops.elu(x, 0.7), ops.celu(x, 0.6),
        ops.softmax(x, axis=-1),
        x * ops.mean(x, axis=[1, 2], keepdims=True), x - ops.max(x, axis=-1, keepdims=True),
        x + ops.min(x, axis=[1, 2], keepdims=True), x * ops.sum(y, axis=-1, keepdims=True),
    ]
    h = ops.concatenate(branches, axis=-1)
    h = keras.layers.Conv2D(8, 1, name="mix")(h)
    h = ops.transpose(ops.reshape(h, (-1, 3, 12, 8)), (0, 2, 1, 3))
    h = ops.mean(h, axis=[1, 2])
    out = keras.layers.Dense(5, activation="softmax", name="probs")(ops.concatenate([h, ops.sum(h * h, axis=-1,
                                                                                                keepdims=True)], axis=-1))
    model = keras.Model(inp, out, name="every_operation")
    keras_ref.randomize_weights(model)
    return model


@pytest.fixture(scope="module")
def every_operation(tmp_path_factory):
    return save_case(every_operation_model(), tmp_path_factory.mktemp("ops"), batch=3, low=-2.0, high=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_every_raw_operation_equals_keras(every_operation, fmt):
    with zipfile.ZipFile(every_operation.paths["keras"]) as z:
        written = {l["class_name"] for l in json.loads(z.read("config.json"))["config"]["layers"]
                   if str(l.get("module")).startswith("keras.src.ops")}
    assert written == set(OPERATIONS)  # the model holds every operation jaxviz reads, and nothing else
    _, loaded = worst_step_error(every_operation, fmt)
    model = loaded.model
    assert model.layer("add_1") == L.Elementwise("add", (3.0,)) and model.kind("add_1") == "act"
    assert model.layer("add_2") == L.Elementwise("add", (2.0,), constant_first=True)
    assert model.layer("subtract_1") == L.Elementwise("subtract", (1.0,), constant_first=True)
    assert isinstance(model.layer("add_3"), L.Add) and model.sources["add_3"] == ("stem", "other")
    assert isinstance(model.layer("power_2"), L.Power) and model.sources["multiply_6"] == ("mean_1", "mean_1")
    assert model.layer("relu").activation == "relu"  # ops.relu takes part in guided backpropagation
    assert model.guided().layer("relu").activation == "guided_relu"
    assert model.layer("mean") == L.Reduce("mean", (1, 2), True) and model.kind("mean") == "global_pool"
    assert model.kind("max") == "act" and model.layer("max").keeps_spatial  # over the channels: a map
    assert_round_trip(model)
    # a graph read back from its spec computes the same
    again = graph_from_spec(json.loads(json.dumps(graph_spec(model))))
    assert rel(again.run(loaded.params, every_operation.x).output, every_operation.preds) <= TOL


def test_operation_layers_by_hand():
    x = jnp.array([[[[-2.0, 0.5, 3.0]]]])
    assert np.allclose(L.Elementwise("subtract", (1.0,), constant_first=True).apply({}, x), 1.0 - x)
    assert np.allclose(L.Elementwise("clip", (0.0, 1.0)).apply({}, x), [[[[0.0, 0.5, 1.0]]]])
    assert np.allclose(L.Elementwise("celu", (0.5,)).apply({}, x, logits=True), x)  # an activation: skipped
    assert np.allclose(L.Elementwise("add", (1.0,)).apply({}, x, logits=True), x + 1)  # arithmetic: never
    assert L.Reduce("sum", (-1,), False).out_shape((4, 5, 3)) == (4, 5)
    assert L.Reduce("max", (1, 2), True).out_shape((4, 5, 3)) == (1, 1, 3)
    assert not L.Reduce("mean", (1, 2)).keeps_spatial and L.Reduce("mean", (1, 2)).kind == "global_pool"
    for bad in (L.Reduce("mean", (0,)), L.Reduce("mean", (1, 1)), L.Reduce("median", (1,))):
        with pytest.raises(ValueError):
            bad.out_shape((4, 5, 3))
    with pytest.raises(ValueError):
        L.Elementwise("clip", (1.0,)).out_shape((2,))
    # keras.applications' layers
    assert np.allclose(L.CustomScaleLayer(0.17).apply({}, x, 2 * x), x + 0.34 * x)
    gamma = jnp.array([1.0, 2.0, 3.0])
    assert np.allclose(L.LayerScale(3).apply({"params": {"gamma": gamma}}, x), x * gamma)
    assert L.LayerScale(3).param_shapes((4, 4, 3)) == {"gamma": (3,)}
    depth = L.StochasticDepth(0.5)
    assert np.array_equal(depth.apply({}, x), x)  # the identity at inference
    dropped = depth.apply({}, jnp.ones((64, 2, 2, 3)), train=True, rngs={"dropout": jax.random.key(0)})
    per_example = np.asarray(dropped).reshape(64, -1)
    assert set(np.unique(per_example)) == {0.0, 2.0} and (per_example == per_example[:, :1]).all()


# ------------------------------------------------------------------------------------------------ families


def _family(build, tmp_path_factory, **kw):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    km = randomize(build(weights=None, **kw))
    return save_case(km, tmp_path_factory.mktemp(km.name))


@pytest.fixture(scope="module")
def convnext_small_config(tmp_path_factory):
    """Keras's own ConvNeXt builder at a tiny width and depth, with stochastic depth (``drop_path_rate``
    above 0 puts a ``StochasticDepth`` layer in every block) and no preprocessing layer."""
    from keras.src.applications.convnext import ConvNeXt

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    km = randomize(ConvNeXt(depths=[1, 2, 1, 1], projection_dims=[8, 16, 24, 32], drop_path_rate=0.3, name="tiny",
                            include_preprocessing=False, input_shape=(64, 64, 3), classes=7))
    return save_case(km, tmp_path_factory.mktemp("tiny_convnext"), low=-1.0, high=1.0)


@pytest.fixture(scope="module")
def mobilenetv3small(tmp_path_factory):
    return _family(keras.applications.MobileNetV3Small, tmp_path_factory, input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def mobilenetv3large(tmp_path_factory):
    return _family(keras.applications.MobileNetV3Large, tmp_path_factory, input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def convnext_tiny(tmp_path_factory):
    return _family(keras.applications.ConvNeXtTiny, tmp_path_factory, input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def inception_resnet_v2(tmp_path_factory):
    return _family(keras.applications.InceptionResNetV2, tmp_path_factory, input_shape=(107, 107, 3))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_mobilenetv3small(mobilenetv3small, fmt):
    _, loaded = worst_step_error(mobilenetv3small, fmt)
    model = loaded.model
    assert (model.preprocessing, model.labels) == ("none", "imagenet")  # its Rescaling is inside the graph
    hard_sigmoid = ["re_lu_1", "multiply"]  # ReLU(6)(x + 3) * (1 / 6) in the first squeeze-excite block
    assert model.sources["re_lu_1"] == ("add",) and model.sources["multiply"] == ("re_lu_1",)
    assert [model.layer(n) for n in hard_sigmoid] == [L.Activation("relu6"), L.Elementwise("multiply", (1 / 6,))]
    assert_round_trip(model)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_convnext_with_stochastic_depth(convnext_small_config, fmt):
    _, loaded = worst_step_error(convnext_small_config, fmt)
    model = loaded.model
    depth = "tiny_stage_1_block_1_stochastic_depth"
    assert model.layer(depth) == L.StochasticDepth(0.3 * 2 / 4) and model.kind(depth) == "dropout"
    assert model.sources["add_2"] == ("add_1", depth)
    assert policy.cam_layer(model) == head_map(model) == "add_4"  # the last block's residual sum, 2 x 2
    assert_round_trip(model)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_mobilenetv3large(mobilenetv3large, fmt):
    worst_step_error(mobilenetv3large, fmt)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_convnext_tiny(convnext_tiny, fmt):
    _, loaded = worst_step_error(convnext_tiny, fmt)
    model = loaded.model
    scale = "convnext_tiny_stage_0_block_0_layer_scale"
    assert model.layer(scale) == L.LayerScale(96) and loaded.params[scale]["gamma"].shape == (96,)
    assert model.sources["add"] == ("convnext_tiny_stem_layernorm", "convnext_tiny_stage_0_block_0_identity")
    assert_round_trip(model)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_inception_resnet_v2(inception_resnet_v2, fmt):
    _, loaded = worst_step_error(inception_resnet_v2, fmt)
    model = loaded.model
    assert (model.preprocessing, model.labels) == ("tf", "imagenet")
    assert model.layer("custom_scale_layer") == L.CustomScaleLayer(0.17)
    assert model.sources["custom_scale_layer"] == ("mixed_5b", "block35_1_conv")
    assert_round_trip(model)


@pytest.mark.slow
def test_gradcam_mobilenetv3small_equals_keras(mobilenetv3small):
    model = jaxviz.load_model(weights=mobilenetv3small.paths["keras"]).model
    layer = head_map(model)
    # hard_swish(conv_1 -> conv_1_bn), 2 x 2 x 576, the map the head pools; not 'logits', the 1 x 1 classifier conv
    assert layer == "activation_17" and dict(model.shapes())["logits"][:2] == (1, 1)
    assert_gradcam_equals_keras(mobilenetv3small, layer)  # at the default layer, which is this one
    # the default activations: every block's maps larger than 1 x 1, past the squeeze-excite poolings, spread
    chosen = policy.feature_layers(model)
    assert len(chosen) == policy.FEATURE_CAP and chosen[0] == "conv" and chosen[-1] == layer
    assert {"expanded_conv_5_squeeze_excite_mul", "expanded_conv_9_add"} <= set(chosen)
    assert all(np.prod(dict(model.shapes())[n][:2]) > 1 for n in chosen)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mobilenetv3large", "convnext_tiny", "inception_resnet_v2"])
def test_gradcam_equals_keras(family, request):
    case = request.getfixturevalue(family)
    layer = head_map(jaxviz.load_model(weights=case.paths["keras"]).model)
    assert layer == {"mobilenetv3large": "activation_19", "convnext_tiny": "add_17",
                     "inception_resnet_v2": "conv_7b_ac"}[family]
    assert_gradcam_equals_keras(case, layer)


# ------------------------------------------------------------------------------------------------ refusals


@keras.saving.register_keras_serializable(package="my_layers")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def one_line_refusal(path, *needles) -> str:
    with pytest.raises(JaxvizError) as e:
        jaxviz.load_model(weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and "damaged" not in msg and all(n in msg for n in needles), msg
    return msg


def write_keras(path, config: dict) -> None:
    """A .keras archive holding ``config`` and a weights file with no weights (the configs here have none)."""
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
        f.create_group("layers")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("model.weights.h5", weights.getvalue())


def write_h5(path, config: dict) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.create_group("model_weights").attrs["layer_names"] = []


def functional(*entries, name="m") -> dict:
    """A Keras 3 functional config: an 8 x 8 x 3 input, then ``entries`` in a chain."""
    layers, prev = [{"class_name": "InputLayer", "name": "in", "config": {"name": "in", "batch_shape": [None, 8, 8, 3]},
                     "inbound_nodes": []}], "in"
    for e in entries:
        e = {**e, "inbound_nodes": e.get("inbound_nodes") or [{"args": [tensor(prev)], "kwargs": {}}]}
        layers.append(e)
        prev = e["config"]["name"]
    return {"class_name": "Functional", "config": {"name": name, "layers": layers, "input_layers": [["in", 0, 0]],
                                                   "output_layers": [[prev, 0, 0]]}}


def tensor(source: str) -> dict:
    return {"class_name": "__keras_tensor__", "config": {"shape": [None, 8, 8, 3], "dtype": "float32",
                                                         "keras_history": [source, 0, 0]}}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_custom_class_named_with_its_package(tmp_path, fmt):
    keras.backend.clear_session()
    inp = keras.Input((8, 8, 3))
    keras.Model(inp, Doubler(name="double")(keras.layers.Conv2D(3, 1)(inp))).save(tmp_path / f"c.{fmt}")
    # .keras names the class's module (its top package); .h5 names none: the package it was registered under
    package = "my_layers" if fmt == "h5" else Doubler.__module__.split(".")[0]
    one_line_refusal(tmp_path / f"c.{fmt}", "layer 'double' uses custom class 'Doubler' from package "
                     f"'{package}'", "my_layers>Doubler", "jaxviz runs no code from files")


def test_keras_hub_model_named_with_its_package(tmp_path):
    """A KerasHub model is a registered class at the top of the config (no Functional to rebuild)."""
    hub = {"module": "keras_hub.src.models.resnet.resnet_image_classifier", "class_name": "ResNetImageClassifier",
           "registered_name": "keras_hub>ResNetImageClassifier", "config": {"name": "res_net_image_classifier"}}
    write_keras(tmp_path / "hub.keras", hub)
    one_line_refusal(tmp_path / "hub.keras", "the model 'res_net_image_classifier' is custom class "
                     "'ResNetImageClassifier' from package 'keras_hub'", "jaxviz runs no code from files")
    write_h5(tmp_path / "hub.h5", {"class_name": "keras_hub>ResNetImageClassifier", "config": {"name": "clf"}})
    one_line_refusal(tmp_path / "hub.h5", "custom class 'ResNetImageClassifier' from package 'keras_hub'")


def test_application_layers_only_from_keras_applications(tmp_path):
    scale = {"class_name": "LayerScale", "registered_name": "LayerScale",
             "config": {"name": "ls", "trainable": True, "init_values": 1e-6, "projection_dim": 3}}
    write_keras(tmp_path / "mine.keras", functional({**scale, "module": "mypkg.layers"}))
    one_line_refusal(tmp_path / "mine.keras", "custom class 'LayerScale' from package 'mypkg'")
    write_keras(tmp_path / "fake.keras", functional({**scale, "module": "keras.src.layers.scale"}))
    one_line_refusal(tmp_path / "fake.keras", "layer 'ls' is custom class 'LayerScale' from package 'keras'",
                     "not keras.applications' own (keras.src.applications.convnext)")
    # an unknown option of the real one is refused by name, as for every layer
    write_keras(tmp_path / "opt.keras", functional({**scale, "module": "keras.src.applications.convnext",
                                                    "config": {**scale["config"], "mode": "train"}}))
    one_line_refusal(tmp_path / "opt.keras", "'ls' (LayerScale): option mode")


def test_unknown_or_unreadable_operations_refused(tmp_path):
    keras.backend.clear_session()
    inp = keras.Input((8, 8, 3))
    keras.Model(inp, ops.cumsum(inp, axis=1), name="cum").save(tmp_path / "cum.keras")
    one_line_refusal(tmp_path / "cum.keras", "'cumsum' is the raw Keras operation keras.src.ops.numpy.Cumsum, "
                     "which jaxviz does not read; it reads Absolute, Add,")
    keras.backend.clear_session()
    inp = keras.Input((8, 8, 3))
    keras.Model(inp, keras.layers.Dense(2)(ops.reshape(ops.mean(inp), (1, 1)))).save(tmp_path / "all.keras")
    one_line_refusal(tmp_path / "all.keras", "'mean' (Mean operation): reduces every axis, the batch too")
    add = {"module": "keras.src.ops.numpy", "class_name": "Add", "registered_name": "Add", "config": {"name": "plus"}}
    write_keras(tmp_path / "three.keras", functional({**add, "inbound_nodes": [
        {"args": [tensor("in"), 1.0, 2.0], "kwargs": {}}]}))
    one_line_refusal(tmp_path / "three.keras", "'plus' (Add operation): is called on (a tensor, 1.0, 2.0)")
    write_keras(tmp_path / "str.keras", functional({**add, "inbound_nodes": [
        {"args": [tensor("in"), "3"], "kwargs": {}}]}))
    one_line_refusal(tmp_path / "str.keras", "layer 'plus' (Add) is called on something other than a tensor")


def test_state_dict_that_fits_nothing_lists_the_architectures(tmp_path):
    sd = collections.OrderedDict([("conv1.weight", np.zeros((64, 3, 7, 7), np.float32)),
                                  ("bn1.weight", np.ones(64, np.float32)), ("fc.weight", np.zeros((1000, 512), np.float32)),
                                  ("fc.bias", np.zeros(1000, np.float32))])
    H.write_zip(tmp_path / "resnet18.pth", collections.OrderedDict((k, H.tensor_of(k, v)) for k, v in sd.items()))
    with pytest.raises(JaxvizError) as e:
        load_torch_weights(tmp_path / "resnet18.pth")
    msg = str(e.value)
    assert "3 weighted modules, first 'conv1'" in msg and "pass arch=NAME" in msg and "--" not in msg, msg
    assert all(name in msg for name in jaxviz.MODELS), msg
    # the library's load_model names its own argument, model=
    msg = one_line_refusal(tmp_path / "resnet18.pth", "pass model=NAME")
    assert "arch" not in msg.replace("architecture", ""), msg
