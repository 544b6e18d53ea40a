"""Training a classifier with optax: pure functions, explicit keys, deterministic given the key.

Used by ``experiments/train_small_cnns.py`` to make the trained checkpoints that ship with jaxviz.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxviz.nn import Params, Sequential
from jaxviz.nn.preprocess import preprocess
from jaxviz.nn.jit import jit


class Epoch(NamedTuple):
    epoch: int
    loss: float  # mean training cross-entropy over the epoch
    train_accuracy: float
    test_accuracy: float


class Trained(NamedTuple):
    params: Params
    history: list[Epoch]


def cross_entropy(model: Sequential, params: Params, x: jax.Array, y: jax.Array, rng: jax.Array | None):
    """Mean softmax cross-entropy of integer labels ``y`` (dropout on when ``rng`` is given)."""
    logits = model(params, x, logits=True, train=rng is not None, rng=rng)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


@functools.lru_cache(maxsize=8)
def _step(model: Sequential, opt: optax.GradientTransformation):
    def step(params, state, x, y, rng):
        (loss, acc), grads = jax.value_and_grad(functools.partial(cross_entropy, model), has_aux=True)(
            params, x, y, rng)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, acc

    return jit(step, donate_argnums=(0, 1))


def accuracy(model: Sequential, params: Params, x_uint8: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    """Fraction of ``x_uint8`` (N x H x W x C, 0..255) classified as ``y``."""
    hits = 0
    for i in range(0, len(y), batch):
        x = preprocess(x_uint8[i:i + batch].astype(np.float32), model.preprocessing)
        hits += int((np.asarray(model.jit_call(params, x)).argmax(-1) == y[i:i + batch]).sum())
    return hits / len(y)


def train_classifier(
    key: jax.Array,
    model: Sequential,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int = 20,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> Trained:
    """Adam on softmax cross-entropy, as seed 004 compiles its model (``adam``, sparse CE).

    ``x_*`` are uint8 images (0..255); the model's own preprocessing is applied. The key fixes
    the initial weights, the shuffling and the dropout masks, so a run is reproducible bit for bit
    on the same machine. Returns the parameters after the last epoch and the per-epoch metrics.
    """
    k_init, k_run = jax.random.split(key)
    params = model.init(k_init)
    opt = optax.adam(learning_rate)
    state = opt.init(params)
    step = _step(model, opt)
    x_all = preprocess(x_train.astype(np.float32), model.preprocessing)
    n = len(y_train) - len(y_train) % batch_size  # drop the ragged last batch: one compiled shape
    history = []
    for epoch in range(epochs):
        k_perm, k_drop = jax.random.split(jax.random.fold_in(k_run, epoch))
        order = np.asarray(jax.random.permutation(k_perm, len(y_train)))[:n].reshape(-1, batch_size)
        losses, accs = [], []
        for b, idx in enumerate(order):
            params, state, loss, acc = step(params, state, x_all[idx], y_train[idx], jax.random.fold_in(k_drop, b))
            losses.append(loss)
            accs.append(acc)
        row = Epoch(epoch + 1, float(np.mean(losses)), float(np.mean(accs)),
                    accuracy(model, params, x_test, y_test))
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return Trained(params, history)
