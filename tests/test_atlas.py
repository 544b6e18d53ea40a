"""Issue 26: streamed top-k exemplars per unit (``top_examples``), receptive fields, image collections.

The reference holds every activation of the collection in memory (numpy) and sorts it: the streamed,
batched, on-device merge must give the same indices and peak positions, and the same values (to the
last float32 rounding: XLA compiles the streaming step and the reference's calls separately).
Bit-identity is asserted where the same program runs: 1 vs 4 devices, 2 processes, interrupted and
resumed.
"""

import os
import subprocess
import sys

import flax_nets as F
import jax
import keras
import numpy as np
import pytest

import jaxviz
from jaxviz import JaxvizError
from jaxviz.io.collection import open_collection
from jaxviz.methods.atlas import merge_states, top_examples
from jaxviz.nn.preprocess import preprocess
from jaxviz.nn.receptive import RF, field_box, field_boxes, receptive_field
from conftest import assert_scaled_close

HERE = os.path.dirname(__file__)
CHUNK = 2


def reference(model, params, x, layers, k, reduce="max", units=None):
    """Every activation of ``x`` held in memory, the per-unit order sorted in numpy:
    ``{layer: (indices, values, peaks, mean, fire_rate)}``."""
    f = jax.jit(lambda xc: model.run(params, preprocess(xc, model.preprocessing), taps=layers, output=False).taps)
    n = -(-len(x) // CHUNK) * CHUNK
    xp = np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])
    acts = [f(xp[i:i + CHUNK]) for i in range(0, n, CHUNK)]
    out = {}
    for name in layers:
        a = np.concatenate([np.asarray(o[name]) for o in acts])[:len(x)]
        a = a.reshape(len(x), -1, a.shape[-1]) if a.ndim == 4 else a[:, None]
        if units is not None:
            a = a[..., units]
        red = a.max(1) if reduce == "max" else a.mean(1)
        pos = a.argmax(1)
        order = np.lexsort((np.broadcast_to(np.arange(len(x))[:, None], red.shape), -red), axis=0)[:k].T
        grid_w = 1 if a.shape[1] == 1 else int(np.sqrt(a.shape[1]))
        p = np.take_along_axis(pos.T, order, 1)
        out[name] = (order, np.take_along_axis(red.T, order, 1), np.stack([p // grid_w, p % grid_w], -1),
                     red.mean(0), (red > 0).mean(0))
    return out


def check_against_reference(model, params, x, layers, k, **kw):
    a = top_examples(model, params, x, layers, k, batch_size=6, chunk=CHUNK, **kw)
    ref = reference(model, params, x, layers, k, kw.get("reduce", "max"), kw.get("units"))
    assert a.count == len(x) and a.paths == [f"array[{i}]" for i in range(len(x))]
    for name in layers:
        got, (idx, val, peaks, mean, fire) = a.layers[name], ref[name]
        np.testing.assert_array_equal(got.indices, idx)
        np.testing.assert_array_equal(got.peaks, peaks)
        assert_scaled_close(got.values, val, 1e-5, f"{name} values")
        assert_scaled_close(got.mean, mean, 1e-5, f"{name} mean")
        np.testing.assert_array_equal(got.fire_rate, fire.astype(np.float32))
        np.testing.assert_array_equal(got.max, got.values[:, 0])
        np.testing.assert_array_equal(got.dead, fire == 0)
        np.testing.assert_array_equal(got.boxes, field_boxes(got.field, got.peaks, x.shape[1:3]))
    return a


def bright(n, shape, seed=0):
    """Images far from the all-zero padding rows, two of them identical (a tie)."""
    x = np.random.default_rng(seed).integers(120, 256, (n,) + shape).astype(np.float32)
    x[n - 2] = x[3]
    return x


def test_zoo_model_equals_brute_force():
    m = jaxviz.get_model("digits_cnn")
    p = m.init(jax.random.key(0))
    x = bright(23, (28, 28, 1))  # 23 = 3 full batches of 6 and a padded one
    a = check_against_reference(m, p, x, ["conv2d", "max_pooling2d_1", "dense"], k=5)
    assert a.layers["dense"].grid == (1, 1) and a.layers["conv2d"].grid == (28, 28)
    # the duplicated pair enters together with the lower index first wherever it is in the top 5
    idx = a.layers["max_pooling2d_1"].indices
    rows = [list(r) for r in idx if 21 in r]
    assert rows and all(3 in r and r.index(3) < r.index(21) for r in rows)
    check_against_reference(m, p, x, ["conv2d_1"], k=3, reduce="mean", units=[0, 5, 63])


def keras_file(tmp_path_factory):
    keras.backend.clear_session()
    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((21, 21, 3))
    x1 = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c1")(inp)
    a = L.Conv2D(4, 3, padding="same", name="c2")(x1)
    b = L.Add(name="add")([x1, a])
    d = L.Conv2D(6, 3, dilation_rate=2, activation="relu", name="dil")(b)
    pool = L.MaxPooling2D(3, strides=2, padding="same", name="pool")(d)
    out = L.Dense(3, activation="softmax", name="out")(L.GlobalAveragePooling2D(name="gap")(pool))
    km = keras.Model(inp, out, name="rf_net")
    path = str(tmp_path_factory.mktemp("keras") / "rf_net.keras")
    km.save(path)
    return path


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    return jaxviz.load_model(None, keras_file(tmp_path_factory))


def test_keras_model_equals_brute_force(keras_model):
    m, p = keras_model.model, keras_model.params
    check_against_reference(m, p, bright(17, (21, 21, 3), 1), ["c1", "add", "pool", "out"], k=4)


@pytest.fixture(scope="module")
def nnx_model():
    return jaxviz.adapt(F.resnet(), input_shape=(16, 16, 3))


@pytest.mark.slow
def test_adapted_nnx_module_equals_brute_force(nnx_model):
    m, p = nnx_model.model, nnx_model.params
    check_against_reference(m, p, bright(15, (16, 16, 3), 2), ["stem", "blocks.1", "head"], k=3)


def test_receptive_fields_hand_worked(keras_model):
    m = keras_model.model
    # c1: 3x3 stride 2 'same' on 21 pixels: 11 outputs, TF pads 2 in all, 1 before -> offset -1
    assert receptive_field(m, "c1") == RF((3, 3), (2, 2), (-1, -1))
    # c2 adds 2 input steps of 2 on each side; the residual add sees the union of both branches
    assert receptive_field(m, "c2") == RF((7, 7), (2, 2), (-3, -3))
    assert receptive_field(m, "add") == RF((7, 7), (2, 2), (-3, -3))
    # dilation 2, valid: an effective 5x5 kernel -> 7 + 4 * 2
    assert receptive_field(m, "dil") == RF((15, 15), (2, 2), (-3, -3))
    # 3x3 stride 2 'same' pool on 7 positions: TF pads 2, 1 before -> 15 + 2 * 2, offset -3 - 1 * 2
    assert receptive_field(m, "pool") == RF((19, 19), (4, 4), (-5, -5))
    assert receptive_field(m, "out") == RF((21, 21), (21, 21), (0, 0))
    # the zoo's digits_cnn: 3x3 same, pool 2, 3x3 same, pool 2
    d = jaxviz.get_model("digits_cnn")
    assert receptive_field(d, "max_pooling2d_1") == RF((10, 10), (4, 4), (-3, -3))
    assert field_box(receptive_field(d, "max_pooling2d_1"), 0, 6, (28, 28)) == (0, 21, 7, 28)
    # an adapted module is measured: stem 3x3, then two residual blocks of two 3x3 convs
    nnx = jaxviz.adapt(F.resnet(), input_shape=(16, 16, 3))
    assert receptive_field(nnx.model, "blocks.1", params=nnx.params) == RF((11, 11), (1, 1), (-5, -5))


def gradient_support(model, params, layer, shape, pos, seed):
    def f(x):
        return model.run(params, x[None], taps=[layer], output=False).taps[layer][0, pos[0], pos[1]].sum()

    x = jax.random.normal(jax.random.key(seed), shape)
    return np.abs(np.asarray(jax.grad(f)(x))).sum(-1) > 0


@pytest.mark.parametrize("layer", ["c1", "add", "dil", "pool"])
def test_receptive_field_contains_the_gradient_support(keras_model, layer):
    m, p = keras_model.model, keras_model.params
    rf = receptive_field(m, layer)
    grid = m.shapes((21, 21, 3), until=layer)[-1][1]
    touched = np.zeros((21, 21), bool)
    for seed, pos in enumerate([(0, 0), (grid[0] // 2, grid[1] // 2), (grid[0] - 1, grid[1] - 1), (0, grid[1] - 1)]):
        support = gradient_support(m, p, layer, (21, 21, 3), pos, seed)
        t, l, b, r = field_box(rf, *pos, (21, 21))
        inside = np.zeros_like(support)
        inside[t:b, l:r] = True
        assert support.any() and not (support & ~inside).any()
        touched |= support
    # and the analytic field is not loose: at the centre the support spans it
    c = (grid[0] // 2, grid[1] // 2)
    union = np.any([gradient_support(m, p, layer, (21, 21, 3), c, s) for s in range(6)], 0)
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    t, l, b, r = field_box(rf, *c, (21, 21))
    assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == (t, l, b, r)


def test_merge_orders_by_value_then_lower_index():
    v = np.array([[3.0, 1.0, 2.0]], np.float32)
    i = np.array([[9, 4, 7]], np.int32)
    p = np.zeros((1, 3), np.int32)
    w = np.array([[2.0, 3.0, -np.inf]], np.float32)
    j = np.array([[5, 11, 2**31 - 1]], np.int32)
    mv, mi, _ = merge_states([(v, i, p), (w, j, p)], 4)
    np.testing.assert_array_equal(mi, [[9, 11, 5, 7]])
    np.testing.assert_array_equal(mv, [[3, 3, 2, 2]])


def write_pngs(folder, n, seed=0, corrupt=()):
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        sub = folder / ("a" if i % 3 else "b")
        sub.mkdir(exist_ok=True)
        path = sub / f"img{i:03d}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        else:
            cv2.imwrite(str(path), rng.integers(0, 256, (30, 26), dtype=np.uint8))
        names.append(str(path))
    return names


def test_one_corrupt_file_in_500_is_named_and_skipped(tmp_path):
    m = jaxviz.get_model("digits_cnn")
    p = m.init(jax.random.key(1))
    write_pngs(tmp_path / "imgs", 500, corrupt={17})
    a = top_examples(m, p, str(tmp_path / "imgs"), ["conv2d_1"], k=4, batch_size=16)
    bad = [i for i, s in enumerate(a.paths) if s.endswith("img017.png")]
    assert len(a.paths) == 500 and a.count == 499
    assert [f.index for f in a.failures] == bad and "img017.png" in a.failures[0].path
    assert "not a readable image" in a.failures[0].reason
    assert bad[0] not in a.layers["conv2d_1"].indices
    # the same result as the 59 readable files alone (their indices mapped back)
    good = [s for s in a.paths if not s.endswith("img017.png")]
    b = top_examples(m, p, good, ["conv2d_1"], k=4, batch_size=16)
    mapping = np.array([a.paths.index(s) for s in good])
    np.testing.assert_array_equal(a.layers["conv2d_1"].indices, mapping[b.layers["conv2d_1"].indices])
    np.testing.assert_array_equal(a.layers["conv2d_1"].values, b.layers["conv2d_1"].values)
    with pytest.raises(JaxvizError, match=r"1 of 500 images could not be read.*img017"):
        top_examples(m, p, str(tmp_path / "imgs"), ["conv2d_1"], k=4, max_failures=0)


def test_interrupted_at_a_random_batch_and_resumed_equals_uninterrupted(tmp_path):
    m = jaxviz.get_model("digits_cnn")
    p = m.init(jax.random.key(2))
    x = np.random.default_rng(5).integers(0, 256, (70, 28, 28, 1)).astype(np.uint8)
    kw = {"layers": ["conv2d", "dense"], "k": 6, "batch_size": 8, "chunk": CHUNK}
    whole = top_examples(m, p, x, **kw)
    stop = int(np.random.default_rng().integers(1, 9))  # any batch of the 9

    def interrupt(done, total):
        if done >= stop * 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        top_examples(m, p, x, checkpoint=tmp_path / "ck", checkpoint_every=3, on_batch=interrupt, **kw)
    seen = []
    resumed = top_examples(m, p, x, checkpoint=tmp_path / "ck", resume=True,
                           on_batch=lambda d, t: seen.append(d), **kw)
    assert seen[0] == min(stop * 8 + 8, 70), f"resumed from the batch after {stop}"
    for name in kw["layers"]:
        for field in ("indices", "values", "peaks", "boxes", "mean", "max", "fire_rate"):
            np.testing.assert_array_equal(getattr(resumed.layers[name], field), getattr(whole.layers[name], field))
    assert resumed.count == whole.count == 70
    with pytest.raises(JaxvizError, match="other settings"):
        top_examples(m, p, x, checkpoint=tmp_path / "ck", resume=True, **{**kw, "k": 5})


def test_collection_sources_and_shares(tmp_path):
    names = write_pngs(tmp_path / "imgs", 7)
    folder = open_collection(str(tmp_path / "imgs"), (8, 8, 1), batch_size=3)
    assert folder.paths == sorted(names, key=lambda s: (os.path.dirname(s), s))
    (tmp_path / "list.txt").write_text("# images\n" + "\n".join(os.path.relpath(s, tmp_path) for s in names[:4]) + "\n")
    assert open_collection(str(tmp_path / "list.txt"), (8, 8, 1)).paths == names[:4]
    assert open_collection(str(tmp_path / "imgs" / "**" / "*.png"), (8, 8, 1)).paths == sorted(names)
    arr = np.random.default_rng(0).integers(0, 256, (11, 8, 8, 1)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", images=arr)
    # two shares cover the collection once, in order; padding rows are marked invalid
    rows = []
    for s in range(2):
        for b in open_collection(str(tmp_path / "a.npz"), (8, 8, 1), batch_size=4, shard=(s, 2)):
            rows += [(int(i), px) for i, px, v in zip(b.indices, b.pixels, b.valid) if v]
            assert (b.indices[~b.valid] == -1).all()
    assert [i for i, _ in rows] == list(range(11))
    np.testing.assert_array_equal(np.stack([px for _, px in rows]), arr.astype(np.float32))
    # an iterable of batches, re-cut to the batch size
    it = open_collection((arr[i:i + 5] for i in range(0, 11, 5)), (8, 8, 1), batch_size=4)
    got = [b for b in it]
    assert [int(b.valid.sum()) for b in got] == [4, 4, 3] and it.paths == [f"item{i}" for i in range(11)]
    with pytest.raises(JaxvizError, match="no image collection"):
        open_collection(str(tmp_path / "missing"), (8, 8, 1))


def run_cli(*argv):
    import jaxviz.cli.atlas  # noqa: F401  (registers the command even before jaxviz.cli imports it)
    from jaxviz.cli import main

    return main(["atlas", *argv])


def test_cli_writes_the_npz_and_a_self_contained_html(tmp_path, capsys):
    write_pngs(tmp_path / "imgs", 12, corrupt={4})
    evil = tmp_path / "imgs" / "<b>x&'y.png"  # a name that must be escaped, never markup
    import cv2

    cv2.imwrite(str(evil), np.full((28, 28), 200, np.uint8))
    out = tmp_path / "out"
    status = run_cli("--weights", "builtin:digits_cnn", "--images", str(tmp_path / "imgs"), "--layer", "conv2d_1",
                     "--layer", "dense", "--units", "0-3,9", "--k", "3", "--batch-size", "5", "--patterns", "dlwp1",
                     "--max-failures", "0.2", "--out", str(out))
    err = capsys.readouterr().err
    assert status == 0, err
    assert "img004.png" in err and "skipped" in err
    z = np.load(out / "atlas.npz")
    assert len(z["paths"]) == 13 and z["failures"].tolist() == [i for i, p in enumerate(z["paths"]) if "img004" in p]
    for layer in ("conv2d_1", "dense"):
        assert z[f"{layer}/indices"].shape == (5, 3) and z[f"{layer}/values"].shape == (5, 3)
        assert z[f"{layer}/peaks"].shape == (5, 3, 2) and z[f"{layer}/boxes"].shape == (5, 3, 4)
        for f in ("mean", "max", "fire_rate"):
            assert z[f"{layer}/{f}"].shape == (5,)
        assert z[f"{layer}/units"].tolist() == [0, 1, 2, 3, 9]
    # the library's result, through the public function, for the same settings
    m = jaxviz.load_model(None, "builtin:digits_cnn")
    a = top_examples(m.model, m.params, str(tmp_path / "imgs"), ["conv2d_1"], 3, units=[0, 1, 2, 3, 9],
                     max_failures=0.2)
    np.testing.assert_array_equal(z["conv2d_1/indices"], a.layers["conv2d_1"].indices)
    page = (out / "index.html").read_text()
    assert "1 unreadable images skipped" in page and "img004.png" in page  # the report names it
    assert page.count("data-unit=") == 10 and page.count("class='pattern'") == 10
    assert "<b>x&" not in page and "&lt;b&gt;x&amp;&#x27;y.png" in page
    assert "src='data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    assert sorted(p.name for p in out.iterdir()) == ["atlas.npz", "index.html"]


@pytest.mark.parametrize("argv, message", [
    (["--k", "0"], "--k must be"),
    (["--k", "1001"], "--k must be"),
    (["--batch-size", "70000"], "--batch-size must be"),
    (["--units", "5-2"], "runs backwards"),
    (["--units", "0,x"], "--units takes"),
    (["--layer", "nope"], "unknown layer 'nope'"),
])
def test_cli_refuses_bad_numbers_in_one_line(tmp_path, capsys, argv, message):
    args = ["--weights", "builtin:digits_cnn", "--images", "digits", "--out", str(tmp_path / "o"), "--layer", "conv2d"]
    assert run_cli(*args, *argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("jaxviz atlas: error: ") and message in lines[-1]
    assert not any("Traceback" in l for l in lines) and not (tmp_path / "o").exists()


def _helper(out, devices, *extra):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, os.path.join(HERE, "atlas_run.py"), str(out), *map(str, extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs):
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]


@pytest.mark.slow
def test_bit_identical_on_one_device_four_devices_and_two_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    _wait([_helper(tmp_path / "one.npz", 1)])
    _wait([_helper(tmp_path / "four.npz", 4)])
    _wait([_helper(tmp_path / "two.npz", 1, i, 2, port) for i in range(2)])
    one, four, two = (np.load(tmp_path / f"{n}.npz") for n in ("one", "four", "two"))
    assert one["devices"].tolist() == [1, 1] and four["devices"].tolist() == [4, 1]
    assert two["devices"].tolist() == [1, 2]
    assert int(one["count"]) == 45
    for key in one.files:
        if key != "devices":
            np.testing.assert_array_equal(four[key], one[key], err_msg=key)
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)


def test_cli_resume_continues_a_checkpoint_and_refuses_other_settings(tmp_path, capsys):
    write_pngs(tmp_path / "imgs", 30, seed=3)
    m = jaxviz.load_model(None, "builtin:digits_cnn")
    kw = {"layers": ["conv2d_1"], "k": 4, "batch_size": 8}
    whole = top_examples(m.model, m.params, str(tmp_path / "imgs"), **kw)

    def interrupt(done, total):
        if done >= 16:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        top_examples(m.model, m.params, str(tmp_path / "imgs"), checkpoint=out / ".atlas-checkpoint",
                     on_batch=interrupt, **kw)
    base = ["--weights", "builtin:digits_cnn", "--images", str(tmp_path / "imgs"), "--layer", "conv2d_1",
            "--batch-size", "8", "--patterns", "none", "--resume", "--out", str(out)]
    assert run_cli(*base, "--k", "5") == 2
    assert "other settings" in capsys.readouterr().err.strip().splitlines()[-1]
    assert run_cli(*base, "--k", "4") == 0, capsys.readouterr().err
    z = np.load(out / "atlas.npz")
    np.testing.assert_array_equal(z["conv2d_1/indices"], whole.layers["conv2d_1"].indices)
    np.testing.assert_array_equal(z["conv2d_1/mean"], whole.layers["conv2d_1"].mean)
    assert not (out / ".atlas-checkpoint").exists()


def test_checkpoint_is_orbax_atomic_and_read_like_any_untrusted_file(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    from jaxviz.io import jobstate
    from jaxviz.io.collection import Failure

    paths = [f"img{i}" for i in range(10)]
    first = {"position": np.array(4), "0/values": np.arange(6, dtype=np.float32).reshape(2, 3),
             "0/sums": np.array([0.5, 1e-300]), "none": np.zeros((0, 3), np.int64)}
    ck = tmp_path / "ck"
    jobstate.save_state(ck, "settings-a", first, [Failure(7, "img7", "not a readable image")])
    # orbax wrote it: its own reader restores the arrays
    gens = sorted(os.listdir(ck))
    assert gens == ["g000001"]
    raw = ocp.PyTreeCheckpointer().restore(str(ck / gens[0] / "state"))
    np.testing.assert_array_equal(raw["0"]["values"], first["0/values"])

    def loaded():
        arrays, failures = jobstate.load_state(ck, "settings-a", paths, "k")
        return arrays, failures

    arrays, failures = loaded()
    assert failures == [Failure(7, "img7", "not a readable image")]
    for name, a in first.items():
        assert arrays[name].dtype == a.dtype and arrays[name].shape == a.shape
        np.testing.assert_array_equal(arrays[name], a)
    # a crash after orbax wrote the next state, before its commit: the previous checkpoint stands
    second = {**first, "position": np.array(9)}

    def crash(stage, final):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobstate, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        jobstate.save_state(ck, "settings-a", second, [])
    monkeypatch.undo()
    assert int(loaded()[0]["position"]) == 4 and loaded()[1][0].index == 7
    jobstate.save_state(ck, "settings-a", second, [])
    assert sorted(os.listdir(ck)) == ["g000002"] and int(loaded()[0]["position"]) == 9  # the crashed write is gone
    with pytest.raises(JaxvizError, match=r"other settings \(k\)") as e:
        jobstate.load_state(ck, "settings-b", paths, "k")
    assert "\n" not in str(e.value)
    # what is at the checkpoint's path or inside it is checked before orbax reads a byte
    link = tmp_path / "link"
    link.symlink_to(ck)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad, message in ((link, "symbolic link"), (fifo, "FIFO"), (tmp_path / "missing", "cannot read")):
        with pytest.raises(JaxvizError, match=message):
            jobstate.load_state(bad, "settings-a", paths, "k")
    monkeypatch.setattr(jobstate, "MAX_STATE_BYTES", 1000)
    with pytest.raises(JaxvizError, match="holds more than"):
        loaded()
    monkeypatch.undo()
    inner = ck / "g000002" / "state" / "_METADATA"
    inner.unlink()
    os.mkfifo(inner)
    with pytest.raises(JaxvizError, match="FIFO"):
        loaded()


CLI = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                             "from jaxviz.cli import entry; entry()", "atlas"]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_to_a_running_cli_then_resume_equals_an_uninterrupted_run(tmp_path):
    import signal
    import time

    write_pngs(tmp_path / "imgs", 400, seed=4)
    out = tmp_path / "out"
    argv = CLI + ["--weights", "builtin:digits_cnn", "--images", str(tmp_path / "imgs"), "--layer", "conv2d_1",
                  "--layer", "dense", "--k", "4", "--batch-size", "8", "--patterns", "none", "--out", str(out)]
    run = subprocess.Popen(argv + ["--checkpoint-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    state = out / ".atlas-checkpoint" / "atlas-state-0of1"
    t0 = time.monotonic()
    while not (state.is_dir() and any(n.startswith("g") for n in os.listdir(state))):
        assert run.poll() is None and time.monotonic() - t0 < 240, run.communicate()[1][-2000:]
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)  # in the middle of the run: a checkpoint is written every batch
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    assert "terminated" in err.strip().splitlines()[-1] and not (out / "atlas.npz").exists()
    resumed = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    m = jaxviz.load_model(None, "builtin:digits_cnn")
    whole = top_examples(m.model, m.params, str(tmp_path / "imgs"), ["conv2d_1", "dense"], 4, batch_size=8)
    z = np.load(out / "atlas.npz")
    assert z["paths"].tolist() == whole.paths
    for layer, la in whole.layers.items():
        for field in ("indices", "values", "peaks", "boxes", "mean", "max", "fire_rate"):
            np.testing.assert_array_equal(z[f"{layer}/{field}"], getattr(la, field), err_msg=f"{layer}/{field}")
    assert not (out / ".atlas-checkpoint").exists()


@pytest.mark.slow
def test_cli_on_two_processes_through_jax_distributed_equals_one(tmp_path, capsys):
    write_pngs(tmp_path / "imgs", 45, seed=6, corrupt={5, 40})  # one unreadable file in each share
    base = ["--weights", "builtin:digits_cnn", "--images", str(tmp_path / "imgs"), "--layer", "conv2d",
            "--layer", "dense", "--k", "5", "--batch-size", "8", "--patterns", "none", "--max-failures", "0.1"]
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [subprocess.Popen(CLI + base + ["--coordinator", f"localhost:{port}", "--process", f"{i}/2", "--out",
                                            str(tmp_path / "two")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    assert run_cli(*base, "--out", str(tmp_path / "one")) == 0, capsys.readouterr().err
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert "2 process(es)" in out
        if i == 0:  # process 0 names both files, each with its reason (img040 was read by process 1)
            assert [line.count("not a readable image") for line in err.splitlines() if "skipped" in line] == [1, 1]
    one, two = np.load(tmp_path / "one" / "atlas.npz"), np.load(tmp_path / "two" / "atlas.npz")
    assert sorted(one.files) == sorted(two.files)
    for key in one.files:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    assert sorted(os.path.basename(one["paths"][i]) for i in one["failures"]) == ["img005.png", "img040.png"]
    shares = [(0, 22), (22, 45)]
    assert [sum(lo <= i < hi for i in one["failures"]) for lo, hi in shares] == [1, 1]
    assert not (tmp_path / "two" / ".atlas-checkpoint").exists()


def test_png_decoding_in_collections_equals_load_image(tmp_path):
    """Collections decode 8-bit PNGs with OpenCV (it releases the GIL); the pixels are load_image's
    (Pillow) for every colour type, interlaced or not, each channel count, resized or not; palette and
    16-bit PNGs, JPEGs and a corrupt file take load_image's own path."""
    import cv2
    from PIL import Image

    from jaxviz.io.images import load_image

    rng = np.random.default_rng(1)
    paths = []
    for k, (mode, shape) in enumerate([("L", (30, 26)), ("RGB", (20, 24, 3)), ("RGBA", (28, 28, 4)),
                                       ("LA", (17, 29, 2))]):
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        for interlace in (0, 1):
            paths.append(str(tmp_path / f"{mode}{interlace}.png"))
            Image.fromarray(arr, mode).save(paths[-1], interlace=interlace)
    paths.append(str(tmp_path / "palette.png"))
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("P").save(paths[-1])
    paths.append(str(tmp_path / "grey16.png"))
    cv2.imwrite(paths[-1], rng.integers(0, 65536, (20, 20), dtype=np.uint16))
    paths.append(str(tmp_path / "photo.jpg"))
    cv2.imwrite(paths[-1], rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    for shape in [(28, 28, 1), (28, 28, 3), (20, 24, 3), (30, 26, 1)]:
        for interpolation in ("nearest", "bilinear"):
            coll = open_collection(paths, shape, interpolation=interpolation)
            for i, p in enumerate(paths):
                want = load_image(p, shape[:2], channels=shape[2], interpolation=interpolation)
                np.testing.assert_array_equal(coll.read(i), want.astype(np.float32), err_msg=f"{p} {shape}")
    bad = tmp_path / "bad.png"
    bad.write_bytes(open(paths[0], "rb").read()[:60])  # a PNG cut short
    batch = next(iter(open_collection([str(bad), paths[0]], (8, 8, 1), batch_size=2, max_failures=1)))
    assert batch.valid.tolist() == [False, True]
