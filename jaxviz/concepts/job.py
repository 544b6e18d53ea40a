"""The concepts job on the shared engine (:mod:`jaxviz.methods.engine`): a dictionary fitted over a whole
collection in passes, then one pass for codes, quality, importance, faithfulness and exemplars.

Passes (each a stream of the collection, jitted per batch and sharded over the local devices with the
sums ``psum``-ed; at each pass's end the sums are reduced over the processes with ``ctx.gather``):

- NMF / semi-NMF: pass 0 the streamed SVD statistics (Gram, column sums, count) of each fit's
  rows; NMF pass 1 the ``nndsvda`` norms (semi-NMF starts from :func:`~jaxviz.concepts.seminmf_init` and pass 1 is an
  iteration); then ``iterations`` passes, each re-solving every batch's codes from the current
  dictionary (:func:`~jaxviz.concepts.nnls_solve`, the memory rule: codes are never kept) and summing
  ``ZᵀZ`` and ``ZᵀA`` for the dictionary step. Two more dictionaries are fitted beside, on the
  even- and odd-indexed images (the two halves for ``stability``).
- Top-K / BatchTopK SAE: pass 0 the mean row (the pre-bias), then ``iterations`` epochs of
  :func:`~jaxviz.concepts.sae_train_step` over each batch's rows, data-parallel (gradients ``pmean``-ed
  over devices; over processes the weights are averaged at each epoch's end). Stability: two SAEs on
  the halves, the same way.
- the last pass: codes of every image, ``mean_code``/``max_code``, the quality sums, each image's
  strongest position per concept (exemplars), and for the first ``importance_images`` images of each
  process the importance of each class asked and the faithfulness scores.

Every state is plain arrays, so ``--resume`` after any interruption ends with exactly the
uninterrupted result (the engine's checkpoint).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxviz.concepts import (Dictionary, NMFReg, QualityStats, encode, match_cosine, nmf_dictionary_step,
                             nmf_stats, nndsvda_dictionary, nndsvda_norms, nnls_solve, quality_from_stats,
                             quality_stats, sae_init, sae_train_step, seminmf_dictionary_step, seminmf_init,
                             svd_stats, top_singular)
from jaxviz.concepts import faithfulness as cfaith
from jaxviz.concepts import importance as cimp
from jaxviz.concepts.rows import check_positive, crop_boxes, layer_rows
from jaxviz.errors import JaxvizError, unknown
from jaxviz.methods import engine
from jaxviz.methods.sharding import AXIS, shard_batch
from jaxviz.nn.jit import jit
from jaxviz.nn.preprocess import preprocess
from jaxviz.nn.receptive import field_boxes, receptive_field

FITS = ("full", "even", "odd")


class ConceptsResult(NamedTuple):
    """What :func:`find_concepts` returns.

    Attributes:
      paths: the collection's items.
      layer, method: as asked.
      dictionary: the fitted :class:`~jaxviz.concepts.Dictionary` (full collection).
      mean_code, max_code: K each, over every position of every image.
      quality: ``relative_error``, ``r2`` (global-mean form, as ``overcomplete``), ``r2_per_feature``
        (scikit-learn's), ``l0``, ``hoyer``, ``dead``, ``collinearity``, ``stability``.
      importance: ``{class: {"per_image": N_c x K, "images": N_c indices, "mean", "prevalence",
        "reliability"}}`` over the images predicted as that class (among the first
        ``importance_images`` of each process); a class no such image is predicted as is absent.
      faithfulness: ``{class: {"c-deletion": mean, "c-deletion/random": mean, ...}}`` over the same
        images (NaN where there is none).
      exemplars: ``indices`` (K x k item indices, -1 none), ``values`` (K x k), ``peaks`` (K x k x 2:
        holistic, the layer-grid row and column of the image's strongest position; crops, the row and
        column of its strongest crop in the grid of crops) and ``boxes`` (K x k x 4 input pixels, top,
        left, bottom, right: holistic, that position's receptive field; crops, the crop) of each
        concept's strongest images.
      failures: undecodable items.
      crops: the crops' size in pixels (CRAFT rows), or None (holistic).
    """

    paths: list
    layer: str
    method: str
    dictionary: Dictionary
    mean_code: np.ndarray
    max_code: np.ndarray
    quality: dict
    importance: dict
    faithfulness: dict
    exemplars: dict
    failures: list
    crops: int | None = None


def _tree_arrays(prefix: str, tree) -> dict:
    return {f"{prefix}/{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(tree))}


def _tree_from(prefix: str, like, arrays: dict):
    leaves, treedef = jax.tree_util.tree_flatten(like)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(arrays[f"{prefix}/{i}"]) for i in range(len(leaves))])


def concepts_job(model, params, layer: str, k: int, *, method: str = "nmf", shape: Sequence[int],
                 crops: int | None = None, classes: Sequence[int] = (), importance: str = "sobol",
                 iterations: int = 20, importance_images: int = 64, exemplars: int = 6, sae_k: int | None = None,
                 learning_rate: float = 1e-3, seed: int = 0, nb_design: int = cimp.NB_DESIGN,
                 mesh=None) -> engine.Job:
    """The :class:`~jaxviz.methods.engine.Job` of :func:`find_concepts` (module docstring)."""
    from jaxviz.concepts import METHODS

    if method not in METHODS:
        raise unknown("method", method, METHODS)
    if importance not in cimp.IMPORTANCE:
        raise unknown("importance", importance, tuple(cimp.IMPORTANCE))
    if not 1 <= int(k) <= 4096:
        raise JaxvizError(f"k must be between 1 and 4096, got {k}")
    mesh = mesh if mesh is not None else engine.local_mesh()
    layer = model.resolve(layer)
    shape = tuple(int(v) for v in shape)
    dims = dict(model.shapes(shape))
    lshape = dims[layer]
    if len(lshape) != 3:
        raise JaxvizError(f"layer {layer!r} is not spatial ({lshape}); choose a convolutional layer")
    C = int(lshape[-1])
    K = int(k)
    classes = tuple(int(c) for c in classes)
    boxes = crop_boxes(shape[0], shape[1], int(crops)) if crops else None
    mode = "crops" if crops else "holistic"
    sae = method.endswith("sae")
    sae_k = int(sae_k or max(1, K // 4))
    fit_passes = 1 + int(iterations) + (0 if sae else 1)
    passes = fit_passes + 1
    key = jax.random.key(seed)
    import optax

    opt = optax.adam(learning_rate)

    def rows_of(x, valid):
        """rows (n x C) and their mask and image parity."""
        a = layer_rows(model, params, layer, preprocess(x, model.preprocessing), mode, boxes)
        per = a.reshape(a.shape[0], -1, C)
        m = jnp.broadcast_to(valid[:, None], per.shape[:2])
        return per.reshape(-1, C).astype(jnp.float32), m.reshape(-1)

    def sharded(local, n_rep):
        spec = (P(AXIS), P(AXIS), P(AXIS)) + (P(),) * n_rep
        return jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=P(), check_vma=False))

    # ---- steps (each one jit, psum over the devices)
    def half_masks(m, idx):
        per = m.reshape(idx.shape[0], -1)
        ev = (idx % 2 == 0)[:, None] & per
        od = (idx % 2 == 1)[:, None] & per
        return (m, ev.reshape(-1), od.reshape(-1))

    def svd_local(x, valid, idx):
        """The SVD statistics of each fit's rows (full, even, odd): each half starts from its own
        ``nndsvda``, so the stability compares two independent fits."""
        a, m = rows_of(x, valid)
        sts = [svd_stats(a, mm) for mm in half_masks(m, idx)]
        return jax.tree.map(lambda v: jax.lax.psum(v, AXIS), ([(q.gram, q.colsum, q.n) for q in sts],
                                                               jnp.min(jnp.where(m[:, None], a, 0.0))))

    svd_step = sharded(svd_local, 0)

    def norms_local(x, valid, idx, S, V):
        a, m = rows_of(x, valid)
        out = [nndsvda_norms(S[f], V[f], a, mm) for f, mm in enumerate(half_masks(m, idx))]
        return jax.tree.map(lambda v: jax.lax.psum(v, AXIS), out)

    norms_step = sharded(norms_local, 2)

    def iter_local(x, valid, idx, Hs):
        a, m = rows_of(x, valid)
        out = []
        for H, mm in zip(Hs, half_masks(m, idx)):
            W = jnp.where(mm[:, None], nnls_solve(H, a, max_iter=200, tol=1e-4), 0.0)
            WtW, WtA = nmf_stats(W, a)
            r = jnp.where(mm[:, None], a - W @ H, 0.0)
            out.append((WtW, WtA, jnp.sum(mm).astype(jnp.float32), jnp.sum(r * r)))
        return jax.tree.map(lambda v: jax.lax.psum(v, AXIS), out)

    iter_step = sharded(iter_local, 1)

    def mean_local(x, valid, idx):
        a, m = rows_of(x, valid)
        return jax.tree.map(lambda v: jax.lax.psum(v, AXIS), (jnp.sum(jnp.where(m[:, None], a, 0.0), 0),
                                                               jnp.sum(m).astype(jnp.float32)))

    mean_step = sharded(mean_local, 0)

    def train_local(x, valid, idx, ps, os_, ss):
        a, m = rows_of(x, valid)
        out = []
        for p, o, s, mm in zip(ps, os_, ss, half_masks(m, idx)):
            rows = jnp.where(mm[:, None], a, p.pre_bias)  # padding / other half: the pre-bias
            p, o, s, _ = sae_train_step(p, o, rows, s, optimizer=opt, k=sae_k, method=method, axis_name=AXIS)
            out.append((p, o, s))
        return out

    train_step = jit(jax.shard_map(train_local, mesh=mesh, in_specs=(P(AXIS),) * 3 + (P(),) * 3,
                                   out_specs=P(), check_vma=False))

    def final_local(x, valid, idx, d):
        a, m = rows_of(x, valid)
        z = encode(d, a)
        z = jnp.where(m[:, None], z, 0.0)
        qs = quality_stats(d, a, z, m)
        n = x.shape[0]
        zi = z.reshape(n, -1, K)
        best = jnp.max(zi, 1)
        pos = jnp.argmax(zi, 1).astype(jnp.int32)
        sums = jax.tree.map(lambda v: jax.lax.psum(v, AXIS), (qs, jnp.sum(z, 0)))
        mx = jax.lax.pmax(jnp.max(z, 0), AXIS)
        return sums, mx, best, pos

    final_step = jit(jax.shard_map(final_local, mesh=mesh, in_specs=(P(AXIS),) * 3 + (P(),),
                                   out_specs=(P(), P(), P(AXIS), P(AXIS)), check_vma=False))

    def imp_local(x, valid, idx, d, fkey):
        xp = preprocess(x, model.preprocessing)
        out = model.run(params, xp, taps=[layer])
        pred = jnp.argmax(out.logits, -1).astype(jnp.int32)
        z = jax.lax.stop_gradient(encode(d, out.taps[layer]))
        res = {"pred": pred}
        for c in classes:
            cls = jnp.full((x.shape[0],), c, jnp.int32)
            head = cimp.concept_head(model, params, layer, d, xp, cls)
            if importance == "sobol":
                imp = cimp.sobol_total(head, z, nb_design)
            elif importance == "gradient":
                imp = cimp.gradient_importance(head, z)
            else:
                imp = cimp.occlusion_importance(head, z)
            res[f"imp/{c}"] = imp
            for name, v in cfaith.faithfulness(head, z, imp, jax.random.fold_in(fkey, c)).items():
                res[f"faith/{name}/{c}"] = v
        return res

    imp_step = jit(jax.shard_map(imp_local, mesh=mesh, in_specs=(P(AXIS),) * 3 + (P(), P()),
                                 out_specs=P(AXIS), check_vma=False))

    # ---- state
    dt = np.float32

    def nmf_init_state():
        return {"H": np.zeros((3, K, C), dt), "gram": np.zeros((3, C, C), np.float64),
                "colsum": np.zeros((3, C), np.float64), "n3": np.zeros(3, np.float64), "n": np.float64(0),
                "min": np.float64(np.inf), "norms": np.zeros((3, 2, K), np.float64),
                "WtW": np.zeros((3, K, K), np.float64), "WtA": np.zeros((3, K, C), np.float64),
                "nrows": np.zeros(3, np.float64), "res": np.zeros(3, np.float64),
                "S": np.zeros((3, K), dt), "V": np.zeros((3, K, C), dt)}

    def sae_template():
        p, s = sae_init(key, C, K)
        return p, opt.init(p), s

    def init(ctx):
        st = nmf_init_state()
        if sae:
            st["sum"] = np.zeros(C, np.float64)
            for f in FITS:
                p, o, s = sae_template()
                st.update(_tree_arrays(f"sae/{f}", (p, o, s)))
        st.update(final_init())
        return st

    def final_init():
        return {"q": np.zeros(0), "zsum": np.zeros(K, np.float64), "zmax": np.zeros(K, np.float64),
                "done_imp": np.int64(0)}

    def dictionary(st, fit=0) -> Dictionary:
        if sae:
            p, o, s = _tree_from(f"sae/{FITS[fit]}", sae_template(), st)
            from jaxviz.concepts import sae_dictionary

            return sae_dictionary(p, s, k=sae_k, method=method)
        return Dictionary(method, jnp.asarray(st["H"][fit]))

    def update(st, batch, ctx):
        p = ctx.pass_index
        st = dict(st)
        x, valid, idx = shard_batch(ctx.mesh, batch.pixels, batch.valid, np.maximum(batch.indices, 0))
        if p == 0:
            if sae:
                s, n = mean_step(x, valid, idx)
                st["sum"] = st["sum"] + np.asarray(s, np.float64)
                st["n"] = st["n"] + float(n)
            else:
                sts, mn = svd_step(x, valid, idx)
                st["gram"] = st["gram"] + np.stack([np.asarray(q[0], np.float64) for q in sts])
                st["colsum"] = st["colsum"] + np.stack([np.asarray(q[1], np.float64) for q in sts])
                st["n3"] = st["n3"] + np.array([float(q[2]) for q in sts])
                st["min"] = min(float(st["min"]), float(mn))
        elif p < fit_passes:
            if sae:
                tpl = sae_template()
                trees = [_tree_from(f"sae/{f}", tpl, st) for f in FITS]
                out = train_step(x, valid, idx, *[[t[i] for t in trees] for i in range(3)])
                for f, t in zip(FITS, out):
                    st.update(_tree_arrays(f"sae/{f}", t))
            elif method == "nmf" and p == 1:
                S, V = jnp.asarray(st["S"]), jnp.asarray(st["V"])
                out = norms_step(x, valid, idx, S, V)
                st["norms"] = st["norms"] + np.array([[np.asarray(a), np.asarray(b)] for a, b in out], np.float64)
            else:
                out = iter_step(x, valid, idx, [jnp.asarray(h) for h in st["H"]])
                st["WtW"] = st["WtW"] + np.stack([np.asarray(o[0], np.float64) for o in out])
                st["WtA"] = st["WtA"] + np.stack([np.asarray(o[1], np.float64) for o in out])
                st["nrows"] = st["nrows"] + np.array([float(o[2]) for o in out])
                st["res"] = st["res"] + np.array([float(o[3]) for o in out])
        else:
            d = dictionary(st)
            (qs, zs), mx, best, pos = final_step(x, valid, idx, d)
            q = np.concatenate([np.atleast_1d(np.asarray(v, np.float64)) for v in qs])
            st["q"] = q if st["q"].size == 0 else st["q"] + q
            st["zsum"] = st["zsum"] + np.asarray(zs, np.float64)
            st["zmax"] = np.maximum(st["zmax"], np.asarray(mx, np.float64))
            v = np.asarray(batch.valid)
            rows = {"index": np.asarray(batch.indices)[v], "best": np.asarray(best)[v], "pos": np.asarray(pos)[v]}
            if int(st["done_imp"]) < importance_images:
                res = imp_step(x, valid, idx, d, jax.random.fold_in(key, 7))
                take = v.copy()
                room = importance_images - int(st["done_imp"])
                take[np.cumsum(take) > room] = False
                st["done_imp"] = np.int64(int(st["done_imp"]) + int(take.sum()))
                rows["imp_mask"] = take[v]
                for name, arr in res.items():
                    rows[name] = np.asarray(arr)[v]
            else:
                n = int(v.sum())
                rows["imp_mask"] = np.zeros(n, bool)
                rows["pred"] = np.zeros(n, np.int32)
                for c in classes:
                    rows[f"imp/{c}"] = np.zeros((n, K), np.float32)
                    for name in ("c-deletion", "c-insertion", "c-mufidelity"):
                        for suffix in ("", "/random"):
                            rows[f"faith/{name}{suffix}/{c}"] = np.zeros(n, np.float32)
            return st, rows
        return st, None

    def to_arrays(st):
        return {k: np.asarray(v) for k, v in st.items()}

    def from_arrays(arrays, ctx):
        return {k: np.asarray(v) for k, v in arrays.items()}

    def end_pass(st, rows, ctx):
        p = ctx.pass_index
        st = dict(st)
        if p >= fit_passes:
            return st
        if p == 0 and sae:
            tot = engine.sum_arrays(ctx.gather({"sum": st["sum"], "n": np.asarray(st["n"])}))
            mean = (tot["sum"] / max(float(tot["n"]), 1.0)).astype(dt)
            for f in FITS:
                pp, o, s = _tree_from(f"sae/{f}", sae_template(), st)
                pp = pp._replace(pre_bias=jnp.asarray(mean))
                st.update(_tree_arrays(f"sae/{f}", (pp, opt.init(pp), s)))
            st["sum"], st["n"] = np.zeros(C, np.float64), np.float64(0)
            return st
        if sae:  # average every process's weights (one process: as is)
            parts = ctx.gather({k: v for k, v in st.items() if k.startswith("sae/")})
            if len(parts) > 1:
                for k_ in parts[0]:
                    st[k_] = (np.mean([q[k_] for q in parts], 0)).astype(parts[0][k_].dtype)
            return st
        if p == 0:
            tot = engine.sum_arrays(ctx.gather({"gram": st["gram"], "colsum": st["colsum"], "n3": st["n3"]}))
            mins = [float(q["min"]) for q in ctx.gather({"min": np.asarray(st["min"])})]
            check_positive(min(mins), method, layer)
            from jaxviz.concepts import SVDStats

            Ss, Vs, Hs = [], [], []
            for f in range(3):  # each fit (full, even, odd) from its own rows' SVD
                stats = SVDStats(jnp.asarray(tot["gram"][f], jnp.float32), jnp.asarray(tot["colsum"][f], jnp.float32),
                                 jnp.asarray(tot["n3"][f], jnp.float32))
                S, V = top_singular(stats, K)
                Ss.append(np.asarray(S, dt))
                Vs.append(np.asarray(V, dt))
                if method == "seminmf":
                    Hs.append(np.asarray(seminmf_init(S, V, stats.colsum), dt))
            st["S"], st["V"] = np.stack(Ss), np.stack(Vs)
            st["n_all"] = np.float64(tot["n3"][0])
            st["mean_all"] = (tot["colsum"].sum(1) / np.maximum(tot["n3"] * C, 1.0)).astype(np.float64)
            if method == "seminmf":
                st["H"] = np.stack(Hs)
            return st
        if method == "nmf" and p == 1:
            norms = engine.sum_arrays(ctx.gather({"norms": st["norms"]}))["norms"]
            Hs = []
            for f in range(3):
                H0, _ = nndsvda_dictionary(jnp.asarray(st["S"][f]), jnp.asarray(st["V"][f]),
                                           jnp.asarray(norms[f, 0], dt), jnp.asarray(norms[f, 1], dt),
                                           jnp.asarray(st["mean_all"][f], dt))
                Hs.append(np.asarray(H0, dt))
            st["H"] = np.stack(Hs)
            return st
        tot = engine.sum_arrays(ctx.gather({"WtW": st["WtW"], "WtA": st["WtA"], "nrows": st["nrows"], "res": st["res"]}))
        Hs = []
        for f in range(3):
            WtW, WtA = jnp.asarray(tot["WtW"][f], dt), jnp.asarray(tot["WtA"][f], dt)
            if method == "nmf":
                Hs.append(np.asarray(nmf_dictionary_step(jnp.asarray(st["H"][f]), WtW, WtA, NMFReg(), 1), dt))
            else:
                Hs.append(np.asarray(seminmf_dictionary_step(WtW, WtA, NMFReg(), 1), dt))
        st["H"] = np.stack(Hs)
        st["objective"] = 0.5 * tot["res"]
        for name in ("WtW", "WtA", "nrows", "res"):
            st[name] = np.zeros_like(st[name])
        return st

    def merge(parts, ctx):
        out = dict(parts[0])
        q = [p["q"] for p in parts if p["q"].size]
        out["q"] = np.sum(q, 0) if q else parts[0]["q"]
        out["zsum"] = np.sum([p["zsum"] for p in parts], 0)
        out["zmax"] = np.max([p["zmax"] for p in parts], 0)
        return out

    settings = {"layer": layer, "k": K, "method": method, "crops": crops, "classes": list(classes),
                "importance": importance, "iterations": int(iterations), "importance_images": int(importance_images),
                "sae_k": sae_k, "lr": learning_rate, "seed": seed, "nb_design": nb_design,
                "weights": engine.digest(params)}
    job = engine.Job("concepts", settings, init, update, to_arrays, from_arrays, merge, passes, end_pass)
    return job, dictionary, exemplars, K, C


def find_concepts(model, params, images: Any, layer: str, k: int, *, method: str = "nmf",
                  input_shape: Sequence[int] | None = None, crops: int | None = None, classes: Sequence[int] = (),
                  importance: str = "sobol", iterations: int = 20, importance_images: int = 64,
                  exemplars: int = 6, batch_size: int = 32, checkpoint=None, resume: bool = False,
                  checkpoint_every: int = 100, checkpoint_seconds: float = 60.0, workers: int | None = None,
                  max_failures: float = 0.05, on_batch=None, seed: int = 0, devices=None,
                  nb_design: int = cimp.NB_DESIGN) -> ConceptsResult:
    """Concepts of ``layer`` over the collection ``images``: a dictionary of ``k`` concepts by ``method``
    (``nmf`` | ``seminmf`` | ``topk-sae`` | ``batchtopk-sae``) fitted over every image (holistic rows, or
    CRAFT crops of ``crops`` pixels), its quality and stability, the importance of each concept for
    each of ``classes`` (``sobol`` | ``gradient`` | ``occlusion``), the concept faithfulness and the
    exemplars. Streamed and resumable on the shared engine (module docstring)."""
    shape = tuple(int(v) for v in (input_shape or model.input_shape))
    mesh = engine.local_mesh(devices)
    job, dictionary, n_ex, K, C = concepts_job(
        model, params, layer, k, method=method, shape=shape, crops=crops, classes=classes, importance=importance,
        iterations=iterations, importance_images=importance_images, exemplars=exemplars, seed=seed,
        nb_design=nb_design, mesh=mesh)
    out = engine.run_job(job, images, shape=shape, batch_size=batch_size, devices=devices, checkpoint=checkpoint,
                         resume=resume, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                         workers=workers, max_failures=max_failures, on_batch=on_batch, what="concepts settings")
    st = out.arrays
    d = dictionary(st)
    qsizes = [1, C, C, C, 1, 1, K]
    parts = np.split(st["q"], np.cumsum(qsizes)[:-1])
    qs = QualityStats(*(jnp.asarray(p if s > 1 else p[0], jnp.float32) for p, s in zip(parts, qsizes)))
    qd = {k_: float(v) for k_, v in quality_from_stats(qs, d).items()}
    qd["r2"] = qd.pop("r2_global")
    qd["dead"] = int(qd["dead"])
    qd["stability"] = match_cosine(np.asarray(dictionary(st, 1).components), np.asarray(dictionary(st, 2).components))[0]
    if "objective" in st:
        qd["objective"] = float(np.asarray(st["objective"]).ravel()[0])
    n = max(float(qs.n), 1.0)
    rows = out.rows
    layer = model.resolve(layer)
    imp, faith = {}, {}
    if rows and "pred" in rows:
        sel_all = rows["imp_mask"].astype(bool)
        for c in classes:
            sel = sel_all & (rows["pred"] == c)
            if sel.any():  # a class no image is predicted as has no importance (not zeros)
                per = rows[f"imp/{c}"][sel]
                imp[c] = {"per_image": per, "images": rows["index"][sel], **cimp.summarise(per)}
            faith[c] = {name[len("faith/"):-len(f"/{c}")]: float(np.mean(rows[name][sel])) if sel.any() else float("nan")
                        for name in rows if name.startswith("faith/") and name.endswith(f"/{c}")}
    ex = _exemplars(rows, K, exemplars, model, params, layer, shape, crops)
    return ConceptsResult(out.paths, layer, method, d, (st["zsum"] / n).astype(np.float32),
                          st["zmax"].astype(np.float32), qd, imp, faith, ex, out.failures,
                          int(crops) if crops else None)


def _exemplars(rows, K, k, model, params, layer, shape, crops) -> dict:
    """The strongest images of each concept, where in them (``peaks``) and the input box (``boxes``). The
    step's argmax runs over the rows of an image: its layer-grid positions (holistic) or its crops."""
    idx = np.full((K, k), -1, np.int64)
    val = np.zeros((K, k), np.float32)
    pos = np.zeros((K, k), np.int64)
    if rows and len(rows.get("index", [])):
        best, index = rows["best"], rows["index"]
        for c in range(K):
            order = np.argsort(-best[:, c], kind="stable")[:k]
            order = order[best[order, c] > 0]
            idx[c, :len(order)] = index[order]
            val[c, :len(order)] = best[order, c]
            pos[c, :len(order)] = rows["pos"][order, c]
    if crops:
        all_boxes = crop_boxes(shape[0], shape[1], int(crops))
        cols = len(np.unique(all_boxes[:, 1]))
        boxes = all_boxes[pos]
    else:
        cols = dict(model.shapes(shape))[layer][1]
    peaks = np.stack([pos // cols, pos % cols], -1).astype(np.int32)
    if not crops:
        boxes = field_boxes(receptive_field(model, layer, shape, params=params), peaks, shape[:2])
    return {"indices": idx, "values": val, "peaks": peaks, "boxes": boxes.astype(np.int32)}
