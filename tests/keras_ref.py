"""Keras 3 (JAX backend) builders of the jaxviz architectures, and writers of every file format."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import jax
import jax.numpy as jnp
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
    if arch in ("xception", "xception_notop"):
        model = keras.applications.Xception(weights=None, include_top=arch == "xception",
                                            input_shape=input_shape or (299, 299, 3))
        randomize_batchnorm(model)
        return model
    raise KeyError(arch)


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Give every BatchNormalization non-trivial statistics (a fresh one is the identity map, which
    would test nothing): gamma, beta, mean and variance drawn around their usual ranges."""
    rng = np.random.default_rng(seed)
    for layer in flat_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 2.0, c)])


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


KERAS1_CLASS_NAMES = {
    "Conv2D": "convolution2d", "SeparableConv2D": "separableconvolution2d",
    "BatchNormalization": "batchnormalization", "Dense": "dense", "Activation": "activation", "Add": "merge",
    "MaxPooling2D": "maxpooling2d", "GlobalAveragePooling2D": "globalaveragepooling2d",
}
KERAS1_PARAM_NAMES = {
    "Conv2D": ["W", "b"], "Dense": ["W", "b"], "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel", "b"],
    "BatchNormalization": ["gamma", "beta", "running_mean", "running_std"],
}


def write_keras1_published(model: keras.Model, path: str) -> None:
    """The published Keras-1-era layout (``xception_weights_tf_dim_ordering_tf_kernels.h5``): every
    group named automatically by class (``convolution2d_3``, ``batchnormalization_7``...) in
    ``model.layers`` order, Keras-1 dataset names, and the BatchNorm variance under ``_running_std``."""
    counters: dict[str, int] = {}
    with h5py.File(path, "w") as f:
        names = ["input_1"]
        f.create_group("input_1").attrs["weight_names"] = []
        for layer in flat_layers(model):
            cls = type(layer).__name__
            base = KERAS1_CLASS_NAMES[cls]
            counters[base] = counters.get(base, 0) + 1
            gname = f"{base}_{counters[base]}"
            names.append(gname)
            g = f.create_group(gname)
            ws = layer.get_weights()
            wnames = [f"{gname}_{p}:0" for p in KERAS1_PARAM_NAMES.get(cls, [])[: len(ws)]]
            g.attrs["weight_names"] = [n.encode() for n in wnames]
            for n, w in zip(wnames, ws):
                g.create_dataset(n, data=w)
        f.attrs["layer_names"] = [n.encode() for n in names]


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


def seed_filter_ascent(km, layer, f, start, steps, lr, normalize, interior):
    """The seeds' loop, written against the Keras model (JAX backend: gradients via jax.grad)."""
    fe = keras.Model(km.input, km.get_layer(layer).output)

    def loss(img):
        a = fe(img)
        a = a[:, 2:-2, 2:-2, f] if interior else a[..., f]
        return jnp.mean(a)

    img = jnp.asarray(start)[None]
    for _ in range(steps):
        g = jax.grad(loss)(img)
        if normalize == "rms":  # Listing 5.34
            g = g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-5)
        else:  # tf.math.l2_normalize
            g = g * jax.lax.rsqrt(jnp.maximum(jnp.sum(g * g), 1e-12))
        img = img + lr * g
    return float(loss(img))
