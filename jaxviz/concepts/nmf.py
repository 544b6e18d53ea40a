"""NMF and semi-NMF dictionaries in the streamable form: every piece works on one batch of rows.

NMF is scikit-learn's ``solver="cd"`` recursion (``_fit_coordinate_descent``): per iteration, the
codes step (one coordinate-descent sweep of the codes ``W`` with the dictionary ``H`` fixed, row by row:
needs only the batch's rows and ``H``), then the dictionary step (one sweep of ``H`` with ``W`` fixed:
needs only ``WᵀW`` (K x K) and ``WᵀA`` (K x C) summed over every row — over batches, devices
(``psum``) and processes). So a fit streamed over batches and devices is the exact full-matrix NMF.

The pieces a streamed driver uses, per iteration::

    stats = 0
    for A_b, W_b in batches:                      # on every device, every process
        W_b = nmf_codes_step(H, A_b, W_b, reg)    # or nnls_solve(...) when codes are not kept
        stats += nmf_stats(W_b, A_b)              # (WᵀW, WᵀA); psum over devices, sum over processes
    H = nmf_dictionary_step(H, *stats, reg, n_rows)

and for the ``nndsvda`` initialisation two passes: ``svd_stats`` (the Gram ``AᵀA``, column sums and
the row count), then ``nndsvda_norms`` (the norms of the positive/negative parts of the left singular
vectors), after which ``nndsvda_dictionary`` gives ``H0`` and ``nndsvda_codes`` the initial codes of
any batch.

Memory rule: the codes (rows x K) are kept between iterations when they fit (in-memory fits and
streamed fits whose rows x K x 4 bytes fit the budget): then the fit is scikit-learn's iteration
exactly. When they do not fit, each pass re-solves every batch's codes from the current dictionary
(:func:`jaxviz.concepts.nnls_solve` from zeros, to convergence): an exact block-coordinate method (each
codes step is the exact minimiser instead of one sweep), which reaches an objective at least as low per
iteration but is no longer scikit-learn's sequence of iterates. ``fit_nmf`` reports the objective
reached either way.

Exactness of the streamed ``nndsvda``: scikit-learn takes the top-K singular triplets from
``randomized_svd``; the streamed form takes them from the eigenvectors of the Gram ``AᵀA`` (exact SVD,
up to rounding). The two agree to rounding when the randomized SVD has converged (matrices whose rank
is at most K + 10, or a fast-decaying spectrum); otherwise the streamed one is the exact one. Through the
Gram, a singular vector loses accuracy in proportion to (σ₀/σⱼ)² x machine epsilon (float32: fine for
σⱼ/σ₀ > ~1e-2).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxviz.concepts.dictionary import Dictionary, cd_sweep, cd_sweep_t, code_penalties, nnls_solve_t, rows_dot_t
from jaxviz.errors import JaxvizError, unknown

Array = Any


class NMFReg(NamedTuple):
    """Regularisation as scikit-learn's ``NMF``: ``alpha_W`` (codes, scaled by the number of channels),
    ``alpha_H`` (dictionary, scaled by the number of rows; ``"same"``: ``alpha_W``), ``l1_ratio``
    (0: ridge, 1: lasso)."""

    alpha_W: float = 0.0
    alpha_H: float | str = "same"
    l1_ratio: float = 0.0


def dictionary_penalties(reg: NMFReg, n_rows: int | Array) -> tuple[Array, Array]:
    """(l1, l2) on the dictionary: ``n_rows * alpha_H * l1_ratio`` and ``n_rows * alpha_H * (1 -
    l1_ratio)`` (scikit-learn's ``_compute_regularization``)."""
    alpha_H = reg.alpha_W if isinstance(reg.alpha_H, str) else reg.alpha_H
    return n_rows * alpha_H * reg.l1_ratio, n_rows * alpha_H * (1.0 - reg.l1_ratio)


def _psum(x, axis_name):
    return x if axis_name is None else lax.psum(x, axis_name)


# --------------------------------------------------------------------------------------------------- steps


def nmf_codes_step(H: Array, A_b: Array, W_b: Array, reg: NMFReg = NMFReg(), *, mask: Array | None = None,
                   return_violation: bool = False):
    """The codes half of one scikit-learn ``cd`` iteration for one batch of rows: one coordinate-descent
    sweep of ``W_b`` (B x K) given the dictionary ``H`` (K x C, signed allowed: semi-NMF) and the rows
    ``A_b`` (B x C), penalties ``code_penalties(alpha_W, l1_ratio, C)``. ``mask`` (B bool): padding
    rows, whose codes are kept at zero. Returns ``W_b``, or ``(W_b, violation)`` with the batch's summed
    projected-gradient violation (add it over batches for scikit-learn's stopping rule)."""
    Wt, v = codes_step_t(H, A_b, W_b.T, reg, mask=mask)
    return (Wt.T, v) if return_violation else Wt.T


def codes_step_t(H: Array, A_b: Array, Wt: Array, reg: NMFReg = NMFReg(), *, mask: Array | None = None):
    """:func:`nmf_codes_step` on transposed codes (``Wt`` K x B, the sweep's layout; the fit keeps its
    codes so): ``(Wt, violation)``."""
    l1, l2 = code_penalties(reg.alpha_W, reg.l1_ratio, A_b.shape[-1])
    HHt = H @ H.T + l2 * jnp.eye(H.shape[0], dtype=H.dtype)
    Wt, v = cd_sweep_t(Wt, HHt, rows_dot_t(H, A_b) - l1)
    if mask is not None:
        Wt = jnp.where(mask[None, :], Wt, 0.0)
        v = jnp.where(mask, v, 0.0)
    return Wt, jnp.sum(v)


def nmf_stats(W_b: Array, A_b: Array, axis_name: str | None = None) -> tuple[Array, Array]:
    """``(WᵀW (K x K), WᵀA (K x C))`` of one batch: sums over batches, over devices (``axis_name``:
    psum inside ``shard_map``/``pmap``) and over processes give the dictionary step's statistics."""
    return tuple(_psum(x, axis_name) for x in _stats_t(W_b.T, A_b))


def _stats_t(Wt: Array, A_b: Array) -> tuple[Array, Array]:
    """:func:`nmf_stats` of transposed codes (K x B), before any psum."""
    return Wt @ Wt.T, Wt @ A_b


def nmf_dictionary_step(H: Array, WtW: Array, WtA: Array, reg: NMFReg = NMFReg(), n_rows: int | Array = 1,
                        *, return_violation: bool = False):
    """The dictionary half of one scikit-learn ``cd`` iteration: one coordinate-descent sweep of ``H``
    (K x C) from the summed ``WᵀW`` and ``WᵀA`` over all ``n_rows`` rows (scikit-learn's
    ``_update_coordinate_descent(X.T, Ht, W, l1_reg_H, l2_reg_H)``). Returns ``H`` or
    ``(H, violation)``."""
    l1, l2 = dictionary_penalties(reg, n_rows)
    HHt = WtW + l2 * jnp.eye(WtW.shape[0], dtype=WtW.dtype)
    Ht, v = cd_sweep(H.T, HHt, WtA.T - l1)
    return (Ht.T, jnp.sum(v)) if return_violation else Ht.T


def seminmf_dictionary_step(WtW: Array, WtA: Array, reg: NMFReg = NMFReg(), n_rows: int | Array = 1) -> Array:
    """Semi-NMF dictionary step (signed dictionary, non-negative codes; Ding, Li & Jordan 2010): the
    exact least-squares dictionary ``(WᵀW + l2 I)⁻¹ WᵀA`` given the codes, from the same summed
    statistics as NMF (``l2`` from ``alpha_H`` as :func:`dictionary_penalties`; the l1 part is not used).
    A concept that no row uses keeps a zero row."""
    _, l2 = dictionary_penalties(reg, n_rows)
    K = WtW.shape[0]
    jitter = 1e-12 * jnp.trace(WtW) / K  # unused concepts: keep the system solvable
    return jnp.linalg.solve(WtW + (l2 + jitter) * jnp.eye(K, dtype=WtW.dtype), WtA)


def nmf_penalty(W_b: Array, reg: NMFReg, n_features: int) -> Array:
    """The codes' penalty of one batch, ``l1 |W|₁ + 0.5 l2 ||W||²`` (sums over batches)."""
    l1, l2 = code_penalties(reg.alpha_W, reg.l1_ratio, n_features)
    return l1 * jnp.sum(jnp.abs(W_b)) + 0.5 * l2 * jnp.sum(W_b * W_b)


def residual_sq(H: Array, A_b: Array, W_b: Array) -> Array:
    """``||A_b - W_b H||²_F`` of one batch (sums over batches)."""
    return _residual_sq_t(H, A_b, W_b.T)


def _residual_sq_t(H: Array, A_b: Array, Wt: Array) -> Array:
    """:func:`residual_sq` of transposed codes (K x B)."""
    r = A_b - lax.dot_general(Wt, H, (((0,), (0,)), ((), ())))
    return jnp.sum(r * r)


# --------------------------------------------------------------------------------------------------- init


class SVDStats(NamedTuple):
    """Summable statistics for the streamed SVD: ``gram`` AᵀA (C x C), ``colsum`` (C), ``n`` rows."""

    gram: Array
    colsum: Array
    n: Array


def svd_stats(A_b: Array, mask: Array | None = None, axis_name: str | None = None) -> SVDStats:
    """The batch's :class:`SVDStats` (rows where ``mask`` is False are padding and count as absent)."""
    if mask is not None:
        A_b = jnp.where(mask[:, None], A_b, 0.0)
        n = jnp.sum(mask).astype(A_b.dtype)
    else:
        n = jnp.asarray(A_b.shape[0], A_b.dtype)
    return SVDStats(*(_psum(x, axis_name) for x in (A_b.T @ A_b, jnp.sum(A_b, 0), n)))


def top_singular(stats: SVDStats, k: int) -> tuple[Array, Array]:
    """Top-``k`` singular values ``S`` (k, descending) and right singular vectors ``V`` (k x C) of the
    streamed matrix, from the eigendecomposition of its Gram."""
    lam, vec = jnp.linalg.eigh(stats.gram)
    lam, vec = lam[::-1][:k], vec[:, ::-1][:, :k]
    return jnp.sqrt(jnp.maximum(lam, 0.0)), vec.T


def _left(S: Array, V: Array, A_b: Array) -> Array:
    return (A_b @ V.T) / jnp.where(S > 0, S, 1.0) * (S > 0)  # U rows; 0 for a zero singular value


def nndsvda_norms(S: Array, V: Array, A_b: Array, mask: Array | None = None,
                  axis_name: str | None = None) -> tuple[Array, Array]:
    """Squared norms (k each, summable) of the positive and negative parts of the batch's rows of the
    left singular vectors ``U = A Vᵀ / S``."""
    U = _left(S, V, A_b)
    if mask is not None:
        U = jnp.where(mask[:, None], U, 0.0)
    return _psum(jnp.sum(jnp.maximum(U, 0) ** 2, 0), axis_name), _psum(jnp.sum(jnp.minimum(U, 0) ** 2, 0), axis_name)


class NNDSVDA(NamedTuple):
    """What :func:`nndsvda_codes` needs to give any batch its initial codes."""

    S: Array
    V: Array
    scale: Array  # k: lbd / ||x_sel|| (sqrt(S0) for the first component)
    negative: Array  # k bool: the negative part was chosen
    mean: Array  # the mean of the whole matrix (fills zeros)
    eps: float = 1e-6


def nndsvda_dictionary(S: Array, V: Array, pos_sq: Array, neg_sq: Array, mean: Array,
                       eps: float = 1e-6) -> tuple[Array, NNDSVDA]:
    """``H0`` (k x C) of scikit-learn's ``_initialize_nmf(init="nndsvda")``, and the state for the codes.
    ``mean``: the mean of every entry of the matrix (``colsum.sum() / (n * C)``)."""
    x_p, x_n = jnp.sqrt(pos_sq), jnp.sqrt(neg_sq)
    y_p, y_n = jnp.linalg.norm(jnp.maximum(V, 0), axis=1), jnp.linalg.norm(jnp.minimum(V, 0), axis=1)
    m_p, m_n = x_p * y_p, x_n * y_n
    neg = ~(m_p > m_n)
    sigma = jnp.where(neg, m_n, m_p)
    lbd = jnp.sqrt(S * sigma)
    safe = lambda a: jnp.where(a > 0, a, 1.0)  # noqa: E731
    v = jnp.where(neg[:, None], -jnp.minimum(V, 0) / safe(y_n)[:, None], jnp.maximum(V, 0) / safe(y_p)[:, None])
    H = lbd[:, None] * v * (sigma > 0)[:, None]
    scale = jnp.where(sigma > 0, lbd / safe(jnp.where(neg, x_n, x_p)), 0.0)
    # the leading triplet is used as is
    H = H.at[0].set(jnp.sqrt(S[0]) * jnp.abs(V[0]))
    scale = scale.at[0].set(jnp.sqrt(S[0]))
    neg = neg.at[0].set(False)
    H = jnp.where(H < eps, mean, H)
    return H, NNDSVDA(S, V, scale, neg, jnp.asarray(mean), eps)


def nndsvda_codes(init: NNDSVDA, A_b: Array, mask: Array | None = None) -> Array:
    """The batch's initial codes ``W0`` (B x k) of scikit-learn's ``nndsvda`` (zeros of padding rows)."""
    U = _left(init.S, init.V, A_b)
    part = jnp.where(init.negative, -jnp.minimum(U, 0), jnp.maximum(U, 0))
    part = part.at[:, 0].set(jnp.abs(U[:, 0]))
    W = init.scale * part
    W = jnp.where(W < init.eps, init.mean, W)
    return W if mask is None else jnp.where(mask[:, None], W, 0.0)


def seminmf_init(S: Array, V: Array, colsum: Array) -> Array:
    """Semi-NMF's initial dictionary: ``sqrt(S) V`` with each singular vector's sign chosen so the mean
    row projects positively on it (its initial codes are then ``relu(A D0ᵀ / S)``, see
    :func:`seminmf_codes_init`)."""
    sign = jnp.where(colsum @ V.T >= 0, 1.0, -1.0)
    return jnp.sqrt(S)[:, None] * sign[:, None] * V


def seminmf_codes_init(S: Array, D0: Array, A_b: Array, mask: Array | None = None) -> Array:
    """Semi-NMF's initial codes of a batch: ``relu(A_b D0ᵀ / S)`` (the non-negative part of ``U sqrt(S)``)."""
    W = jax.nn.relu((A_b @ D0.T) / jnp.where(S > 0, S, 1.0) * (S > 0))
    return W if mask is None else jnp.where(mask[:, None], W, 0.0)


# --------------------------------------------------------------------------------------------------- fit


class FitInfo(NamedTuple):
    """What a fit reached: ``n_iter`` iterations, ``reconstruction`` = 0.5 ||A - Z D||²_F (scikit-learn's
    ``reconstruction_err_`` squared / 2, ``_beta_divergence(..., 2)``), ``objective`` = reconstruction +
    the codes' and dictionary's penalties, ``relative_error`` = ||A - Z D||_F / ||A||_F, ``violation``
    (last iteration's projected-gradient L1 norm) and ``violation_init`` (the first's)."""

    n_iter: Array
    reconstruction: Array
    objective: Array
    relative_error: Array
    violation: Array
    violation_init: Array


def _fit_body(A, mask, W, H, *, method, k, reg, n_rows, max_iter, tol, init, keep_codes, axis_name,
              solve_iter, solve_tol):
    """The whole fit on this device's batches ``A`` (nb x B x C), ``mask`` (nb x B): the streamed pieces
    under one ``lax.scan`` per pass, sums ``psum``-ed over ``axis_name``."""
    C = A.shape[-1]
    dtype = A.dtype
    zero = lambda *s: jnp.zeros(s, dtype)  # noqa: E731

    def over(fn, init_acc):  # sum fn(A_b, m_b) over this device's batches, then over devices
        acc = lax.scan(lambda acc, xs: (jax.tree.map(jnp.add, acc, fn(*xs)), None), init_acc, (A, mask))[0]
        return jax.tree.map(lambda x: _psum(x, axis_name), acc)

    if init in ("nndsvda", "svd"):
        st = over(lambda a, m: svd_stats(a, m), SVDStats(zero(C, C), zero(C), zero()))
        S, V = top_singular(st, k)
        if method == "nmf":
            pos, neg = over(lambda a, m: nndsvda_norms(S, V, a, m), (zero(k), zero(k)))
            H, ini = nndsvda_dictionary(S, V, pos, neg, jnp.sum(st.colsum) / (st.n * C))
            W = jax.vmap(lambda a, m: nndsvda_codes(ini, a, m))(A, mask)
        else:
            H = seminmf_init(S, V, st.colsum)
            W = jax.vmap(lambda a, m: seminmf_codes_init(S, H, a, m))(A, mask)

    l1c, l2c = code_penalties(reg.alpha_W, reg.l1_ratio, C)

    # Inside the fit the codes are held transposed (nb x K x B: the sweep's layout), so no batch pays
    # for transposes and WᵀA is a plain product (10 iterations at 200,000 x 320 x 32 on two CPU
    # devices: 0.94 -> 0.87 s); the result is transposed back once.
    W = jnp.swapaxes(W, 1, 2)

    def codes(H, a, m, wt):
        if keep_codes:
            return codes_step_t(H, a, wt, reg, mask=m)
        wt = nnls_solve_t(H, a, l1c, l2c, max_iter=solve_iter, tol=solve_tol)
        return jnp.where(m[None, :], wt, 0.0), jnp.zeros((), dtype)

    def iteration(state):
        it, W, H, v0, _ = state

        def batch(acc, xs):
            a, m, w = xs
            w, v = codes(H, a, m, w)
            WtW, WtA = _stats_t(w, a)
            return (acc[0] + WtW, acc[1] + WtA, acc[2] + v), (w if keep_codes else None)

        (WtW, WtA, v), Wn = lax.scan(batch, (zero(k, k), zero(k, C), zero()), (A, mask, W))
        WtW, WtA, v = (_psum(x, axis_name) for x in (WtW, WtA, v))
        if method == "nmf":
            H, vh = nmf_dictionary_step(H, WtW, WtA, reg, n_rows, return_violation=True)
            v = v + vh
        else:
            H = seminmf_dictionary_step(WtW, WtA, reg, n_rows)
        v0 = jnp.where(it == 0, v, v0)
        return it + 1, (Wn if keep_codes else W), H, v0, v

    def cond(state):
        it, _, _, v0, v = state
        first = it == 0
        return (it < max_iter) & (first | ((v0 != 0) & (v / jnp.where(v0 != 0, v0, 1.0) > tol)))

    state = (jnp.int32(0), W, H, zero(), zero())
    n_iter, W, H, v0, v = lax.while_loop(cond, iteration, state)
    if not keep_codes:  # the codes of the final dictionary
        W = jax.vmap(lambda a, m: jnp.where(m[None, :], nnls_solve_t(H, a, l1c, l2c, max_iter=solve_iter,
                                                                       tol=solve_tol), 0.0))(A, mask)
    rec, pen, asq = lax.scan(
        lambda acc, xs: ((acc[0] + _residual_sq_t(H, xs[0], xs[2]), acc[1] + nmf_penalty(xs[2], reg, C),
                          acc[2] + jnp.sum(xs[0] ** 2)), None), (zero(), zero(), zero()), (A, mask, W))[0]
    rec, pen, asq = (_psum(x, axis_name) for x in (rec, pen, asq))
    l1h, l2h = dictionary_penalties(reg, n_rows)
    hpen = l1h * jnp.sum(jnp.abs(H)) + 0.5 * l2h * jnp.sum(H * H)
    info = FitInfo(n_iter, 0.5 * rec, 0.5 * rec + pen + hpen, jnp.sqrt(rec / asq), v, v0)
    return jnp.swapaxes(W, 1, 2), H, info


def _devices(devices):
    if devices is None:
        return [jax.devices()[0]]
    if isinstance(devices, int):
        avail = jax.local_devices()
        if not 1 <= devices <= len(avail):
            raise JaxvizError(f"devices={devices} but {len(avail)} local devices are available")
        return avail[:devices]
    return list(devices)


@functools.lru_cache(maxsize=32)
def _compiled(method, k, reg, init, keep_codes, solve_iter, solve_tol, devs):
    """The jitted whole fit for these static settings and devices (cached: a second fit of the same
    shapes reuses the compiled program; ``n_rows``, ``max_iter`` and ``tol`` are traced)."""
    from jax.sharding import Mesh, PartitionSpec as P

    from jaxviz.nn.jit import jit

    kw = dict(method=method, k=k, reg=reg, init=init, keep_codes=keep_codes, solve_iter=solve_iter,
              solve_tol=solve_tol)
    if len(devs) == 1:
        def one(A, m, W, H, n_rows, max_iter, tol):
            Wo, Ho, info = _fit_body(A[0], m[0], W[0], H, n_rows=n_rows, max_iter=max_iter, tol=tol,
                                     axis_name=None, **kw)
            return Wo.reshape(-1, Wo.shape[-1]), Ho, info

        return jit(one)
    mesh = Mesh(np.array(devs), ("rows",))

    def body(A, m, W, H, n_rows, max_iter, tol):
        Wo, Ho, info = _fit_body(A[0], m[0], W[0], H, n_rows=n_rows, max_iter=max_iter, tol=tol,
                                 axis_name="rows", **kw)
        return Wo.reshape(-1, Wo.shape[-1]), Ho, info  # this device's rows, in order

    return jit(jax.shard_map(body, mesh=mesh, in_specs=(P("rows"), P("rows"), P("rows"), P(), P(), P(), P()),
                             out_specs=(P("rows"), P(), P()), check_vma=False))


def _fit(method, a, k, *, init, W, H, reg, max_iter, tol, key, batch_size, keep_codes, devices,
         solve_iter=1000, solve_tol=1e-7):
    # A host matrix stays on the host until it is placed, split over the devices, in one copy (a first
    # copy to the default device and a reshard cost 0.4 s of a 1.8 s fit at 200,000 x 320).
    on_host = not isinstance(a, jax.Array)
    a = np.asarray(a) if on_host else a
    if a.ndim != 2:
        raise JaxvizError(f"a must be a rows x channels matrix, got shape {tuple(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    if on_host:
        a = a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)
    N, C = a.shape
    if not 1 <= k <= min(N, C) and init != "random" and init != "custom":
        raise JaxvizError(f"k={k} concepts needs init='random' or 'custom' (nndsvda needs k <= min(rows, channels) = {min(N, C)})")
    if method == "nmf" and a.size and bool(a.min() < 0):
        raise JaxvizError("a has negative activations; NMF needs non-negative ones: use method 'seminmf' or a post-ReLU layer")
    valid = ("nndsvda", "random", "custom") if method == "nmf" else ("svd", "random", "custom")
    if init not in valid:
        raise unknown("init", init, valid)
    devs = _devices(devices)
    nd = len(devs)
    B = int(max(1, min(batch_size, -(-N // nd))))
    nb = -(-N // (nd * B))
    # A few more batches where that splits the rows exactly (no padded copy of the matrix), else the
    # same number of batches with as little padding as possible.
    nb = next((n for n in range(nb, 2 * nb + 1) if N % (nd * n) == 0), nb)
    B = -(-N // (nd * nb))
    total = nd * nb * B

    def pad(x):
        xp = np if isinstance(x, np.ndarray) else jnp
        return x if total == N else xp.concatenate([x, xp.zeros((total - N, *x.shape[1:]), x.dtype)])

    if nd == 1:  # on the default device: left uncommitted, so results mix with any other array
        place = jnp.asarray if devs[0] == jax.devices()[0] else functools.partial(jax.device_put, device=devs[0])
    else:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        place = functools.partial(jax.device_put, device=NamedSharding(Mesh(np.array(devs), ("rows",)), P("rows")))
    mask = place((np.arange(total) < N).reshape(nd, nb, B))
    Ap = place(pad(a).reshape(nd, nb, B, C))
    if init == "custom":
        if W is None or H is None:
            raise JaxvizError("init='custom' needs both W (rows x k) and H (k x channels)")
        W, H = (np.asarray(W, a.dtype) if on_host else jnp.asarray(W, a.dtype)), jnp.asarray(H, a.dtype)
        if W.shape != (N, k) or H.shape != (k, C):
            raise JaxvizError(f"W must be {(N, k)} and H {(k, C)}, got {W.shape} and {H.shape}")
    elif init == "random":
        if key is None:
            raise JaxvizError("init='random' needs a jax.random key (key=)")
        kw, kh = jax.random.split(key)
        a = jnp.asarray(a)
        avg = jnp.sqrt(jnp.mean(a) / k) if method == "nmf" else jnp.sqrt(jnp.mean(jnp.abs(a)) / k)
        W = jnp.abs(avg * jax.random.normal(kw, (N, k), a.dtype))
        H = avg * jax.random.normal(kh, (k, C), a.dtype)
        H = jnp.abs(H) if method == "nmf" else H
    else:
        W, H = jnp.zeros((N, k), a.dtype), jnp.zeros((k, C), a.dtype)
    Wp = place(pad(W).reshape(nd, nb, B, k))
    fn = _compiled(method, k, reg, init, keep_codes, int(solve_iter), float(solve_tol), tuple(devs))
    Wo, Ho, info = fn(Ap, mask, Wp, H, N, max_iter, tol)
    codes = Wo if total == N else Wo[:N]
    d = Dictionary(method, Ho, alpha_W=float(reg.alpha_W), l1_ratio=float(reg.l1_ratio))
    return d, codes, info


def fit_nmf(a: Array, k: int, *, init: str = "nndsvda", W: Array | None = None, H: Array | None = None,
            alpha_W: float = 0.0, alpha_H: float | str = "same", l1_ratio: float = 0.0, max_iter: int = 200,
            tol: float = 1e-4, key: Array | None = None, batch_size: int = 4096, keep_codes: bool = True,
            devices: Any = None) -> tuple[Dictionary, Array, FitInfo]:
    """NMF of ``a`` (rows x C, non-negative) with ``k`` concepts: scikit-learn's
    ``NMF(solver="cd", shuffle=False)`` iteration, run as the streamed pieces (:func:`nmf_codes_step`,
    :func:`nmf_stats`, :func:`nmf_dictionary_step`) over row batches of ``batch_size`` inside one jit.

    ``init``: ``"nndsvda"`` (scikit-learn's, from the exact SVD via the Gram), ``"random"`` (needs
    ``key``; scikit-learn's scale, JAX's random numbers) or ``"custom"`` (``W`` rows x k, ``H`` k x C).
    ``alpha_W``, ``alpha_H``, ``l1_ratio``, ``max_iter``, ``tol``: as scikit-learn (stop when the
    projected-gradient violation falls to ``tol`` times the first iteration's; ``tol=0``: exactly
    ``max_iter`` iterations). ``keep_codes=False``: the memory rule's re-solve mode (module docstring).
    ``devices``: a count or list of local devices: rows are split over them and the statistics
    ``psum``-ed (same result as one device, to rounding).

    Returns ``(Dictionary, codes (rows x k), FitInfo)``; the dictionary's ``encode`` uses ``alpha_W`` and
    ``l1_ratio`` as ``NMF.transform`` does."""
    reg = NMFReg(alpha_W, alpha_H, l1_ratio)
    return _fit("nmf", a, k, init=init, W=W, H=H, reg=reg, max_iter=max_iter, tol=tol, key=key,
                batch_size=batch_size, keep_codes=keep_codes, devices=devices)


def fit_seminmf(a: Array, k: int, *, init: str = "svd", W: Array | None = None, H: Array | None = None,
                alpha_W: float = 0.0, alpha_H: float | str = "same", l1_ratio: float = 0.0,
                max_iter: int = 200, tol: float = 1e-4, key: Array | None = None, batch_size: int = 4096,
                keep_codes: bool = True, devices: Any = None) -> tuple[Dictionary, Array, FitInfo]:
    """Semi-NMF of signed ``a`` (rows x C): non-negative codes, signed dictionary. Per iteration the
    codes step is NMF's (one coordinate-descent sweep, :func:`nmf_codes_step`: coordinate descent solves
    the non-negative least squares for any dictionary) and the dictionary step the exact least squares
    :func:`seminmf_dictionary_step` from the same summed ``WᵀW``, ``WᵀA``. ``init="svd"``:
    :func:`seminmf_init` from the streamed SVD. Other arguments and the result as :func:`fit_nmf`; the
    stopping rule uses the codes' violation only (the dictionary step is exact)."""
    reg = NMFReg(alpha_W, alpha_H, l1_ratio)
    d, codes, info = _fit("seminmf", a, k, init=init, W=W, H=H, reg=reg, max_iter=max_iter, tol=tol, key=key,
                          batch_size=batch_size, keep_codes=keep_codes, devices=devices)
    return d, codes, info
