"""Top-K and BatchTopK sparse autoencoders (Gao et al. 2024; Bussmann et al. 2024), optax-trained.

``z = TopK(relu((a - b_pre) W_enc + b_enc))``, ``â = z D + b_pre`` with the decoder rows ``D`` of unit
norm (renormalised after every step). BatchTopK keeps the ``k x batch`` largest codes of the whole
batch while training and, for inference, zeros codes below a threshold estimated as the running mean
of the batch's smallest kept code. The loss is the mean squared error plus ``aux_coef`` x AuxK: the
``aux_k`` largest pre-activations of the dead latents (no activation for ``dead_steps`` steps)
reconstruct the residual. The loss is a mean over rows, so gradients can be ``pmean``-ed over devices.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxviz.concepts.dictionary import Dictionary, topk_codes

Array = Any


class SAEParams(NamedTuple):
    """Trainable weights: ``encoder`` (C x K), ``encoder_bias`` (K), ``decoder`` (K x C, unit rows),
    ``pre_bias`` (C)."""

    encoder: Array
    encoder_bias: Array
    decoder: Array
    pre_bias: Array


class SAEState(NamedTuple):
    """Training state beside the optimiser's: steps since each latent last fired (K, int32) and the
    BatchTopK running threshold (scalar; negative until the first step)."""

    since_fired: Array
    threshold: Array


def sae_init(key: Array, c: int, k_concepts: int, *, pre_bias: Array | None = None,
             dtype=jnp.float32) -> tuple[SAEParams, SAEState]:
    """Initial weights: decoder rows random unit vectors, encoder its transpose (Gao et al.), zero biases
    (``pre_bias``: e.g. the data mean or geometric median)."""
    D = jax.random.normal(key, (k_concepts, c), dtype)
    D = D / jnp.linalg.norm(D, axis=1, keepdims=True)
    b = jnp.zeros((c,), dtype) if pre_bias is None else jnp.asarray(pre_bias, dtype)
    return (SAEParams(D.T, jnp.zeros((k_concepts,), dtype), D, b),
            SAEState(jnp.zeros((k_concepts,), jnp.int32), jnp.asarray(-1.0, dtype)))


def sae_pre_codes(params: SAEParams, a: Array) -> Array:
    """Pre-activations ``(a - pre_bias) @ encoder + encoder_bias`` (rows x K)."""
    return (a - params.pre_bias) @ params.encoder + params.encoder_bias


def batchtopk_codes(pre: Array, k: int) -> tuple[Array, Array]:
    """BatchTopK: ReLU codes keeping the ``k x rows`` largest of the whole batch; returns ``(codes,
    threshold)`` with the smallest kept value."""
    z = jax.nn.relu(pre)
    n = min(k * pre.shape[0], pre.size)
    vals = lax.top_k(z.reshape(-1), n)[0]
    thr = vals[-1]
    return jnp.where(z >= thr, z, 0.0) * (z > 0), thr


def sae_loss(params: SAEParams, state: SAEState, batch: Array, *, k: int, method: str = "topk-sae",
             aux_k: int | None = None, aux_coef: float = 1.0 / 32, dead_steps: int = 1000):
    """Mean squared reconstruction error per row (summed over channels, averaged over rows) + AuxK.
    Returns ``(loss, (codes, threshold, mse, aux))``."""
    pre = sae_pre_codes(params, batch)
    if method == "topk-sae":
        z, thr = topk_codes(pre, k), state.threshold
    else:
        z, thr = batchtopk_codes(pre, k)
    rec = z @ params.decoder + params.pre_bias
    err = batch - rec
    mse = jnp.mean(jnp.sum(err * err, -1))
    K = pre.shape[-1]
    ak = min(aux_k if aux_k is not None else max(1, batch.shape[-1] // 2), K)
    dead = state.since_fired >= dead_steps
    za = topk_codes(jnp.where(dead, pre, jnp.finfo(pre.dtype).min), ak) * dead
    e_hat = za @ params.decoder
    target = lax.stop_gradient(err)
    aux_raw = jnp.mean(jnp.sum((target - e_hat) ** 2, -1))
    aux = jnp.where(jnp.any(dead), aux_raw, 0.0)
    return mse + aux_coef * aux, (z, thr, mse, aux)


def _unit_rows(D):
    return D / jnp.maximum(jnp.linalg.norm(D, axis=1, keepdims=True), 1e-12)


def sae_train_step(params: SAEParams, opt_state: Any, batch: Array, state: SAEState, *,
                   optimizer: optax.GradientTransformation, k: int, method: str = "topk-sae",
                   aux_k: int | None = None, aux_coef: float = 1.0 / 32, dead_steps: int = 1000,
                   momentum: float = 0.9, axis_name: str | None = None):
    """One optax step on ``batch`` (rows x C): gradient of :func:`sae_loss` (``pmean``-ed over
    ``axis_name`` when given), update, decoder rows back to unit norm, dead-latent counters and the
    BatchTopK running threshold updated. Returns ``(params, opt_state, state, metrics)``."""
    (loss, (z, thr, mse, aux)), g = jax.value_and_grad(sae_loss, has_aux=True)(
        params, state, batch, k=k, method=method, aux_k=aux_k, aux_coef=aux_coef, dead_steps=dead_steps)
    fired = jnp.any(z > 0, axis=0)
    if axis_name is not None:
        g = lax.pmean(g, axis_name)
        loss, mse, aux, thr = (lax.pmean(x, axis_name) for x in (loss, mse, aux, thr))
        fired = lax.pmax(fired.astype(jnp.int32), axis_name) > 0
    updates, opt_state = optimizer.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)
    params = params._replace(decoder=_unit_rows(params.decoder))
    since = jnp.where(fired, 0, state.since_fired + batch.shape[0])
    new_thr = jnp.where(state.threshold < 0, thr, momentum * state.threshold + (1 - momentum) * thr)
    state = SAEState(since, new_thr if method == "batchtopk-sae" else state.threshold)
    return params, opt_state, state, {"loss": loss, "mse": mse, "aux": aux}


def sae_dictionary(params: SAEParams, state: SAEState, *, k: int, method: str = "topk-sae") -> Dictionary:
    """The :class:`Dictionary` of trained weights (BatchTopK: the running threshold for inference)."""
    return Dictionary(method, params.decoder, params.encoder, params.encoder_bias, params.pre_bias,
                      state.threshold if method == "batchtopk-sae" else None, k=k)


def fit_sae(a: Array, k_concepts: int, *, k: int, key: Array, method: str = "topk-sae", steps: int = 1000,
            batch_size: int = 1024, learning_rate: float = 1e-3, aux_k: int | None = None,
            aux_coef: float = 1.0 / 32, dead_steps: int = 10_000) -> tuple[Dictionary, dict]:
    """Train a Top-K or BatchTopK SAE on ``a`` (rows x C) in memory: ``steps`` Adam steps over shuffled
    batches (keyed), from the same :func:`sae_train_step`, in one ``lax.scan``. Returns the dictionary and
    the per-step metrics."""
    from jaxviz.nn.jit import jit

    a = jnp.asarray(a, jnp.float32)
    N, C = a.shape
    kinit, kperm = jax.random.split(key)
    params, state = sae_init(kinit, C, k_concepts, pre_bias=jnp.mean(a, 0))
    opt = optax.adam(learning_rate)
    B = min(batch_size, N)

    @jit
    def run(params, state, a, kperm):
        opt_state = opt.init(params)

        def step(carry, key):
            params, opt_state, state = carry
            idx = jax.random.choice(key, N, (B,), replace=False)
            params, opt_state, state, m = sae_train_step(
                params, opt_state, a[idx], state, optimizer=opt, k=k, method=method, aux_k=aux_k,
                aux_coef=aux_coef, dead_steps=dead_steps)
            return (params, opt_state, state), m

        (params, _, state), m = lax.scan(step, (params, opt_state, state), jax.random.split(kperm, steps))
        return params, state, m

    params, state, metrics = run(params, state, a, kperm)
    return sae_dictionary(params, state, k=k, method=method), metrics
