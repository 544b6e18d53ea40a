"""The JAX vision models people use, small, with random weights, never seen by the library: the Flax
ImageNet example's ResNet (written here as flax/examples/imagenet/models.py has it: ``__call__(x,
train=True)`` with batch norm), flaxmodels' Linen ResNet-18, Hugging Face's FlaxResNet and FlaxViT
from small configs, and an Equinox CNN. Used by tests/test_jax_models.py, whose CLI test names the
factories at the end (``--model tests/jax_models.py:imagenet_resnet_factory`` ...)."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any


# -- the Flax ImageNet example (flax/examples/imagenet/models.py, ResNet V1.5), as published ------------
class ResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                       axis_name="batch")
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, self.dtype)


SmallResNet = partial(ResNet, stage_sizes=[1, 1], block_cls=ResNetBlock, num_filters=8, num_classes=5)


@partial(jax.jit, static_argnums=1)
def _as_if_trained(variables: dict, seed: int) -> dict:
    """Random batch statistics and norm scales (the example's zero-initialised last scale of a block
    would make every block the identity on its shortcut)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    key = jax.random.key(seed)
    out = []
    for i, (path, v) in enumerate(leaves):
        last = getattr(path[-1], "key", "")
        k = jax.random.fold_in(key, i)
        if last in ("mean", "bias"):
            v = v + 0.1 * jax.random.normal(k, v.shape)
        elif last in ("var", "scale"):
            v = jax.random.uniform(k, v.shape, minval=0.5, maxval=1.5)
        out.append(v)
    return jax.tree_util.tree_unflatten(tree, out)


def imagenet_resnet(seed: int = 0, size: int = 32):
    """The example's ResNet (two stages of one block, 8 filters, 5 classes) and its variables."""
    m = SmallResNet()
    v = jax.jit(partial(m.init, train=False))(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    return m, _as_if_trained(dict(v), seed + 1)


# -- flaxmodels' Linen ResNet-18 (its __call__ defaults to train=True too) ------------------------------
def flaxmodels_resnet(seed: int = 0, size: int = 64):
    import flaxmodels

    m = flaxmodels.ResNet18(output="logits", pretrained=None, normalize=False, num_classes=5)
    v = jax.jit(partial(m.init, train=False))(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    return m, _as_if_trained(dict(v), seed + 1)


# -- Hugging Face Flax models from small configs (random weights) ----------------------------------------
def hf_resnet(seed: int = 0, size: int = 32):
    from transformers import FlaxResNetForImageClassification, ResNetConfig

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=4)
    model = FlaxResNetForImageClassification(config, input_shape=(1, size, size, 3), seed=seed)
    model.params = _as_if_trained(model.params, seed + 1)
    return model


VIT_GRID = 4


def hf_vit(seed: int = 0):
    from transformers import FlaxViTForImageClassification, ViTConfig

    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=4)
    return FlaxViTForImageClassification(config, input_shape=(1, 16, 16, 3), seed=seed)


def vit_tokens_to_grid(t):
    """The last 4x4 tokens (the patches; the class token, where there is one, comes first) as a grid."""
    n = VIT_GRID * VIT_GRID
    return t[:, t.shape[1] - n:].reshape(t.shape[0], VIT_GRID, VIT_GRID, t.shape[-1])


# -- an Equinox CNN (one C x H x W example per call, as Equinox models take them) -----------------------
def eqx_cnn(seed: int = 0):
    import equinox as eqx

    class CNN(eqx.Module):
        layers: list
        head: eqx.nn.Linear
        dropout: eqx.nn.Dropout

        def __init__(self, key):
            k = jax.random.split(key, 4)
            self.layers = [eqx.nn.Conv2d(3, 8, 3, padding=1, key=k[0]), jax.nn.relu, eqx.nn.MaxPool2d(2, 2),
                           eqx.nn.Conv2d(8, 16, 3, padding=1, key=k[1]), jax.nn.relu,
                           eqx.nn.Conv2d(16, 16, 3, padding=1, key=k[2]), jax.nn.relu]
            self.head = eqx.nn.Linear(16, 5, key=k[3])
            self.dropout = eqx.nn.Dropout(0.5)

        def __call__(self, x, *, key=None):
            for layer in self.layers:
                x = layer(x)
            return self.head(self.dropout(x.mean(axis=(1, 2)), key=key))

    return CNN(jax.random.key(seed))


def eqx_bn_net(seed: int = 0):
    """An Equinox net with batch norm (state: ``eqx.nn.make_with_state``), random running statistics:
    ``(model, state)``; the model maps ``(x, state)`` to ``(logits, state)``."""
    import equinox as eqx

    class BNNet(eqx.Module):
        conv: eqx.nn.Conv2d
        bn: eqx.nn.BatchNorm
        head: eqx.nn.Linear

        def __init__(self, key):
            k = jax.random.split(key, 2)
            self.conv = eqx.nn.Conv2d(3, 8, 3, padding=1, key=k[0])
            self.bn = eqx.nn.BatchNorm(8, axis_name="batch", mode="ema")
            self.head = eqx.nn.Linear(8, 5, key=k[1])

        def __call__(self, x, state):
            x, state = self.bn(self.conv(x), state)
            return self.head(jax.nn.relu(x).mean(axis=(1, 2))), state

    model, state = eqx.nn.make_with_state(BNNet)(jax.random.key(seed))
    k = jax.random.key(seed + 1)
    stats = (0.1 * jax.random.normal(k, (8,)), jax.random.uniform(jax.random.fold_in(k, 1), (8,), minval=0.5, maxval=1.5))
    return model, state.set(model.bn.ema_state_index, stats)


# -- factories for the CLI's --model FILE.py:FACTORY, one per accepted return form ------------------------
def imagenet_resnet_factory():
    """``(module, variables)``: the call's ``train=True`` default is left for jaxviz to set."""
    return imagenet_resnet()


def flaxmodels_factory():
    """``(module, variables, call_kwargs)``."""
    m, v = flaxmodels_resnet()
    return m, v, {"train": False}


def hf_resnet_factory():
    """A Hugging Face model alone (it knows its input size, 32x32x3)."""
    return hf_resnet()


def hf_vit_factory():
    """What ``jaxviz.adapt`` returns (the token layers need ``reshape``)."""
    import jaxviz

    return jaxviz.adapt(hf_vit(), reshape=vit_tokens_to_grid)


def eqx_factory():
    """An Equinox model alone."""
    return eqx_cnn()
