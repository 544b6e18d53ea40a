"""Small Flax models written here, never seen by the library: an NNX CNN with residual blocks and batch
norm, a Linen CNN, and a tiny NNX ViT. Used by tests/test_adapters.py and the CLI's --model test."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


class ResBlock(nnx.Module):
    def __init__(self, c: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(c, c, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(c, rngs=rngs)
        self.conv2 = nnx.Conv(c, c, (3, 3), rngs=rngs)

    def __call__(self, x):
        return nnx.relu(x + self.conv2(nnx.relu(self.bn1(self.conv1(x)))))


class ResNet(nnx.Module):
    """stem -> blocks.0 -> blocks.1 -> global mean -> head (5 classes), 16x16x3 inputs."""

    def __init__(self, rngs: nnx.Rngs, c: int = 8, classes: int = 5):
        self.stem = nnx.Conv(3, c, (3, 3), rngs=rngs)
        self.blocks = nnx.List([ResBlock(c, rngs), ResBlock(c, rngs)])
        self.head = nnx.Linear(c, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean(axis=(1, 2)))


def resnet(seed: int = 0) -> ResNet:
    """The NNX net with non-trivial batch-norm statistics (as if trained)."""
    m = ResNet(nnx.Rngs(seed))
    k = jax.random.key(seed + 100)
    for i, b in enumerate(m.blocks):
        b.bn1.mean[...] = jax.random.normal(jax.random.fold_in(k, i), b.bn1.mean.shape) * 0.1
        b.bn1.var[...] = jax.random.uniform(jax.random.fold_in(k, 10 + i), b.bn1.var.shape, minval=0.5, maxval=2)
    return m


class LinenCNN(nn.Module):
    """conv1 -> relu -> bn -> 2x2 max pool -> conv2 -> relu -> global mean -> head (4 classes)."""

    def setup(self):
        self.conv1 = nn.Conv(8, (3, 3))
        self.bn = nn.BatchNorm(use_running_average=True)
        self.conv2 = nn.Conv(16, (3, 3))
        self.head = nn.Dense(4)

    def features(self, x):
        return nn.max_pool(self.bn(nn.relu(self.conv1(x))), (2, 2), (2, 2))

    def tail(self, f):
        return self.head(nn.relu(self.conv2(f)).mean(axis=(1, 2)))

    def __call__(self, x):
        return self.tail(self.features(x))


def linen_cnn(seed: int = 0):
    m = LinenCNN()
    v = m.init(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))
    stats = jax.tree.map(lambda a: a + 0.1, v["batch_stats"])
    return m, {"params": v["params"], "batch_stats": stats}


class Block(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, d, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + nnx.gelu(self.mlp(self.norm2(x)))


class ViT(nnx.Module):
    """4x4 patches of 16x16x3 images -> 16 tokens + a class token, two blocks, a head on the class token."""

    def __init__(self, rngs: nnx.Rngs, d: int = 16, classes: int = 3):
        self.patch = nnx.Conv(3, d, (4, 4), strides=(4, 4), rngs=rngs)
        self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, d)) * 0.02)
        self.blocks = nnx.List([Block(d, rngs), Block(d, rngs)])
        self.head = nnx.Linear(d, classes, rngs=rngs)

    def __call__(self, x):
        t = self.patch(x)
        n, h, w, d = t.shape
        t = jnp.concatenate([jnp.broadcast_to(self.cls[...], (n, 1, d)), t.reshape(n, h * w, d)], axis=1)
        for b in self.blocks:
            t = b(t)
        return self.head(t[:, 0])


def vit_tokens_to_grid(t):
    """Drop the class token and unflatten the 4x4 patch grid (a linear map, as the adapter needs)."""
    return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[-1])


def build():
    """A CLI factory: ``jaxviz gradcam --model tests/flax_nets.py:build --input 16x16 ...``."""
    return resnet(0)
