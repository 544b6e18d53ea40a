"""The dictionary of concepts: one NamedTuple for every method, and ``encode``/``decode``.

A dictionary factorises activations ``A`` (rows x C channels) as ``A ≈ Z D``: ``D`` (K x C) holds one
concept per row (``components``), ``Z`` (rows x K) the codes. NMF and semi-NMF encode by solving the
non-negative least-squares problem of scikit-learn's ``NMF.transform`` (coordinate descent to
convergence), differentiable by implicit differentiation on the active set; the sparse autoencoders
encode with their encoder (Top-K, or BatchTopK's inference threshold).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxviz.errors import JaxvizError, unknown

Array = Any

METHODS = ("nmf", "seminmf", "topk-sae", "batchtopk-sae")


class Dictionary(NamedTuple):
    """A fitted dictionary of K concepts over C channels (a pytree: arrays are leaves; ``method``, ``k``,
    ``alpha_W``, ``l1_ratio``, ``max_iter``, ``tol`` are static, so a ``Dictionary`` passes through
    ``jax.jit`` and changing one of those recompiles).

    Fields:
      method: ``"nmf"`` | ``"seminmf"`` | ``"topk-sae"`` | ``"batchtopk-sae"``.
      components: K x C float, one concept per row (NMF: non-negative; semi-NMF: signed; SAE: the decoder,
        rows of unit L2 norm).
      encoder: SAE only, C x K encoder weights (None for NMF).
      encoder_bias: SAE only, K.
      pre_bias: SAE only, C: subtracted before encoding, added after decoding.
      threshold: BatchTopK only, the scalar inference threshold (codes below it are zero).
      k: SAE only, active latents per row (Top-K), or the mean per row (BatchTopK training).
      alpha_W, l1_ratio: NMF/semi-NMF only, the regularisation of the codes as scikit-learn's ``NMF``
        (``l1 = C * alpha_W * l1_ratio``, ``l2 = C * alpha_W * (1 - l1_ratio)``), used by ``encode``.
      max_iter, tol: NMF/semi-NMF ``encode``: coordinate-descent sweeps at most, and the per-row stop
        (projected-gradient L1 norm relative to the first sweep's, as scikit-learn's ``tol``).
    """

    method: str
    components: Array
    encoder: Array | None = None
    encoder_bias: Array | None = None
    pre_bias: Array | None = None
    threshold: Array | None = None
    k: int = 0
    alpha_W: float = 0.0
    l1_ratio: float = 0.0
    max_iter: int = 1000
    tol: float = 1e-7


_STATIC = ("method", "k", "alpha_W", "l1_ratio", "max_iter", "tol")
_DYNAMIC = ("components", "encoder", "encoder_bias", "pre_bias", "threshold")


def _flatten(d: Dictionary):
    return tuple(getattr(d, f) for f in _DYNAMIC), tuple(getattr(d, f) for f in _STATIC)


def _unflatten(aux, children):
    return Dictionary(**dict(zip(_DYNAMIC, children)), **dict(zip(_STATIC, aux)))


jax.tree_util.register_pytree_node(Dictionary, _flatten, _unflatten)


def _check(d: Dictionary) -> None:
    if d.method not in METHODS:
        raise unknown("method", d.method, METHODS)


def code_penalties(alpha_W: float, l1_ratio: float, n_features: int) -> tuple[float, float]:
    """The (l1, l2) penalties on the codes for ``n_features`` channels, scaled as scikit-learn's
    ``NMF._compute_regularization``: ``l1 = n_features * alpha_W * l1_ratio``,
    ``l2 = n_features * alpha_W * (1 - l1_ratio)``."""
    return n_features * alpha_W * l1_ratio, n_features * alpha_W * (1.0 - l1_ratio)


# ---------------------------------------------------------------------------------------------------
# Non-negative least squares by coordinate descent (scikit-learn's _update_cdnmf_fast), batched over rows


def cd_sweep(W: Array, HHt: Array, XHt: Array, active: Array | None = None) -> tuple[Array, Array]:
    """One sweep of scikit-learn's coordinate descent (``_cdnmf_fast._update_cdnmf_fast``, no shuffle) on
    the rows of ``W`` (B x K): for each component t in order, for every row,
    ``grad = W[:, :] @ HHt[t] - XHt[:, t]``, ``W[:, t] = max(W[:, t] - grad / HHt[t, t], 0)`` (skipped
    where ``HHt[t, t] == 0``). ``HHt`` (K x K) already holds the l2 penalty on its diagonal and ``XHt``
    (B x K) the l1 penalty subtracted. Rows are independent. ``active`` (B bool): rows to update (others
    are kept). Returns ``(W, violation)``: violation per row (B), the L1 norm of the projected gradient
    as scikit-learn sums it."""
    Wt, viol = cd_sweep_t(W.T, HHt, XHt.T, active)
    return Wt.T, viol


def cd_sweep_t(Wt: Array, HHt: Array, XHtT: Array, active: Array | None = None) -> tuple[Array, Array]:
    """:func:`cd_sweep` on transposed codes: ``Wt`` and ``XHtT`` K x B, one component per row, the layout
    the sweep works in (the fit keeps its codes so: no transpose per batch). Returns ``(Wt, violation)``."""
    K = Wt.shape[0]
    # grad_t reads the components before t at their new values and the others at their old ones:
    # the old part, sum over s >= t of HHt[t, s] W[:, s], is one matmul before the loop (P); inside it
    # the new rows go to a buffer of their own (Nt, zero until written), so step t adds the strictly
    # lower row of HHt times Nt. The same recursion as scikit-learn's (its sums in another order,
    # float rounding apart); the step no longer reads and writes one buffer, which made XLA copy the
    # K x B codes twice per component (1.7-2x faster sweeps on the CPU).
    P = jnp.triu(HHt) @ Wt - XHtT
    lower = jnp.tril(HHt, -1)
    viol = jnp.zeros(Wt.shape[1:], Wt.dtype)

    def body(t, carry):
        Nt, viol = carry
        wt = lax.dynamic_index_in_dim(Wt, t, keepdims=False)
        h = lax.dynamic_index_in_dim(HHt, t, keepdims=False)
        lt = lax.dynamic_index_in_dim(lower, t, keepdims=False)
        grad = lax.dynamic_index_in_dim(P, t, keepdims=False) + lt @ Nt
        pg = jnp.where(wt == 0, jnp.minimum(grad, 0.0), grad)
        hess = h[t]
        new = jnp.where(hess != 0, jnp.maximum(wt - grad / jnp.where(hess != 0, hess, 1.0), 0.0), wt)
        if active is not None:
            new = jnp.where(active, new, wt)
            pg = jnp.where(active, pg, 0.0)
        return lax.dynamic_update_index_in_dim(Nt, new, t, 0), viol + jnp.abs(pg)

    return lax.fori_loop(0, K, body, (jnp.zeros_like(Wt), viol), unroll=min(K, 4))


def rows_dot_t(D: Array, A: Array) -> Array:
    """``(A @ D.T).T`` (K x B) for ``D`` K x C and rows ``A`` B x C, as one product contracting C (no
    transpose of the rows is materialised)."""
    return lax.dot_general(D, A, (((1,), (1,)), ((), ())))


def nnls_solve(D: Array, A: Array, l1: float = 0.0, l2: float = 0.0, *, max_iter: int = 1000,
               tol: float = 1e-7, W0: Array | None = None) -> Array:
    """Codes ``Z`` (B x K, >= 0) minimising ``0.5 ||A - Z D||² + l1 |Z|_1 + 0.5 l2 ||Z||²`` for the rows
    ``A`` (B x C) and any ``D`` (K x C, signed allowed), by coordinate-descent sweeps from ``W0``
    (default zeros, as ``NMF.transform``) inside one ``lax.while_loop``. Each row stops on its own when
    its violation falls to ``tol`` times its first sweep's (so a row's codes do not depend on the batch
    it came in), or after ``max_iter`` sweeps. Not differentiable (see :func:`encode`)."""
    return nnls_solve_t(D, A, l1, l2, max_iter=max_iter, tol=tol, W0t=None if W0 is None else W0.T).T


def nnls_solve_t(D: Array, A: Array, l1: float = 0.0, l2: float = 0.0, *, max_iter: int = 1000,
                 tol: float = 1e-7, W0t: Array | None = None) -> Array:
    """:func:`nnls_solve` giving the codes transposed, K x B (from ``W0t`` K x B)."""
    HHt = D @ D.T + l2 * jnp.eye(D.shape[0], dtype=D.dtype)
    XT = rows_dot_t(D, A) - l1
    Wt = jnp.zeros(XT.shape, XT.dtype) if W0t is None else W0t.astype(XT.dtype)
    B = XT.shape[1]

    def cond(s):
        i, _, active, _ = s
        return (i < max_iter) & jnp.any(active)

    def body(s):
        i, Wt, active, v0 = s
        Wt, v = cd_sweep_t(Wt, HHt, XT, active)
        v0 = jnp.where(i == 0, v, v0)
        active = active & (v0 > 0) & (v > tol * v0)
        return i + 1, Wt, active, v0

    s = (jnp.int32(0), Wt, jnp.ones((B,), bool), jnp.zeros((B,), XT.dtype))
    return lax.while_loop(cond, body, s)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _nnls(D, A, l1, l2, max_iter, tol):
    return nnls_solve(D, A, l1, l2, max_iter=max_iter, tol=tol)


def _nnls_fwd(D, A, l1, l2, max_iter, tol):
    Z = nnls_solve(D, A, l1, l2, max_iter=max_iter, tol=tol)
    return Z, (D, A, Z)


def _nnls_bwd(l1, l2, max_iter, tol, res, g):
    # On the active set S of each row, Z_S = (D_S D_Sᵀ + l2 I)⁻¹ (D_S a - l1) and Z = 0 elsewhere, so
    # with u = (D_S D_Sᵀ + l2 I)⁻¹ g_S (zero off S): ā = u D and D̄ = Σ_rows u (a - z D)ᵀ - z (u D)ᵀ.
    D, A, Z = res
    K = D.shape[0]
    M = D @ D.T + l2 * jnp.eye(K, dtype=D.dtype)
    on = Z > 0
    eye = jnp.eye(K, dtype=bool)
    Ms = jnp.where(on[:, :, None] & on[:, None, :], M, eye.astype(M.dtype))
    U = jnp.linalg.solve(Ms, jnp.where(on, g, 0.0)[..., None])[..., 0]
    U = jnp.where(on, U, 0.0)
    UD = U @ D
    dA = UD
    dD = U.T @ (A - Z @ D) - Z.T @ UD
    return dD, dA


_nnls.defvjp(_nnls_fwd, _nnls_bwd)


def _sae_pre(d: Dictionary, a: Array) -> Array:
    return (a - d.pre_bias) @ d.encoder + d.encoder_bias


def topk_codes(pre: Array, k: int) -> Array:
    """Top-K activation: ReLU of the k largest pre-activations of each row (last axis), zero elsewhere
    (Gao et al. 2024). Gradients flow to the kept entries only."""
    vals, idx = lax.top_k(pre, k)
    keep = jnp.zeros(pre.shape, bool)
    keep = jnp.put_along_axis(keep, idx, True, axis=-1, inplace=False)
    return jnp.where(keep, jax.nn.relu(pre), 0.0)


def encode(d: Dictionary, a: Array) -> Array:
    """Codes (..., K) of activations ``a`` (..., C), batched over the leading axes, jittable.

    NMF / semi-NMF: the non-negative least-squares problem of scikit-learn's ``NMF.transform`` with the
    dictionary's ``alpha_W``/``l1_ratio`` (coordinate descent from zeros to convergence: ``d.max_iter``,
    ``d.tol``), differentiable with respect to ``a`` and ``d.components`` by implicit differentiation on
    the active set (reverse mode). Top-K SAE: ``TopK(relu((a - pre_bias) @ encoder + encoder_bias))``.
    BatchTopK SAE: the same pre-activations, ReLU, zero below ``d.threshold`` (inference)."""
    _check(d)
    a = jnp.asarray(a)
    lead, C = a.shape[:-1], a.shape[-1]
    if C != d.components.shape[1]:
        raise JaxvizError(f"a has {C} channels but the dictionary has {d.components.shape[1]}; "
                          "encode activations of the layer the dictionary was fitted on")
    flat = a.reshape(-1, C).astype(d.components.dtype)
    if d.method in ("nmf", "seminmf"):
        l1, l2 = code_penalties(d.alpha_W, d.l1_ratio, C)
        z = _nnls(d.components, flat, float(l1), float(l2), int(d.max_iter), float(d.tol))
    elif d.method == "topk-sae":
        z = topk_codes(_sae_pre(d, flat), d.k)
    else:
        z = jax.nn.relu(_sae_pre(d, flat))
        z = jnp.where(z >= d.threshold, z, 0.0)
    return z.reshape(*lead, -1)


def decode(d: Dictionary, codes: Array) -> Array:
    """Activations (..., C) rebuilt from codes (..., K): ``codes @ components`` (+ ``pre_bias`` for the
    sparse autoencoders)."""
    _check(d)
    out = jnp.asarray(codes) @ d.components
    if d.pre_bias is not None:
        out = out + d.pre_bias
    return out
