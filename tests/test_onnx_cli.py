"""ONNX files through the command line (``--weights model.onnx`` on every command, ``weights_convert``) and
ONNX checkpoints: the checkpoint re-opens to the same model (every layer equal, 0 difference), the
commands' files hold what ONNX Runtime computes, damaged checkpoints are one line, exit 2."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'jaxviz[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")

import jax.numpy as jnp  # noqa: E402

import onnx_files as OF  # noqa: E402
from conftest import assert_scaled_close  # noqa: E402
from test_onnx_ops import _ort_all, vit_graph  # noqa: E402
from jaxviz import load_model  # noqa: E402
from jaxviz.nn.preprocess import preprocess  # noqa: E402
from weights_convert.cli import main as convert_main  # noqa: E402

TORCH_MEAN, TORCH_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def run(capsys, *args) -> tuple[int, str, str]:
    from jaxviz.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *args) -> str:
    rc, out, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    return lines[0]


def taps(loaded, x):
    f = loaded.model.run(loaded.params, jnp.asarray(x), taps=loaded.model.layer_names)
    return {k: np.asarray(v) for k, v in f.taps.items()}, np.asarray(f.logits)


@pytest.mark.parametrize("which", ["cnn", "vit"])
def test_checkpoint_reopens_to_the_same_model(tmp_path, capsys, which):
    """weights_convert model.onnx ckpt: the checkpoint holds graph.onnx without the weights, and
    load_model(None, ckpt) gives every layer of load_model(None, model.onnx) exactly (0 difference); the
    ViT-like graph's Shape arithmetic and integer constants travel in graph.onnx."""
    m = OF.small_cnn(batch="N") if which == "cnn" else vit_graph()
    src = OF.save(m, tmp_path / "model.onnx")
    capsys.readouterr()
    rc = convert_main([src, str(tmp_path / "ck")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "initialiser" in out and f"wrote {tmp_path / 'ck'}" in out
    assert sorted(os.listdir(tmp_path / "ck")) == ["graph.onnx", "jaxviz.json", "params"]
    stored = onnx.load_model_from_string((tmp_path / "ck" / "graph.onnx").read_bytes())
    a, b = load_model(None, src), load_model(None, tmp_path / "ck")
    assert not {t.name for t in stored.graph.initializer} & set(a.params)  # the weights are not duplicated
    assert b.source.startswith("checkpoint") and b.model.layer_names == a.model.layer_names
    assert b.model.input_shape == a.model.input_shape and b.model.channels_first == a.model.channels_first
    x = np.random.default_rng(3).normal(size=(2, *a.model.input_shape)).astype(np.float32)
    ta, la = taps(a, x)
    tb, lb = taps(b, x)
    for k in ta:
        np.testing.assert_array_equal(tb[k], ta[k], err_msg=k)
    np.testing.assert_array_equal(lb, la)
    feed = np.transpose(x, (0, 3, 1, 2)) if a.model.channels_first else x
    ref = _ort_all(m, {a.model.input_name: feed})[a.model.output_names[0]]
    assert_scaled_close(lb, ref, 1e-5, "checkpoint logits vs ONNX Runtime")
    # --overwrite replaces an ONNX checkpoint (graph.onnx is one of its own files)
    assert convert_main([src, str(tmp_path / "ck"), "--overwrite"]) == 0


def test_checkpoint_records_preprocessing_and_labels(tmp_path):
    from jaxviz.io.checkpoint import save_checkpoint

    a = load_model(None, OF.save(OF.small_cnn(), tmp_path / "m.onnx"))
    save_checkpoint(tmp_path / "ck", a.model.with_preprocessing("torch"), a.params)
    b = load_model(None, tmp_path / "ck")
    assert b.model.preprocessing == "torch"
    x = np.full((1, 32, 32, 3), 128.0, np.float32)
    np.testing.assert_array_equal(taps(b, preprocess(x, "torch"))[1], taps(a, preprocess(x, "torch"))[1])


@pytest.fixture
def checkpoint(tmp_path):
    src = OF.save(OF.small_cnn(), tmp_path / "m.onnx")
    assert convert_main([src, str(tmp_path / "ck")]) == 0
    return tmp_path / "ck"


def _edit_meta(ck, fn):
    meta = json.loads((ck / "jaxviz.json").read_text())
    fn(meta)
    (ck / "jaxviz.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,pattern", [
    ("truncated_graph", "truncated, damaged or not ONNX"),
    ("graph_symlink", "graph.onnx is a symbolic link"),
    ("graph_missing", "graph.onnx"),
    ("shape", "is stored with shape (8, 3, 3, 3), the model needs (8, 3, 3, 4)"),
    ("unknown_param", "['t000006'] is stored with shape None"),
    ("name_in_graph", "already holds the parameter"),
    ("param_renamed", "which no node, input or initialiser defines"),
    ("bad_spec", "describes the ONNX graph badly"),
    ("bad_preprocessing", "describes the ONNX graph badly"),
    ("nan", "contains NaN or Inf"),
])
def test_damaged_checkpoint_is_one_line(capsys, checkpoint, tmp_path, damage, pattern):
    ck = checkpoint
    g = ck / "graph.onnx"
    if damage == "truncated_graph":
        g.write_bytes(g.read_bytes()[:-7])
    elif damage == "graph_symlink":
        outside = tmp_path / "outside.onnx"
        outside.write_bytes(g.read_bytes())
        g.unlink()
        g.symlink_to(outside)
    elif damage == "graph_missing":
        g.unlink()
    elif damage == "shape":
        _edit_meta(ck, lambda m: m["onnx"]["params"][0].__setitem__(1, [8, 3, 3, 4]))
    elif damage == "unknown_param":
        _edit_meta(ck, lambda m: m["onnx"]["params"].append(["extra", [3]]))
    elif damage == "name_in_graph":
        m = onnx.load_model_from_string(g.read_bytes())
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(8, np.float32), "conv1.bias"))
        g.write_bytes(m.SerializeToString())
    elif damage == "param_renamed":  # the graph's weight is then missing: refused by the import
        _edit_meta(ck, lambda m: m["onnx"]["params"].__setitem__(0, ["nobody.reads", [8, 3, 3, 3]]))
    elif damage == "bad_spec":
        _edit_meta(ck, lambda m: m["onnx"].__setitem__("params", [[1, "x"]]))
    elif damage == "bad_preprocessing":
        _edit_meta(ck, lambda m: m.__setitem__("preprocessing", "rm -rf"))
    elif damage == "nan":
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as c:
            tree = c.restore(ck / "params")
        tree = {k: np.asarray(v) for k, v in tree.items()}
        tree["t000001"][0] = np.nan
        import shutil

        shutil.rmtree(ck / "params")
        with ocp.StandardCheckpointer() as c:
            c.save(ck / "params", tree)
            c.wait_until_finished()
    line = one_line_error(capsys, "layers", "--weights", ck)
    assert pattern in line, line
    if damage == "graph_symlink":
        assert str(tmp_path / "outside.onnx") not in line


# ---------------------------------------------------------------------------------------------
# every command on an ONNX file
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_cli")
    m = OF.small_cnn(batch="N")
    src = OF.save(m, d / "model.onnx")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    np.save(d / "images.npy", images)
    from PIL import Image

    Image.fromarray(images[0]).save(d / "image.png")
    return m, src, d, images


def _torch_input(pixels):
    """torch preprocessing by hand: /255, minus the ImageNet mean, over the std; N x C x H x W."""
    x = (np.asarray(pixels, np.float64) / 255.0 - TORCH_MEAN) / TORCH_STD
    return np.transpose(x, (0, 3, 1, 2)).astype(np.float32)


def test_layers_and_activations(capsys, files, tmp_path):
    """`jaxviz layers model.onnx` names the layers by module path; activations with --preprocessing torch
    writes each layer's map, equal to ONNX Runtime's node output on the hand-preprocessed image."""
    m, src, d, images = files
    rc, out, err = run(capsys, "layers", src)
    assert rc == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    names = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert names == ["conv1", "relu1", "pool", "conv2", "relu2", "avgpool", "/Flatten", "fc"], out
    assert "(32, 32, 8)" in rows["conv1"] and "(5,)" in rows["fc"] and "1,477" in rows["total"]
    rc, out, err = run(capsys, "activations", "--weights", src, "--image", d / "image.png", "--preprocessing", "torch",
                       "--out", tmp_path / "a")
    assert rc == 0, err
    assert "preprocessing: torch (--preprocessing)" in err.splitlines()
    z = np.load(tmp_path / "a" / "activations.npz")
    ref = _ort_all(m, {"input": _torch_input(images[:1])})
    for layer, value in (("conv1", "c1"), ("pool", "p1"), ("relu2", "r2")):
        assert_scaled_close(z[layer], np.transpose(ref[value][0], (1, 2, 0)), 1e-5, layer)
        assert (tmp_path / "a" / f"{layer}.png").stat().st_size > 0
    rc, out, err = run(capsys, "activations", "--weights", src, "--image", d / "image.png", "--out", tmp_path / "b")
    assert rc == 0 and "preprocessing: none: the file records none \u2014 pass --preprocessing" in err, err


def test_gradcam_and_filters(capsys, files, tmp_path):
    """gradcam: the class is ONNX Runtime's top-1 on the preprocessed image, the heatmap is the library's
    Grad-CAM at the default layer; filters: the pattern's recorded objective is the model's mean
    activation of that channel at the pattern (recomputed through ONNX Runtime)."""
    import jaxviz

    m, src, d, images = files
    rc, out, err = run(capsys, "gradcam", "--weights", src, "--image", d / "image.png", "--preprocessing", "torch",
                       "--out", tmp_path / "g")
    assert rc == 0, err
    z = np.load(tmp_path / "g" / "gradcam.npz")
    logits = _ort_all(m, {"input": _torch_input(images[:1])})["logits"][0]
    assert int(z["classes"][0]) == int(np.argmax(logits))
    loaded = load_model(None, src)
    x = preprocess(jnp.asarray(images[:1], jnp.float32), "torch")
    want = jaxviz.explain(loaded.model, loaded.params, x, method="gradcam")
    assert_scaled_close(z["heatmaps"][0], np.asarray(want.heatmaps)[0, 0], 1e-5, "heatmap")
    assert (tmp_path / "g" / "image_overlay.png").exists()
    rc, out, err = run(capsys, "filters", "--weights", src, "--layer", "conv2", "--filters", "0,3", "--steps", "4",
                       "--size", "32", "--out", tmp_path / "f")
    assert rc == 0, err
    f = np.load(tmp_path / "f" / "conv2.npz")
    assert f["filters"].tolist() == [0, 3] and f["patterns"].shape == (2, 32, 32, 3)
    assert (tmp_path / "f" / "conv2.png").exists()


def test_atlas(capsys, files, tmp_path):
    """Each unit's top exemplar is the image where ONNX Runtime's conv2 output (torch preprocessing) peaks,
    its value that peak."""
    m, src, d, images = files
    rc, out, err = run(capsys, "atlas", "--weights", src, "--images", d / "images.npy", "--layer", "conv2", "--k", "2",
                       "--preprocessing", "torch", "--out", tmp_path / "at")
    assert rc == 0, err
    z = np.load(tmp_path / "at" / "atlas.npz")
    assert (tmp_path / "at" / "index.html").exists()
    ref = _ort_all(m, {"input": _torch_input(images)})["c2"]  # N x 16 x 16 x 16
    peak = ref.reshape(6, 16, -1).max(-1)  # images x units
    top = np.asarray(z["conv2/indices"])
    assert top.shape == (16, 2)
    np.testing.assert_array_equal(top[:, 0], peak.argmax(0))
    assert_scaled_close(z["conv2/values"][:, 0], peak.max(0), 1e-5, "top activation per unit")


def test_evaluate(capsys, files, tmp_path):
    """Grad-CAM's deletion and randomisation scores over the 6 images (the randomisation test needs the
    ONNX model's own re-initialisation)."""
    m, src, d, images = files
    rc, out, err = run(capsys, "evaluate", "--weights", src, "--images", d / "images.npy", "--methods", "gradcam",
                       "--metrics", "deletion,randomization", "--preprocessing", "torch", "--out", tmp_path / "ev")
    assert rc == 0, err
    board = {(r["method"], r["metric"]): r for r in json.loads((tmp_path / "ev" / "leaderboard.json").read_text())}
    assert set(board) == {(a, b) for a in ("gradcam", "random") for b in ("deletion", "randomization")}
    assert all(r["n"] == 6 for r in board.values()) and 0 <= board["gradcam", "deletion"]["mean"] <= 1
    assert board["random", "randomization"]["mean"] == 1  # a random map does not depend on the weights
    assert board["gradcam", "randomization"]["mean"] < 1  # re-initialised weights change Grad-CAM's maps


def test_init_and_reinit_follow_pytorch_defaults(tmp_path):
    """Fresh parameters: the file's shapes; a conv weight U(-b, b) with b = 1/sqrt(fan_in) (its spread
    b/sqrt(3)); reinit redraws exactly the weights the named layers read, as init draws them."""
    import jax

    loaded = load_model(None, OF.save(OF.small_cnn(), tmp_path / "m.onnx"))
    model, params = loaded.model, loaded.params
    fresh = model.init(jax.random.key(0))
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in params.items()}
    w, b = np.asarray(fresh["conv2.weight"]), 1 / np.sqrt(8 * 3 * 3)
    assert np.abs(w).max() <= b and abs(w.std() - b / np.sqrt(3)) < 0.1 * b
    assert np.abs(np.asarray(fresh["conv1.bias"])).max() <= 1 / np.sqrt(27)
    redone = model.reinit(params, jax.random.key(0), ["conv2", "fc"])
    changed = {k for k in params if not np.array_equal(np.asarray(redone[k]), np.asarray(params[k]))}
    assert changed == {"conv2.weight", "conv2.bias", "fc.weight", "fc.bias"}
    for k in changed:
        np.testing.assert_array_equal(np.asarray(redone[k]), np.asarray(fresh[k]))


# ---------------------------------------------------------------------------------------------
# a real exported network: torchvision's ResNet-18 (slow; the file comes from $JAXVIZ_ONNX_ZOO or from
# torch at test time, else skipped)
@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    d = tmp_path_factory.mktemp("resnet18")
    path, why = OF.resnet18_file(d)
    if path is None:
        pytest.skip(why)
    images = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3)).astype(np.uint8)
    np.save(d / "images.npy", images)
    return path, d, images


@pytest.mark.slow
def test_resnet18_layers_atlas_evaluate_filters(capsys, resnet18, tmp_path):
    """On torchvision's ResNet-18 through the CLI: `layers` prints the module paths; the atlas of the last
    block holds, per unit, the images sorted by their peak activation, equal to a forward pass of the same
    images; evaluate's Grad-CAM deletion scores are finite over the 3 images; filters' objective is
    higher after 6 ascent steps than after 1 from the same start."""
    src, d, images = resnet18
    rc, out, err = run(capsys, "layers", src)
    assert rc == 0, err
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"conv1", "maxpool", "layer1.0.conv1", "layer4.1.conv2", "layer4.1.relu_1", "avgpool", "fc"} <= names, out

    rc, out, err = run(capsys, "atlas", "--weights", src, "--images", d / "images.npy", "--layer", "layer4.1.relu_1",
                       "--k", "3", "--preprocessing", "torch", "--out", tmp_path / "at")
    assert rc == 0, err
    z = np.load(tmp_path / "at" / "atlas.npz")
    values, top = np.asarray(z["layer4.1.relu_1/values"]), np.asarray(z["layer4.1.relu_1/indices"])
    assert values.shape == top.shape == (512, 3)
    assert (np.diff(values, axis=1) <= 0).all()  # sorted, highest first
    loaded = load_model(None, src)
    x = preprocess(jnp.asarray(images, jnp.float32), "torch")
    tap = loaded.model.run(loaded.params, x, taps=["layer4.1.relu_1"]).taps["layer4.1.relu_1"]
    peak = np.asarray(tap).max(axis=(1, 2))  # N x 512
    assert_scaled_close(values, -np.sort(-peak.T, axis=1), 1e-5, "each unit's top activations")
    assert_scaled_close(values, np.take_along_axis(peak.T, top, axis=1), 1e-5, "at the images named")

    rc, out, err = run(capsys, "evaluate", "--weights", src, "--images", d / "images.npy", "--methods", "gradcam",
                       "--metrics", "deletion", "--steps", "4", "--preprocessing", "torch", "--out", tmp_path / "ev")
    assert rc == 0, err
    rows = json.loads((tmp_path / "ev" / "leaderboard.json").read_text())
    assert {(r["method"], r["metric"]) for r in rows} == {("gradcam", "deletion"), ("random", "deletion")}
    assert all(r["n"] == 3 and np.isfinite(r["mean"]) and 0 <= r["mean"] <= 1 for r in rows), rows

    objective = {}
    for steps in (1, 6):
        rc, out, err = run(capsys, "filters", "--weights", src, "--layer", "layer3.1.conv2", "--filters", "0,7",
                           "--recipe", "dlwp1", "--size", "224", "--steps", steps, "--out", tmp_path / f"f{steps}")
        assert rc == 0, err
        f = np.load(tmp_path / f"f{steps}" / "layer3.1.conv2.npz")
        assert f["filters"].tolist() == [0, 7] and f["patterns"].shape == (2, 224, 224, 3)
        objective[steps] = np.asarray(f["objective"])
    assert (objective[6] > objective[1]).all(), objective
