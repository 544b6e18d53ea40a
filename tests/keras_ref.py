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


def layer_outputs(model: keras.Model, x) -> dict[tuple[str, ...], np.ndarray]:
    """Every leaf layer's output for ``x``, keyed by its path of names (``(nested_model, layer)``),
    computed by Keras itself: a Functional model through one feature-extractor model over its own graph
    (so residual DAGs work), a nested model on the input it receives in its parent's graph."""
    out: dict[tuple[str, ...], np.ndarray] = {}
    if isinstance(model, keras.Sequential):
        h = x
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                out.update({(layer.name,) + k: v for k, v in layer_outputs(layer, h).items()})
            h = layer(h, training=False)
            if not isinstance(layer, keras.Model):
                out[(layer.name,)] = np.asarray(h)
        return out
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    feats = keras.Model(model.inputs, [l.output for l in layers])(x, training=False)
    for layer, f in zip(layers, feats):
        if isinstance(layer, keras.Model):
            h = keras.Model(model.inputs, layer.input)(x, training=False)
            out.update({(layer.name,) + k: v for k, v in layer_outputs(layer, h).items()})
        else:
            out[(layer.name,)] = np.asarray(f)
    return out


# Every activation Keras 3 can name in a config (keras.activations), except ``threshold``, which needs
# arguments, and ``glu``, which halves the channels while Keras's Activation layer declares the input shape
# (a model using it cannot run in Keras itself).
KERAS_ACTIVATIONS = ["relu", "leaky_relu", "relu6", "softmax", "celu", "elu", "selu", "softplus", "softsign",
                     "squareplus", "soft_shrink", "sparse_plus", "silu", "gelu", "tanh", "tanh_shrink",
                     "sigmoid", "sparse_sigmoid", "exponential", "hard_sigmoid", "hard_silu", "hard_tanh",
                     "hard_shrink", "linear", "mish", "log_softmax", "log_sigmoid", "sparsemax", "swish",
                     "hard_swish"]


def randomize_weights(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial values for the weights a fresh model initialises to constants: batch-norm statistics
    (:func:`randomize_batchnorm`), layer-norm gamma/beta, PReLU slopes and conv/dense biases."""
    rng = np.random.default_rng(seed + 1)
    draw = {"gamma": lambda s: rng.uniform(0.5, 1.5, s), "beta": lambda s: rng.normal(0, 0.1, s),
            "moving_mean": lambda s: rng.normal(0, 0.1, s), "moving_variance": lambda s: rng.uniform(0.5, 2.0, s)}
    for layer in flat_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([draw[w.name](w.shape).astype(np.float32) for w in layer.weights])
            continue
        if isinstance(layer, (keras.layers.LayerNormalization, keras.layers.PReLU)) or \
                (getattr(layer, "use_bias", False) and not isinstance(layer, keras.layers.BatchNormalization)):
            ws = layer.get_weights()
            if isinstance(layer, keras.layers.LayerNormalization) or isinstance(layer, keras.layers.PReLU):
                ws = [rng.uniform(0.1, 0.6, w.shape).astype(np.float32) if i == 0 else
                      rng.normal(0, 0.1, w.shape).astype(np.float32) for i, w in enumerate(ws)]
            else:  # the bias is the last weight of a conv or dense layer
                ws[-1] = rng.normal(0, 0.1, ws[-1].shape).astype(np.float32)
            layer.set_weights(ws)


def user_cnn_sequential() -> keras.Model:
    """A user-style Sequential CNN with every single-input layer jaxviz imports, most non-default options
    set: input transforms, strided/dilated/grouped/depthwise/separable/transposed convs, both batch-norm
    flags, ReLU with all three options, every pooling, padding/cropping/upsampling, the noise layers,
    PReLU/ELU/LeakyReLU, LayerNormalization, a per-pixel Dense and a Softmax top."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(1)
    L = keras.layers
    norm = L.Normalization()
    norm.adapt(np.random.default_rng(2).uniform(0, 1, (16, 40, 40, 3)).astype(np.float32))
    model = keras.Sequential([
        keras.Input((40, 40, 3)),
        L.Rescaling(1 / 255.0),
        norm,
        L.Resizing(36, 36, interpolation="bilinear"),
        L.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
        L.BatchNormalization(center=False, epsilon=1e-2),
        L.ReLU(max_value=4.0, negative_slope=0.1, threshold=0.2),
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", dilation_rate=2, activation="relu6", use_bias=True),
        L.BatchNormalization(scale=False),
        L.SeparableConv2D(16, 3, depth_multiplier=2, activation="swish"),
        L.LeakyReLU(negative_slope=0.2),
        L.Conv2D(16, 3, groups=4, padding="same", activation="elu"),
        L.MaxPooling2D(3, strides=2, padding="same"),
        L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="gelu"),
        L.AveragePooling2D(3, strides=2, padding="same"),
        L.ZeroPadding2D(((1, 2), (0, 1))),
        L.Cropping2D(((1, 0), (0, 1))),
        L.UpSampling2D(2, interpolation="bilinear"),
        L.UpSampling2D((1, 2)),
        L.AveragePooling2D(2),
        L.Conv2D(12, (3, 2), strides=(1, 2), padding="valid", activation="relu"),
        L.MaxPooling2D(2),
        L.SpatialDropout2D(0.2),
        L.GaussianNoise(0.1),
        L.GaussianDropout(0.1),
        L.PReLU(shared_axes=[1, 2]),
        L.ELU(alpha=0.7),
        L.LayerNormalization(),
        L.Conv2DTranspose(6, 2, strides=1, padding="valid", dilation_rate=1),
        L.Dense(12, activation="tanh"),
        L.GlobalMaxPooling2D(keepdims=True),
        L.Flatten(),
        L.Dropout(0.3),
        L.Dense(10),
        L.Softmax(),
    ], name="user_cnn")
    randomize_weights(model)
    return model


def user_cnn_functional() -> keras.Model:
    """A user-style functional CNN with every merge layer (several inbound tensors), Identity,
    Permute/Reshape, config-stored Normalization, keepdims global pooling, Dense on rank 2 and one
    branch per Keras activation name."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((32, 32, 3))
    x = L.Normalization(mean=[120.0, 110.0, 100.0], variance=[3600.0, 3000.0, 2500.0])(inp)
    x = L.Conv2D(12, 3, padding="same", activation="relu", name="stem")(x)
    a = L.Conv2D(12, 1, name="branch_a")(x)
    b = L.Conv2D(12, 1, activation="sigmoid", name="branch_b")(x)
    merged = L.Concatenate(name="merged")([
        L.Add()([a, b]), L.Subtract()([a, b]), L.Multiply()([a, b]), L.Average()([a, b, x]),
        L.Maximum()([a, b]), L.Minimum()([a, b]),
    ])
    merged = L.Identity()(merged)
    h = L.Conv2D(4, 1, name="pre_act")(merged)
    acts = L.Concatenate(name="activations")([L.Activation(n, name=f"act_{n}")(h) for n in KERAS_ACTIVATIONS])
    y = L.MaxPooling2D(2)(acts)
    y = L.Permute((2, 1, 3))(y)
    y = L.Reshape((8, 32, -1))(y)
    y = L.Conv2D(8, 3, strides=(2, 1), activation="softplus")(y)
    y = L.GlobalAveragePooling2D(keepdims=True)(y)
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dense(5)(y)
    out = L.Activation("softmax", name="probs")(y)
    model = keras.Model(inp, out, name="user_functional")
    randomize_weights(model)
    return model


def keras_steps(km: keras.Model, x: np.ndarray) -> dict[tuple[str, ...], np.ndarray]:
    """Every operation's output (layers and raw operations), keyed by its path of names, computed by Keras
    through one feature-extractor model over the graph; a nested Sequential (ConvNeXt's stem and
    downsampling) layer by layer on the input it receives."""
    todo = [op for op in km.operations if not isinstance(op, keras.layers.InputLayer)]
    feats = keras.Model(km.input, [op.output for op in todo])(x, training=False)
    out: dict[tuple[str, ...], np.ndarray] = {}
    for op, f in zip(todo, feats):
        if isinstance(op, keras.Model):
            h = keras.Model(km.input, op._inbound_nodes[0].input_tensors[0])(x, training=False)
            out.update({(op.name,) + k: v for k, v in layer_outputs(op, h).items()})
        else:
            out[(op.name,)] = np.asarray(f)
    return out
