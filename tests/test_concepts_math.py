"""The mathematical core of jaxviz.concepts against scikit-learn, hand-written numpy references and
closed forms (float64 where the issue asks for 1e-8)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import NMF, non_negative_factorization
from sklearn.decomposition._nmf import _initialize_nmf
from sklearn.metrics import r2_score

import jaxviz.concepts as jc


def _data(n=300, c=20, r=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, r)) @ rng.random((r, c)) + 0.01 * rng.random((n, c))


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("alpha_W,alpha_H,l1_ratio", [(0.0, "same", 0.0), (0.01, "same", 0.3), (0.005, 0.02, 1.0)])
def test_nmf_iterates_equal_sklearn_cd(alpha_W, alpha_H, l1_ratio):
    X = _data()
    W0, H0 = _initialize_nmf(X, 5, init="nndsvda", random_state=0)
    for T in (1, 25):
        W, H, n = non_negative_factorization(X, W=W0.copy(), H=H0.copy(), n_components=5, init="custom",
                                             solver="cd", shuffle=False, tol=0, max_iter=T, alpha_W=alpha_W,
                                             alpha_H=alpha_H, l1_ratio=l1_ratio)
        with jax.enable_x64(True):
            d, Z, info = jc.fit_nmf(X, 5, init="custom", W=W0, H=H0, max_iter=T, tol=0, batch_size=64,
                                    alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio)
            assert d.components.dtype == jnp.float64
        assert int(info.n_iter) == T == n
        assert _rel(d.components, H) < 1e-8 and _rel(Z, W) < 1e-8
        ref = 0.5 * ((X - W @ H) ** 2).sum()  # sklearn's _beta_divergence(X, W, H, 2)
        assert abs(float(info.reconstruction) - ref) / ref < 1e-8


def test_nmf_tolerance_stop_equals_sklearn():
    X = _data(seed=1)
    W0, H0 = _initialize_nmf(X, 4, init="nndsvda")
    W, H, n = non_negative_factorization(X, W=W0.copy(), H=H0.copy(), n_components=4, init="custom",
                                         solver="cd", shuffle=False, tol=1e-3, max_iter=500)
    with jax.enable_x64(True):
        d, Z, info = jc.fit_nmf(X, 4, init="custom", W=W0, H=H0, max_iter=500, tol=1e-3)
    assert int(info.n_iter) == n < 500
    assert _rel(d.components, H) < 1e-8


def test_nndsvda_equals_sklearn_initialize_nmf():
    X = _data(n=400, c=30, r=9)  # rank 9 <= k + 10: sklearn's randomized SVD is exact
    W0, H0 = _initialize_nmf(X, 6, init="nndsvda", random_state=0)
    with jax.enable_x64(True):
        d, Z, _ = jc.fit_nmf(X, 6, max_iter=0, batch_size=128)
    assert _rel(d.components, H0) < 1e-8 and _rel(Z, W0) < 1e-8


@pytest.mark.parametrize("alpha_W,l1_ratio", [(0.0, 0.0), (0.01, 0.5)])
def test_encode_equals_sklearn_transform(alpha_W, l1_ratio):
    X = _data()
    model = NMF(5, solver="cd", alpha_W=alpha_W, l1_ratio=l1_ratio, tol=1e-12, max_iter=3000, random_state=0).fit(X)
    new = _data(n=50, seed=3)
    ref = model.transform(new)
    with jax.enable_x64(True):
        d = jc.Dictionary("nmf", jnp.asarray(model.components_), alpha_W=alpha_W, l1_ratio=l1_ratio,
                          max_iter=3000, tol=1e-12)
        z = jc.encode(d, new)
        z3 = jc.encode(d, new.reshape(5, 10, -1))  # batched over leading axes, rows independent
    assert _rel(z, ref) < 1e-6
    np.testing.assert_array_equal(np.asarray(z3).reshape(50, -1), np.asarray(z))


def _streamed(X, W0, H0, T, batch):
    """A driver of the public pieces: a Python loop over row batches (as the collection job runs)."""
    reg = jc.NMFReg()
    H = jnp.asarray(H0)
    W = [jnp.asarray(W0[i:i + batch]) for i in range(0, len(X), batch)]
    A = [jnp.asarray(X[i:i + batch]) for i in range(0, len(X), batch)]
    for _ in range(T):
        WtW = WtA = 0
        for j, a in enumerate(A):
            W[j] = jc.nmf_codes_step(H, a, W[j], reg)
            s = jc.nmf_stats(W[j], a)
            WtW, WtA = WtW + s[0], WtA + s[1]
        H = jc.nmf_dictionary_step(H, WtW, WtA, reg, len(X))
    return H, jnp.concatenate(W)


@pytest.mark.slow
def test_streamed_pieces_equal_in_memory_fit():
    X = _data(n=250)
    W0, H0 = _initialize_nmf(X, 5, init="nndsvda")
    with jax.enable_x64(True):
        H, W = _streamed(X, W0, H0, 10, 37)
        d, Z, _ = jc.fit_nmf(X, 5, init="custom", W=W0, H=H0, max_iter=10, tol=0, batch_size=100)
    assert _rel(H, d.components) < 1e-10 and _rel(W, Z) < 1e-10


def test_streamed_nndsvda_pieces_equal_fit_init():
    X = _data(n=250, c=16)
    with jax.enable_x64(True):
        A = [jnp.asarray(X[:120]), jnp.asarray(X[120:])]
        st = jax.tree.map(jnp.add, *(jc.svd_stats(a) for a in A))
        S, V = jc.top_singular(st, 4)
        pos, neg = jax.tree.map(jnp.add, *(jc.nndsvda_norms(S, V, a) for a in A))
        H0, ini = jc.nndsvda_dictionary(S, V, pos, neg, st.colsum.sum() / (st.n * 16))
        W0 = jnp.concatenate([jc.nndsvda_codes(ini, a) for a in A])
        d, Z, _ = jc.fit_nmf(X, 4, max_iter=0)
    assert _rel(H0, d.components) < 1e-10 and _rel(W0, Z) < 1e-10


@pytest.mark.slow
def test_four_devices_equal_one():
    code = textwrap.dedent("""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        import jaxviz.concepts as jc
        rng = np.random.default_rng(0)
        X = rng.random((301, 8)) @ rng.random((8, 20))
        assert len(jax.devices()) == 4
        for fit in (jc.fit_nmf, jc.fit_seminmf):
            Y = X if fit is jc.fit_nmf else X - X.mean(0)
            d1, z1, i1 = fit(Y, 5, max_iter=20, tol=0, batch_size=64)
            d4, z4, i4 = fit(Y, 5, max_iter=20, tol=0, batch_size=16, devices=4)
            r = max(np.abs(d1.components - d4.components).max() / np.abs(d1.components).max(),
                    np.abs(z1 - z4).max() / np.abs(z1).max())
            assert r < 1e-8, r
            assert abs(i1.reconstruction - i4.reconstruction) <= 1e-8 * i1.reconstruction
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_seminmf_objective_falls_and_codes_nonnegative():
    X = _data(seed=4)
    X = X - X.mean(0)
    errs = [float(jc.fit_seminmf(X, 5, max_iter=t, tol=0)[2].relative_error) for t in (1, 5, 30)]
    assert errs[0] > errs[1] > errs[2]
    d, Z, _ = jc.fit_seminmf(X, 5, max_iter=30, tol=0)
    assert float(Z.min()) >= 0 and float(d.components.min()) < 0


# ------------------------------------------------------------------------------------- implicit gradient


def _closed_form(D, a, z, l2):
    S = z > 0
    Ds = D[S]
    return Ds, np.linalg.inv(Ds @ Ds.T + l2 * np.eye(S.sum()))


@pytest.mark.parametrize("alpha_W", [0.0, 0.01])
def test_encode_gradient_is_closed_form_on_active_set(alpha_W):
    rng = np.random.default_rng(5)
    D = rng.random((6, 12))
    a = rng.random(12) * 2
    l1, l2 = jc.code_penalties(alpha_W, 0.5, 12)
    with jax.enable_x64(True):
        d = jc.Dictionary("nmf", jnp.asarray(D), alpha_W=alpha_W, l1_ratio=0.5, max_iter=5000, tol=1e-14)
        z = np.asarray(jc.encode(d, a))
        S = z > 0
        assert 0 < S.sum() < 6
        Ds, Minv = _closed_form(D, a, z, l2)
        np.testing.assert_allclose(z[S], Minv @ (Ds @ a - l1), rtol=1e-9)
        J = np.asarray(jax.jacrev(lambda x: jc.encode(d, x))(jnp.asarray(a)))  # K x C
        Jref = np.zeros((6, 12))
        Jref[S] = Minv @ Ds
        assert _rel(J, Jref) < 1e-5
        # gradient with respect to the dictionary, against central finite differences
        g = rng.standard_normal(6)
        f = lambda DD: jnp.dot(jc.encode(d._replace(components=DD), a), g)  # noqa: E731
        gD = np.asarray(jax.grad(f)(jnp.asarray(D)))
        E = rng.standard_normal(D.shape)
        h = 1e-6
        fd = (float(f(jnp.asarray(D + h * E))) - float(f(jnp.asarray(D - h * E)))) / (2 * h)
        assert abs(fd - (gD * E).sum()) < 1e-5 * max(1.0, abs(fd))
        fa = (np.asarray(jc.encode(d, a + h * np.eye(12)[3])) - np.asarray(jc.encode(d, a - h * np.eye(12)[3]))) / (2 * h)
        assert _rel(J[:, 3], fa) < 1e-5


# ------------------------------------------------------------------------------------- sparse autoencoders


def _np_topk(pre, k):
    out = np.zeros_like(pre)
    for i, row in enumerate(pre):
        idx = np.argsort(-row, kind="stable")[:k]
        out[i, idx] = np.maximum(row[idx], 0)
    return out


def _np_sae_mse(W_enc, b_enc, D, b_pre, x, k, batch):
    pre = (x - b_pre) @ W_enc + b_enc
    if batch:
        z = np.maximum(pre, 0)
        thr = np.sort(z.ravel())[::-1][k * len(x) - 1]
        z = np.where(z >= thr, z, 0)
    else:
        z = _np_topk(pre, k)
    err = x - (z @ D + b_pre)
    return (err ** 2).sum(-1).mean(), z


@pytest.mark.parametrize("method", ["topk-sae", "batchtopk-sae"])
def test_sae_forward_and_gradients_equal_numpy(method):
    rng = np.random.default_rng(6)
    C, K, k, n = 7, 12, 3, 10
    W_enc, b_enc = rng.standard_normal((C, K)), rng.standard_normal(K) * 0.1
    D, b_pre, x = rng.standard_normal((K, C)), rng.standard_normal(C) * 0.1, rng.standard_normal((n, C))
    batch = method == "batchtopk-sae"
    with jax.enable_x64(True):
        params = jc.SAEParams(*(jnp.asarray(v) for v in (W_enc, b_enc, D, b_pre)))
        state = jc.SAEState(jnp.zeros(K, jnp.int32), jnp.asarray(-1.0))
        loss, (z, *_ ) = jc.sae_loss(params, state, jnp.asarray(x), k=k, method=method)
        g = jax.grad(lambda p: jc.sae_loss(p, state, jnp.asarray(x), k=k, method=method)[0])(params)
    ref, zref = _np_sae_mse(W_enc, b_enc, D, b_pre, x, k, batch)
    assert abs(float(loss) - ref) < 1e-10 * ref
    np.testing.assert_allclose(np.asarray(z), zref, atol=1e-12)
    # hand-written gradients of mean ||x - (z D + b_pre)||² with the kept set fixed
    err = x - (zref @ D + b_pre)
    gz = -2 * err @ D.T / n * (zref > 0)
    np.testing.assert_allclose(np.asarray(g.decoder), -2 * zref.T @ err / n, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g.encoder), (x - b_pre).T @ gz, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g.encoder_bias), gz.sum(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g.pre_bias), -2 * err.sum(0) / n - W_enc @ gz.sum(0),
                               rtol=1e-9, atol=1e-12)


def test_sae_train_step_keeps_unit_decoder_and_counts_dead():
    import optax

    key = jax.random.key(0)
    x = jax.random.normal(key, (64, 8))
    params, state = jc.sae_init(key, 8, 16)
    opt = optax.adam(1e-2)
    os_ = opt.init(params)
    params, os_, state, m = jc.sae_train_step(params, os_, x, state, optimizer=opt, k=2, method="batchtopk-sae")
    np.testing.assert_allclose(np.linalg.norm(params.decoder, axis=1), 1, rtol=1e-5)
    assert float(state.threshold) > 0
    assert (np.asarray(state.since_fired) >= 0).all()
    d = jc.sae_dictionary(params, state, k=2, method="batchtopk-sae")
    z = np.asarray(jc.encode(d, x))
    assert ((z == 0) | (z >= float(state.threshold))).all()


# ------------------------------------------------------------------------------------- quality


def test_quality_definitions():
    X = _data(n=200)
    d, Z, info = jc.fit_nmf(X.astype(np.float32), 5, max_iter=30)
    q = jc.quality(d, X.astype(np.float32), Z)
    rec = np.asarray(Z) @ np.asarray(d.components)
    assert abs(q["relative_error"] - np.linalg.norm(X - rec) / np.linalg.norm(X)) < 1e-5
    assert abs(q["r2_per_feature"] - r2_score(X, rec)) < 1e-4
    assert abs(q["r2_global"] - (1 - ((X - rec) ** 2).sum() / ((X - X.mean()) ** 2).sum())) < 1e-4
    assert abs(q["l0"] - (np.asarray(Z) > 0).sum(1).mean()) < 1e-5
    # streamed: stats of two halves summed equal the whole
    s = jax.tree.map(jnp.add, jc.quality_stats(d, X[:90], Z[:90]), jc.quality_stats(d, X[90:], Z[90:]))
    qs = jc.quality(d, s)
    assert all(abs(qs[k] - q[k]) < 1e-4 for k in q)
    dead = d._replace(components=d.components.at[0].set(0.0))
    assert jc.quality(dead, X.astype(np.float32))["dead"] >= 1


def test_stability_hungarian():
    rng = np.random.default_rng(7)
    D = rng.random((5, 9))
    perm = np.array([3, 0, 4, 1, 2])
    m, order = jc.match_cosine(D, D[perm])
    assert abs(m - 1) < 1e-12 and (perm[order] == np.arange(5)).all()
    X = _data(n=400)
    s = jc.stability(lambda a: jc.fit_nmf(a, 3, max_iter=100)[0], X.astype(np.float32), jax.random.key(0))
    assert 0.9 < s <= 1.0 + 1e-6
