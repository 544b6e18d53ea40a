"""The command line through subprocess: every subcommand, every documented error, the demo gallery."""

import html.parser
import subprocess
import sys

import cv2
import numpy as np
import pytest


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


def test_every_subcommand_has_help_with_an_example():
    from jaxviz.cli import COMMANDS

    assert set(COMMANDS) >= {"layers", "predict", "activations", "filters", "gradcam", "weights", "demo"}
    for name in COMMANDS:
        r = jaxviz(name, "--help", check=0)
        assert "example:" in r.stdout and f"jaxviz {name}" in r.stdout.split("example:")[1]
        assert "--debug" in r.stdout


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


@pytest.mark.parametrize("args, message", [
    (["predict", "--weights", "builtin:digits_cnn", "nope.jpg"], "image not found: nope.jpg"),
    (["predict", "--weights", "builtin:digits_cnn", "{bad}"], "cannot read image {bad}: not a readable PNG or JPEG"),
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
def test_errors_are_one_line_and_leave_nothing(tmp_path, fixtures_dir, args, message):
    import pickle

    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(_EvalCall(), protocol=2))
    subs = {"{bad}": tmp_path / "bad.png", "{out}": tmp_path / "out", "{file}": tmp_path / "file",
            "{fashion}": fixtures_dir / "keras" / "fashion_cnn_keras2.11.h5", "{empty}": tmp_path / "empty",
            "{evil}": tmp_path / "evil.pth"}

    def fill(a):
        for k, v in subs.items():
            a = a.replace(k, str(v))
        return a

    assert_error(jaxviz(*map(fill, args)), fill(message), tmp_path / "out")


def test_debug_shows_the_traceback():
    r = jaxviz("--debug", "predict", "--model", "vgg17", "sample:chelsea")
    assert r.returncode != 0 and "Traceback" in r.stderr and "JaxvizError" in r.stderr


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.src, self.external = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.src.append(a["src"])
        for k in ("src", "href"):
            if a.get(k, "").startswith(("http:", "https:", "//")):
                self.external.append(a[k])


@pytest.mark.slow
def test_demo_gallery_reduced(tmp_path):
    r = jaxviz("demo", "--quick", "--out", tmp_path / "g", check=0)
    assert "figures; open" in r.stdout and "UNTRAINED" in (tmp_path / "g" / "index.html").read_text()
    page = _Images()
    page.feed((tmp_path / "g" / "index.html").read_text())
    assert len(page.src) >= 30 and not page.external  # self-contained: nothing fetched from elsewhere
    for src in page.src:
        data = (tmp_path / "g" / src).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", src
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.size > 0, src
    text = (tmp_path / "g" / "index.html").read_text()
    for section in ("activations", "filter patterns", "gradcam", "weights", "predictions"):
        assert section in text
