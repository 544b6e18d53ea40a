"""Concept importance (Sobol / gradient / occlusion), faithfulness, rows: against analytic values,
plain Python loops and hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz.concepts import Dictionary, decode, encode
from jaxviz.concepts import faithfulness as cf
from jaxviz.concepts import importance as ci
from jaxviz.concepts.rows import crop_boxes, layer_rows
from jaxviz.io import datasets
from jaxviz.nn.preprocess import preprocess

LAYER = "conv2d_1"


@pytest.fixture(scope="module")
def digits():
    L = jaxviz.load_model("digits_cnn", "builtin")
    x, y = datasets.digits()
    return L.model, L.params, preprocess(jnp.asarray(x[:64], jnp.float32), L.model.preprocessing), y[:64]


def _dictionary(model, params, x, k=4):
    a = np.asarray(layer_rows(model, params, LAYER, x[:16])).reshape(-1, 64)
    d, _, _ = jaxviz.concepts.fit_nmf(a, k, max_iter=50, batch_size=4096)
    return d


def test_halton_design_is_crafts():
    m = ci.halton_design(3, 8)
    assert m.shape == (8 * 5, 3)
    a, b, c = m[:8], m[8:16], m[16:].reshape(3, 8, 3)
    for i in range(3):
        expect = a.copy()
        expect[:, i] = b[:, i]
        np.testing.assert_array_equal(c[i], expect)
    # unscrambled Halton: first point 0, bases 2, 3, 5, ...
    np.testing.assert_allclose(a[1], [1 / 2, 1 / 3, 1 / 5], rtol=1e-6)


def test_sobol_total_of_ishigami_within_monte_carlo_error():
    a_, b_ = 7.0, 0.1

    def head(u):  # u: n x 3 masks in [0, 1) -> Ishigami on [-pi, pi]^3
        x = -np.pi + 2 * np.pi * u
        return jnp.sin(x[:, 0]) + a_ * jnp.sin(x[:, 1]) ** 2 + b_ * x[:, 2] ** 4 * jnp.sin(x[:, 0])

    st = np.asarray(ci.sobol_total(head, jnp.ones((1, 3)), nb_design=4096, chunk=4096))[0]
    v = a_ ** 2 / 8 + b_ * np.pi ** 4 / 5 + b_ ** 2 * np.pi ** 8 / 18 + 0.5
    v1 = 0.5 * (1 + b_ * np.pi ** 4 / 5) ** 2
    v13 = b_ ** 2 * np.pi ** 8 * (1 / 18 - 1 / 50)
    expect = np.array([(v1 + v13) / v, (a_ ** 2 / 8) / v, v13 / v])  # 0.558, 0.442, 0.244
    np.testing.assert_allclose(st, expect, atol=0.03)


def test_sobol_importance_equals_plain_loop(digits):
    model, params, x, y = digits
    d = _dictionary(model, params, x)
    xs, cls = x[:2], jnp.asarray(y[:2])
    got = np.asarray(jax.jit(lambda x, c: ci.importance(model, params, LAYER, d, x, c, "sobol", nb_design=8,
                                                        chunk=5))(xs, cls))
    masks = ci.halton_design(4, 8)
    for i in range(2):
        a = model.run(params, xs[i:i + 1], taps=[LAYER], output=False).taps[LAYER]
        u = encode(d, a)
        outs = []
        for m in masks:  # one forward per design point
            pert = decode(d, u * m) - a
            logits = model.run(params, xs[i:i + 1], perturb={LAYER: pert}).logits
            outs.append(float(jax.nn.softmax(logits[0])[int(y[i])]))
        outs = np.array(outs, np.float64)
        fa, fc = outs[:8], outs[16:].reshape(4, 8)
        st = ((fa - fc) ** 2).sum(1) / (2 * 8 * max(np.var(fa, ddof=1), 1e-12))
        np.testing.assert_allclose(got[i], st, atol=1e-5 * max(1, np.abs(st).max()), rtol=1e-4)


def test_gradient_and_occlusion_by_hand():
    W = jnp.array([[1.0, -2.0, 0.5], [0.3, 0.0, 2.0]])  # K=3 -> 2 outputs, head = softplus of a linear map

    def head(u):
        return jax.nn.softplus(jnp.sum(u, axis=(1, 2)) @ W.T)[:, 0] * 1.0 + 0.1 * jnp.sum(u[..., 2] ** 2, (1, 2))

    u = jnp.abs(jax.random.normal(jax.random.key(0), (2, 3, 3, 3)))
    g = np.asarray(ci.gradient_importance(head, u))
    s = np.asarray(u.sum((1, 2)))
    z = s @ np.asarray(W[0])
    dsig = 1 / (1 + np.exp(-z))
    expect = np.asarray(u).reshape(2, -1, 3).copy()
    grad = np.asarray(W[0])[None, None, :] * dsig[:, None, None] + np.stack(
        [0 * expect[..., 0], 0 * expect[..., 1], 0.2 * expect[..., 2]], -1)
    np.testing.assert_allclose(g, (grad * expect).sum(1), rtol=1e-5)
    occ = np.asarray(ci.occlusion_importance(head, u, chunk=2))
    full = np.asarray(head(u))
    for k in range(3):
        np.testing.assert_allclose(occ[:, k], full - np.asarray(head(u.at[..., k].set(0))), rtol=1e-5, atol=1e-6)


def test_c_curves_by_hand():
    def head(u):  # score = sum of codes (B x K)
        return jnp.sum(u, -1)

    u = jnp.array([[3.0, 1.0, 2.0]])
    imp = jnp.array([[0.1, 0.9, 0.5]])  # order 1, 2, 0
    np.testing.assert_allclose(cf.c_curve(head, u, imp), [[6, 5, 3, 0]])
    np.testing.assert_allclose(cf.c_curve(head, u, imp, insert=True), [[0, 1, 3, 6]])
    np.testing.assert_allclose(cf.c_deletion(head, u, imp), [(6 + 2 * 5 + 2 * 3 + 0) / 6])
    # importance equal to each concept's own contribution: μFidelity is 1
    mu = cf.c_mufidelity(head, u, u, jax.random.key(1), subsets=16)
    np.testing.assert_allclose(mu, [1.0], atol=1e-6)


def test_c_deletion_of_trained_model_beats_random(digits):
    model, params, x, y = digits
    d = _dictionary(model, params, x, k=6)
    xs, cls = x[:24], jnp.asarray(y[:24])

    @jax.jit
    def run(x, c):
        a = model.run(params, x, taps=[LAYER], output=False).taps[LAYER]
        u = encode(d, a)
        head = ci.concept_head(model, params, LAYER, d, x, c)
        imp = ci.gradient_importance(head, u)
        return cf.faithfulness(head, u, imp, jax.random.key(0))

    f = {k: float(np.mean(v)) for k, v in run(xs, cls).items()}
    assert f["c-deletion"] < f["c-deletion/random"]
    assert f["c-insertion"] > f["c-insertion/random"]


def test_crop_boxes():
    b = crop_boxes(28, 28, 10)
    assert b[0].tolist() == [0, 0, 10, 10] and b[-1].tolist() == [18, 18, 28, 28]
    starts = sorted(set(b[:, 0].tolist()))
    assert starts == [0, 8, 16, 18]
    # CRAFT's stride, int(patch_size * 0.80): 16 -> 12 (not 13), 32 -> 25 (not 26)
    for size, stride in ((16, 12), (32, 25), (64, 51)):
        b = crop_boxes(224, 224, size)
        assert sorted(set(b[:, 0].tolist()))[1] == stride


def test_crops_exemplars_are_their_strongest_crop(digits):
    """Crops mode (CRAFT rows): each exemplar's box is the crop whose code for the concept is the image's
    largest, recomputed here from layer_rows' crop rows (the step's argmax runs over crops: it once was
    read as a layer-grid position, putting every box on the grid's first row); its peak is the crop's row
    and column in the grid of crops; the page overlays the crop's own code map, equal to the crop rows'
    path (rows.crops) resized back to the crop."""
    from jaxviz.cli.concepts import render_html
    from jaxviz.concepts.job import find_concepts
    from jaxviz.concepts.maps import crop_code_maps
    from jaxviz.concepts.rows import crops
    from jaxviz.methods.metrics import resize_linear

    m, p, x, _ = digits
    raw = datasets.digits()[0][:32]
    res = find_concepts(m, p, raw, LAYER, 4, crops=14, iterations=2, exemplars=3, importance_images=0)
    assert res.crops == 14
    boxes = crop_boxes(28, 28, 14)  # starts 0, 11, 14: a 3 x 3 grid of crops
    z = np.asarray(encode(res.dictionary, layer_rows(m, p, LAYER, x[:32], "crops", boxes)))  # 32 x 9 x K
    ex = res.exemplars
    rows_seen = set()
    for c in range(4):
        for j, i in enumerate(ex["indices"][c]):
            assert i >= 0
            best = int(np.argmax(z[i, :, c]))
            assert ex["boxes"][c, j].tolist() == boxes[best].tolist(), (c, j)
            assert ex["peaks"][c, j].tolist() == [best // 3, best % 3]
            np.testing.assert_allclose(ex["values"][c, j], z[i, best, c], rtol=1e-5, atol=1e-6)
            rows_seen.add(best // 3)
    assert rows_seen != {0}  # the bug's signature: every peak on the first row
    i, c = int(ex["indices"][0, 0]), 0
    t, l, b, r = (int(v) for v in ex["boxes"][c, 0])
    got = np.asarray(crop_code_maps(res.dictionary, m, p, LAYER, x[i:i + 1], ex["boxes"][c, :1]))
    acts = m.run(p, crops(x[i:i + 1], np.array([[t, l, b, r]])), taps=[LAYER], output=False).taps[LAYER]
    want = resize_linear(jnp.moveaxis(encode(res.dictionary, acts), -1, 1), (14, 14))
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)
    with pytest.raises(jaxviz.JaxvizError, match="boxes"):
        crop_code_maps(res.dictionary, m, p, LAYER, x[:2], np.array([[0, 0, 14, 14], [0, 0, 10, 14]]))
    page = render_html(m, p, raw, res, (28, 28, 1), [], [])
    assert page.count("class='card'") == 4 and page.count("alt='exemplar'") == 12


@pytest.mark.slow
def test_cli_writes_every_npz_key(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "c"
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "concepts", "--weights", "builtin:digits_cnn", "--images",
                        "digits", "--layer", "conv2d_1", "--concepts", "4", "--class", "3", "--iterations", "2",
                        "--class", "1", "--importance-images", "3", "--importance", "gradient", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    z = np.load(out / "concepts.npz")
    keys = {"paths", "layer", "method", "dictionary", "mean_code", "max_code", "importance/3", "quality/relative_error",
            "quality/r2", "quality/l0", "quality/dead", "quality/stability"}
    keys |= {f"faithfulness/{m}/3{s}" for m in ("c-deletion", "c-insertion", "c-mufidelity") for s in ("", "/random")}
    assert keys <= set(z.keys())
    assert z["dictionary"].shape == (4, 64) and z["dictionary"].dtype == np.float32
    page = (out / "index.html").read_text()
    assert page.count("class='card'") == 4
    # the first 3 digits are 0, 1, 2: class 1 has importances, class 3 none (not zeros)
    assert z["importance_images/1"] >= 1 and np.isfinite(z["importance/1"]).all()
    assert z["importance_images/3"] == 0 and np.isnan(z["importance/3"]).all()
    assert np.isnan(z["faithfulness/c-deletion/3"])
    assert page.count("no image of this class") == 4  # one line per card
    assert "class 3: no image of this class" in r.stdout


@pytest.mark.slow
def test_digits_concepts_are_faithful_and_stable(tmp_path):
    """Real data, as docs/concepts.md's "Real data" run at a smaller budget: digits_cnn over all 1,797
    digits at conv2d_1 (post-ReLU), NMF K=8 in 4 passes, gradient importance for classes 0, 3, 8 over the
    first 400 images. Removing concepts in importance order must drop the class probability faster than
    a random order (C-Deletion area below its baseline; C-Insertion above), for every class asked; the
    stability is a cosine in [-1, 1]; the dictionary reconstructs the layer (relative error < 1); and the
    page shows each card's exemplars with their names and each class's importance."""
    import subprocess
    import sys

    out = tmp_path / "c"
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "concepts", "--weights", "builtin:digits_cnn", "--images",
                        "digits", "--layer", "conv2d_1", "--concepts", "8", "--iterations", "4", "--class", "0",
                        "--class", "3", "--class", "8", "--importance", "gradient", "--importance-images", "400",
                        "--batch-size", "256", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    z = np.load(out / "concepts.npz")
    assert len(z["paths"]) == 1797
    for c in (0, 3, 8):
        assert z[f"importance_images/{c}"] >= 20  # ~40 of each class among the first 400 digits
        assert z[f"faithfulness/c-deletion/{c}"] < z[f"faithfulness/c-deletion/{c}/random"], c
        assert z[f"faithfulness/c-insertion/{c}"] > z[f"faithfulness/c-insertion/{c}/random"], c
        assert np.isfinite(z[f"importance/{c}"]).all()
    assert -1.0 <= float(z["quality/stability"]) <= 1.0
    assert 0.0 < float(z["quality/relative_error"]) < 1.0
    page = (out / "index.html").read_text()
    assert page.count("class='card'") == 8
    assert "<figcaption>digits[" in page and "no image of this class" not in page
