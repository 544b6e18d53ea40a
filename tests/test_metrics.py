"""Faithfulness metrics and the evaluation over a collection: each metric against a plain per-image,
per-step loop written here from the definitions (cv2 for the resize and the blur, scipy's spsolve for
ROAD's imputation), a hand-computed AUC, cv2 parity of the resize and the blur, one compilation per
method whatever the number of images, batch-size / device / resume invariance, and the CLI's files."""

import json
import math
import os
import subprocess
import sys
import warnings

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse import lil_matrix, csc_matrix
from scipy.sparse.linalg import spsolve

import jaxviz
from jaxviz.methods import metrics as M
from jaxviz.methods.evaluate import evaluate
from jaxviz.nn.preprocess import preprocess

HERE = os.path.dirname(__file__)
FEW = M.Definitions(steps=10)
QUICK = [n for n in M.MAP_METRICS if n != "pointing_game"]
PERCENT = ("average_drop", "increase_in_confidence", "average_gain")


def _tol(name):  # 1e-5 of a probability; the percent metrics are 100 times larger
    return 1e-3 if name in PERCENT else 1e-5


@pytest.fixture(scope="module")
def digits():
    m = jaxviz.get_model("digits_cnn")
    return m, m.init(jax.random.key(0))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 28, 28, 1)).astype(np.float32)
    maps = rng.random((3, 7, 7)).astype(np.float32)
    maps[1, :3] = 0.5  # ties, broken by row-major index
    return x, maps, np.array([3, 1, 7])


# -- the plain loop, from the definitions ------------------------------------------------------------
def _prob(model, params, img, cls):
    out = model.run(params, preprocess(img[None], model.preprocessing))
    return float(jax.nn.softmax(np.asarray(out.logits, np.float64)[0])[cls])


def _order(m, shape):
    big = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return big, np.argsort(-big.ravel(), kind="stable")


def _loop_curves(model, params, x, maps, classes, steps):
    dele, ins = [], []
    for img, m, c in zip(x, maps, classes):
        h, w, ch = img.shape
        _, order = _order(m, (h, w))
        blurred = cv2.GaussianBlur(img, (11, 11), sigmaX=5).reshape(h, w, ch)
        d, i = [], []
        for s in range(steps + 1):
            k = round(s * h * w / steps)
            top = np.zeros(h * w, bool)
            top[order[:k]] = True
            top = top.reshape(h, w, 1)
            d.append(_prob(model, params, np.where(top, 0.0, img), c))
            i.append(_prob(model, params, np.where(top, img, blurred), c))
        dele.append(d)
        ins.append(i)
    return np.array(dele), np.array(ins)


def _trapezoid(curve):
    s = len(curve) - 1
    return sum((curve[i] + curve[i + 1]) / 2 / s for i in range(s))


def _ref_impute(img, removed):
    h, w, c = img.shape
    idx = np.flatnonzero(removed.ravel())
    var = np.full(h * w, -1)
    var[idx] = np.arange(len(idx))
    a, b = lil_matrix((len(idx), len(idx))), np.zeros((len(idx), c))
    for k, p in enumerate(idx):
        y, x = divmod(p, w)
        total = 0.0
        for (dy, dx), wt in (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                             ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w:
                total += wt
                if removed[yy, xx]:
                    a[k, var[yy * w + xx]] = -wt
                else:
                    b[k] += wt * img[yy, xx]
        a[k, k] = total
    out = img.astype(np.float64).copy()
    out.reshape(-1, c)[idx] = spsolve(csc_matrix(a), b).reshape(len(idx), c)
    return out


# -- cv2 parity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", [((7, 7), (28, 28)), ((5, 9), (28, 31)), ((30, 20), (13, 7)), ((16, 16), (8, 8)),
                                     ((1, 4), (5, 9))])
def test_resize_equals_cv2_inter_linear(src, dst):
    m = np.random.default_rng(1).random(src).astype(np.float32)
    ref = cv2.resize(m, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(np.asarray(M.resize_linear(jnp.asarray(m), dst)), ref, atol=1e-6)


def test_jax_image_resize_differs_from_cv2_when_shrinking():
    # why resize_linear exists: jax.image.resize antialiases when it shrinks, cv2 INTER_LINEAR does not
    m = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    ref = cv2.resize(m, (8, 8), interpolation=cv2.INTER_LINEAR)
    assert np.abs(np.asarray(jax.image.resize(m, (8, 8), "linear")) - ref).max() > 0.05


@pytest.mark.parametrize("shape", [(28, 28, 1), (9, 13, 3), (4, 4, 3)])
def test_blur_equals_cv2_gaussian_blur(shape):
    img = (np.random.default_rng(2).random(shape) * 255).astype(np.float32)
    ref = cv2.GaussianBlur(img, (11, 11), sigmaX=5).reshape(shape)  # BORDER_REFLECT_101
    np.testing.assert_allclose(np.asarray(M.gaussian_blur(jnp.asarray(img))), ref, atol=1e-4)


def test_ranks_descend_with_ties_by_row_major_index():
    m = jnp.array([[0.5, 0.0, 0.5], [1.0, 0.5, -0.0]])
    np.testing.assert_array_equal(np.asarray(M.ranks(m)), [[1, 4, 2], [0, 3, 5]])


# -- each metric against the loop ----------------------------------------------------------------------
@pytest.mark.slow
def test_deletion_and_insertion_equal_the_plain_loop(digits, batch):
    model, params = digits
    x, maps, cls = batch
    got = M.faithfulness(model, params, x, maps, cls, ["deletion", "insertion"])
    dele, ins = _loop_curves(model, params, x, maps, cls, 100)
    np.testing.assert_allclose(got["deletion_curve"], dele, atol=1e-5)
    np.testing.assert_allclose(got["insertion_curve"], ins, atol=1e-5)
    np.testing.assert_allclose(got["deletion"], [_trapezoid(c) for c in dele], atol=1e-5)
    np.testing.assert_allclose(got["insertion"], [_trapezoid(c) for c in ins], atol=1e-5)
    assert got["deletion_curve"].shape == (3, 101)


class Linear4(nn.Module):
    """Logits (x . w, 0) of a 2 x 2 grey image: the class-0 probability is a sigmoid one can work by hand."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))


def test_deletion_auc_by_hand():
    bundle = jaxviz.adapt(Linear4(), {"params": {"head": {"kernel": jnp.array([[1.0, 0], [2, 0], [3, 0], [4, 0]]),
                                                                   "bias": jnp.zeros(2)}}}, input_shape=(2, 2, 1),
                          preprocessing="scale255")
    x = np.full((2, 2, 2, 1), 255.0, np.float32)  # every pixel 1 after scale255
    maps = np.array([[[0.1, 0.2], [0.3, 0.4]], [[1.0, 1.0], [1.0, 1.0]]], np.float32)
    got = M.deletion(bundle.model, bundle.params, x, maps, [0, 0], definitions=M.Definitions(steps=4))

    def sig(v):
        return 1 / (1 + math.exp(-v))

    # image 0 loses w4, w3, w2, w1 in turn: logits 10, 6, 3, 1, 0; image 1 (all tied) w1, w2, w3, w4: 10, 9, 7, 4, 0
    for g, logits in zip(got, ([10, 6, 3, 1, 0], [10, 9, 7, 4, 0])):
        p = [sig(v) for v in logits]
        assert g == pytest.approx(0.25 * ((p[0] + p[4]) / 2 + p[1] + p[2] + p[3]), abs=1e-6)


def test_road_equals_spsolve_imputation_loop(digits, batch):
    model, params = digits
    x, maps, cls = batch
    d = M.Definitions(road_fractions=(0.2, 0.7))
    key = jax.random.key(5)
    got = M.road(model, params, x, maps, cls, key=key, definitions=d)
    f = len(d.road_fractions)
    for i, (img, m, c) in enumerate(zip(x, maps, cls)):
        big, order = _order(m, img.shape[:2])
        rank = np.empty(order.size, int)
        rank[order] = np.arange(order.size)
        rank = rank.reshape(img.shape[:2])
        k_img = jax.random.fold_in(key, i)
        probs = []
        for side in range(2):
            for j, frac in enumerate(d.road_fractions):
                n = round(frac * rank.size)
                removed = rank < n if side == 0 else rank >= rank.size - n
                noise = np.asarray(jax.random.normal(jax.random.fold_in(k_img, side * f + j), img.shape))
                z = preprocess(_ref_impute(img, removed).astype(np.float32), model.preprocessing)
                z = z + d.road_noise * noise * removed[..., None]
                out = model.run(params, z[None])
                probs.append(float(jax.nn.softmax(np.asarray(out.logits, np.float64)[0])[c]))
        morf, lerf = np.mean(probs[:f]), np.mean(probs[f:])
        assert got["road_morf"][i] == pytest.approx(morf, abs=1e-5)
        assert got["road_lerf"][i] == pytest.approx(lerf, abs=1e-5)
        assert got["road"][i] == pytest.approx((lerf - morf) / 2, abs=1e-5)


def test_imputation_equals_spsolve():
    img = (np.random.default_rng(3).random((20, 20, 3)) * 255).astype(np.float32)
    removed = np.zeros((20, 20), bool)
    removed[3:15, 5:19] = True
    removed[0, :] = True  # touches the border: neighbours outside are dropped
    np.testing.assert_allclose(np.asarray(M.impute(jnp.asarray(img), jnp.asarray(removed))), _ref_impute(img, removed),
                               atol=5e-3)


def test_confidence_metrics_equal_the_loop(digits, batch):
    model, params = digits
    x, maps, cls = batch
    got = M.confidence(model, params, x, maps, cls)
    for i, (img, m, c) in enumerate(zip(x, maps, cls)):
        big, _ = _order(m, img.shape[:2])
        y = _prob(model, params, img, c)
        o = _prob(model, params, img * big[..., None], c)
        assert got["average_drop"][i] == pytest.approx(100 * max(0, y - o) / y, abs=1e-4)
        assert got["increase_in_confidence"][i] == 100 * (o > y)
        assert got["average_gain"][i] == pytest.approx(100 * max(0, o - y) / (1 - y), abs=1e-4)


def test_pointing_game_by_hand(digits):
    model, params = digits
    maps = np.zeros((3, 28, 28), np.float32)
    maps[:, 5, 20] = 1.0  # the peak
    maps[:, 25, 2] = 1.0  # the same value later in row-major order: not the peak
    boxes = [[0, 0, 10, 10], [20, 0, 28, 6], [-1, -1, -1, -1]]  # 10 px from the peak, around the tie, none
    regions = M.boxes_to_masks(boxes, (28, 28))
    x = np.zeros((3, 28, 28, 1), np.float32)
    near = M.pointing_game(model, params, x, maps, 0, regions, definitions=M.Definitions(tolerance=11))
    far = M.pointing_game(model, params, x, maps, 0, regions, definitions=M.Definitions(tolerance=10))
    np.testing.assert_array_equal(near[:2], [1, 0])
    np.testing.assert_array_equal(far[:2], [0, 0])  # (5, 20) to (5, 9): 11 px
    assert np.isnan(near[2]) and np.isnan(far[2])


def test_unknown_metric_lists_the_valid_ones(digits, batch):
    model, params = digits
    x, maps, cls = batch
    with pytest.raises(jaxviz.JaxvizError, match="valid metrics: deletion, insertion"):
        M.faithfulness(model, params, x, maps, cls, ["delete"])


# -- evaluate ----------------------------------------------------------------------------------------
def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)).astype(np.float32)


@pytest.mark.slow
def test_evaluate_scores_equal_the_metric_functions(digits):
    model, params = digits
    x = _images(3)
    e = evaluate(model, params, x, ["gradcam"], QUICK, definitions=FEW, batch_size=2, key=jax.random.key(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cams = jaxviz.explain(model, params, preprocess(x, model.preprocessing), method="gradcam")
    assert list(e.classes) == list(cams.classes[:, 0])
    _, k_metric, _ = jax.random.split(jax.random.key(1), 3)
    ref = M.faithfulness(model, params, x, cams.heatmaps[:, 0], cams.classes[:, 0], QUICK, key=k_metric, definitions=FEW)
    for name in QUICK:
        np.testing.assert_allclose(e.scores["gradcam"][name], ref[name], atol=_tol(name), err_msg=name)
    np.testing.assert_allclose(e.curves["gradcam"]["deletion"], ref["deletion_curve"].mean(0), atol=1e-6)
    board = {(r["method"], r["metric"]): r for r in e.leaderboard}
    for name in QUICK:
        r = board["gradcam", name]
        assert r["n"] == 3 and r["low"] <= r["mean"] <= r["high"]
        assert r["mean"] == pytest.approx(float(np.mean(ref[name])), abs=_tol(name))
        rand = e.scores["random"][name]
        better = ref[name] > rand if M.BY_NAME[name].higher_is_better else ref[name] < rand
        assert r["beats_random"] == pytest.approx(better.mean())
    assert board["random", "deletion"]["beats_random"] is None


def test_one_compilation_per_method_whatever_n(digits):
    model, params = digits
    evaluate(model, params, _images(3), ["gradcam"], ["deletion"], definitions=FEW, batch_size=2)
    with jaxviz.count_compilations() as c:
        evaluate(model, params, _images(9, 1), ["gradcam"], ["deletion"], definitions=FEW, batch_size=2)
    assert c.count == 0
    with jaxviz.count_compilations() as c:  # a new method: its one step, nothing else
        evaluate(model, params, _images(5, 2), ["saliency", "gradcam"], ["deletion"], definitions=FEW, batch_size=2)
    assert c.count == 1


@pytest.mark.slow
def test_any_batch_size_same_scores(digits):
    model, params = digits
    x = _images(5)
    a = evaluate(model, params, x, ["saliency"], QUICK, definitions=FEW, batch_size=1)
    b = evaluate(model, params, x, ["saliency"], QUICK, definitions=FEW, batch_size=4)
    for m in ("saliency", "random"):
        for name in QUICK:
            np.testing.assert_allclose(a.scores[m][name], b.scores[m][name], atol=_tol(name), err_msg=f"{m} {name}")


def test_resume_equals_uninterrupted(digits, tmp_path):
    model, params = digits
    x = _images(7)
    kw = dict(methods=["gradcam"], metrics=["deletion", "road"], definitions=FEW, batch_size=2)
    whole = evaluate(model, params, x, **kw)

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, params, x, checkpoint=tmp_path, on_batch=stop, **kw)
    seen = []
    again = evaluate(model, params, x, checkpoint=tmp_path, resume=True, on_batch=lambda d, t: seen.append(d), **kw)
    assert seen == [6, 7]  # continued after the 4 images already done
    for m in ("gradcam", "random"):
        for name in ("deletion", "road"):
            np.testing.assert_array_equal(again.scores[m][name], whole.scores[m][name])
    assert again.leaderboard == whole.leaderboard
    with pytest.raises(jaxviz.JaxvizError, match="other settings"):
        evaluate(model, params, x, checkpoint=tmp_path, resume=True, **{**kw, "metrics": ["deletion"]})


def test_randomization_metric_calls_the_check(digits):
    model, params = digits
    x = _images(2)
    e = evaluate(model, params, x, ["gradcam"], ["randomization"], batch_size=2)
    ref = M.randomization(jax.random.fold_in(jax.random.split(jax.random.key(0), 3)[0], 2**31 - 1), model, params, x,
                          e.classes, method="gradcam")
    np.testing.assert_allclose(e.scores["gradcam"]["randomization"], ref, atol=1e-6)
    assert np.all(e.scores["random"]["randomization"] == 1)


@pytest.mark.slow
def test_four_devices_equal_one(digits):
    r = subprocess.run([sys.executable, os.path.join(HERE, "metrics_run.py")], capture_output=True, text=True,
                       env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["devices"] == 4
    assert got["max_diff"] <= 1e-5


def test_cli_writes_the_named_files(tmp_path):
    import jaxviz.cli.evaluate  # noqa: F401 (registers the command, also before jaxviz/cli/__init__.py imports it)
    from jaxviz.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_images(3)):
        cv2.imwrite(str(folder / f"d{i}.png"), np.uint8(im))
    out = tmp_path / "ev"
    status = main(["evaluate", "--weights", "builtin:digits_cnn", "--images", str(folder), "--methods",
                   "gradcam,saliency", "--metrics", "deletion,insertion,average_drop", "--steps", "10",
                   "--batch-size", "2", "--out", str(out)])
    assert status == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert {(r["method"], r["metric"]) for r in board} == {(m, n) for m in ("gradcam", "saliency", "random")
                                                           for n in ("deletion", "insertion", "average_drop")}
    z = np.load(out / "scores.npz")
    assert [os.path.basename(p) for p in z["paths"]] == ["d0.png", "d1.png", "d2.png"]
    assert z["gradcam/deletion"].shape == (3,)
    assert (out / "leaderboard.csv").read_text().splitlines()[0].startswith("method,metric")
    assert cv2.imread(str(out / "curves.png")) is not None


@pytest.mark.slow
def test_cli_on_two_processes_through_jax_distributed_equals_one(tmp_path):
    import socket

    import jaxviz.cli.evaluate  # noqa: F401 (registers the command)
    from jaxviz.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_images(7, 3)):
        cv2.imwrite(str(folder / f"d{i}.png"), np.uint8(im))
    (folder / "d5.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # in the second process's share
    args = ["--weights", "builtin:digits_cnn", "--images", str(folder), "--methods", "gradcam", "--metrics",
            "deletion,insertion", "--steps", "5", "--batch-size", "2", "--max-failures", "0.3"]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    child = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from jaxviz.cli import entry; entry()"
    procs = [subprocess.Popen([sys.executable, "-c", child, "evaluate", *args, "--coordinator", f"localhost:{port}",
                               "--process", f"{i}/2", "--out", str(tmp_path / "two")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    assert main(["evaluate", *args, "--out", str(tmp_path / "one")]) == 0
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert "6 images (1 unreadable)" in out and "2 process(es)" in out
    one, two = np.load(tmp_path / "one" / "scores.npz"), np.load(tmp_path / "two" / "scores.npz")
    assert sorted(one.files) == sorted(two.files)
    for key in one.files:
        if key.startswith("curves/"):  # mean curves: the shares' sums added in another order
            np.testing.assert_allclose(two[key], one[key], rtol=1e-12, err_msg=key)
        else:
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    assert np.isnan(one["gradcam/deletion"][5]) and np.isfinite(np.delete(one["gradcam/deletion"], 5)).all()
    board = lambda d: json.loads((tmp_path / d / "leaderboard.json").read_text())  # noqa: E731
    assert board("two") == board("one")  # the same per-image scores: the same means and intervals
    assert not (tmp_path / "two" / ".evaluate-checkpoint").exists()


@pytest.mark.slow
def test_gradcam_beats_a_random_map_on_efficientnet_lite0():
    loaded = jaxviz.load_model("efficientnet_lite0")
    if not loaded.trained:
        pytest.skip("EfficientNet-Lite0's published weights are not installed")
    photos = ["sample:chelsea", "sample:coffee", "sample:astronaut", "sample:rocket"]
    e = evaluate(loaded.model, loaded.params, photos, ["gradcam"], ["deletion", "insertion"],
                 definitions=M.Definitions(steps=20))
    board = {(r["method"], r["metric"]): r["mean"] for r in e.leaderboard}
    assert board["gradcam", "deletion"] < board["random", "deletion"]
    assert board["gradcam", "insertion"] > board["random", "insertion"]
