"""Keras 3 (JAX backend) builders of the jaxviz architectures, and writers of every file format."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import keras
import numpy as np


def build(arch: str, input_shape=None) -> keras.Model:
    """The Keras model for a jaxviz architecture, with seeded random weights."""
    keras.backend.clear_session()  # layer names restart at conv2d, dense, ...
    keras.utils.set_random_seed(0)
    L = keras.layers
    if arch in ("vgg16", "vgg16_notop"):
        return keras.applications.VGG16(weights=None, include_top=arch == "vgg16",
                                        input_shape=input_shape or (224, 224, 3))
    if arch == "vgg16_finetuned":
        base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(150, 150, 3))
        model = keras.Sequential([keras.Input((150, 150, 3)), base, L.Flatten(), L.Dense(256, activation="relu"),
                                  L.Dense(1, activation="sigmoid")])
        return model
    if arch == "cats_dogs_small":
        return keras.Sequential([
            keras.Input(input_shape or (150, 150, 3)),
            L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
            L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2),
            L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2),
            L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2),
            L.Flatten(), L.Dropout(0.5), L.Dense(512, activation="relu"), L.Dense(1, activation="sigmoid"),
        ])
    if arch in ("fashion_cnn", "digits_cnn"):
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            L.Conv2D(32, 3, activation="relu", padding="same"), L.MaxPooling2D(2),
            L.Conv2D(64, 3, activation="relu", padding="same"), L.MaxPooling2D(2),
            L.Flatten(), L.Dense(100, activation="relu"), L.Dropout(0.4), L.Dense(10, activation="softmax"),
        ])
    raise KeyError(arch)


def flat_layers(model: keras.Model) -> list:
    """Leaf layers in order, descending into nested models, without InputLayers."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += flat_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
    return out


def activations(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    """Every leaf layer's output for ``x``, computed layer by layer (works through nested models)."""
    outs = []
    h = x
    for layer in flat_layers(model):
        h = layer(h, training=False)
        outs.append(np.asarray(h))
    return outs


def keras1_name(layer_name: str, i: int) -> str:
    return f"{layer_name}_{'W' if i == 0 else 'b'}_1:0"


def write_published(model: keras.Model, path: str) -> None:
    """Weights-only HDF5 in the layout of the published keras.applications files (Keras-1 names)."""
    with h5py.File(path, "w") as f:
        layers = [l for l in flat_layers(model)]
        f.attrs["layer_names"] = [l.name.encode() for l in [keras.layers.InputLayer(shape=(1,), name="input_1")] + layers]
        f.create_group("input_1").attrs["weight_names"] = []
        for layer in layers:
            g = f.create_group(layer.name)
            ws = layer.get_weights()
            names = [keras1_name(layer.name, i) for i in range(len(ws))]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, ws):
                g.create_dataset(n, data=w)


def write_all_formats(model: keras.Model, directory: str) -> dict[str, str]:
    """Save ``model`` as .keras, .weights.h5, legacy full-model .h5 and published weights-only .h5."""
    paths = {
        "keras3": os.path.join(directory, "m.keras"),
        "weights_h5": os.path.join(directory, "m.weights.h5"),
        "legacy_h5": os.path.join(directory, "m.h5"),
        "published": os.path.join(directory, "m_published.h5"),
    }
    model.save(paths["keras3"])
    model.save_weights(paths["weights_h5"])
    model.save(paths["legacy_h5"])
    write_published(model, paths["published"])
    return paths
