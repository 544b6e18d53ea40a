"""Defaults chosen from the graph (issue 29): the default CAM layer is the map the head reads, never a 1 x 1
map after the global pooling; the default activations cover every block, spread over the depth.

keras.applications MobileNet, EfficientNetB0 and ResNet50 are built with Keras itself (``weights=None``, small
inputs), saved as ``.keras`` and opened with the public ``jaxviz.load_model``. The reference for the activation
set is read from the Keras model (its layers' classes and output shapes), not from jaxviz. MobileNetV3Small and
ConvNeXtTiny are checked in test_keras_apps.py, which builds them already.
"""

import keras
import numpy as np
import pytest

import jaxviz
from jaxviz.nn import policy

CAP = policy.FEATURE_CAP
# Keras classes whose maps jaxviz shows by default: conv, pool, activation and merge layers
SHOWN = {"Conv2D": "conv", "DepthwiseConv2D": "conv", "SeparableConv2D": "conv", "MaxPooling2D": "pool",
         "AveragePooling2D": "pool", "Activation": "act", "ReLU": "act", "Add": "merge", "Multiply": "merge",
         "Concatenate": "merge"}


def keras_maps(km: keras.Model) -> list[str]:
    """Keras's own answer: the shown layers whose output is a map larger than 1 x 1, in ``model.layers`` order."""
    return [l.name for l in km.layers if type(l).__name__ in SHOWN and len(l.output.shape) == 4
            and l.output.shape[1] * l.output.shape[2] > 1]


@pytest.fixture(scope="module", params=[("MobileNet", 96), pytest.param(("EfficientNetB0", 64), marks=pytest.mark.slow),
                                        ("ResNet50", 64)], ids=lambda p: p[0])
def family(request, tmp_path_factory):
    name, size = request.param
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    km = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    path = tmp_path_factory.mktemp(name) / f"{name}.keras"
    km.save(path)
    return name, km, jaxviz.load_model(weights=str(path))


CAM = {"MobileNet": "conv_pw_13_relu",  # not conv_preds, the 1 x 1 classifier conv after the pooling
       "EfficientNetB0": "top_activation", "ResNet50": "conv5_block3_out"}
# layers the spread must reach: past the first squeeze-excite pooling and dropout (EfficientNet), every stage
INSIDE = {"MobileNet": ["conv1", "conv_dw_6_relu", "conv_pw_13_relu"],
          "EfficientNetB0": ["stem_conv", "block2b_add", "block3a_se_excite", "block5a_activation", "top_activation"],
          "ResNet50": ["conv1_conv", "conv3_block1_add", "conv4_block2_add", "conv5_block3_out"]}


@pytest.mark.slow
def test_default_cam_layer_is_the_map_the_head_reads(family):
    name, km, loaded = family
    model = loaded.model
    layer = policy.cam_layer(model)
    assert layer == CAM[name]
    pooling = [l for l in km.layers if isinstance(l, keras.layers.GlobalAveragePooling2D)][-1]  # not an SE's
    assert pooling.input._keras_history.operation.name == layer  # in Keras, the head's pooling reads it
    h, w, _ = dict(model.shapes())[layer]
    assert h * w > 1
    if name == "MobileNet":  # the old default: the classifier conv's constant 1 x 1 map
        assert dict(model.shapes())["conv_preds"][:2] == (1, 1)


def test_default_activations_cover_every_block(family):
    name, km, loaded = family
    model = loaded.model
    every = keras_maps(km)
    chosen = policy.feature_layers(model)
    assert len(every) > CAP and len(chosen) == CAP
    assert chosen[0] == every[0] and chosen[-1] == every[-1] == CAM[name]
    at = [every.index(n) for n in chosen]  # a subsequence of Keras's maps, in order, evenly spread
    steps = np.diff(at)
    assert (steps > 0).all() and steps.max() - steps.min() <= 1, steps
    assert all(n in chosen for n in INSIDE[name]), sorted(set(INSIDE[name]) - set(chosen))
    # the public activations use them: one map per chosen layer, each larger than 1 x 1
    x = np.random.default_rng(0).uniform(0, 255, (1,) + model.input_shape).astype(np.float32)
    acts = jaxviz.activations(model, loaded.params, x)
    assert list(acts) == chosen and all(a.shape[1] * a.shape[2] > 1 for a in acts.values())


def test_spread_keeps_first_and_last():
    names = [f"l{i}" for i in range(100)]
    assert policy.spread(names[:CAP]) == names[:CAP]
    picked = policy.spread(names, 5)
    assert picked == ["l0", "l25", "l50", "l74", "l99"]  # 0, 24.75, 49.5, 74.25, 99 rounded
