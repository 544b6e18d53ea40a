"""The bad-input matrix (issue 19): every case exits with status 2 and prints exactly one line
``jaxviz CMD: error: ...`` (or ``weights_convert: error: ...``) as the last line of stderr, with no
traceback, and leaves nothing in ``--out`` or anywhere under the test's directory (listed before and
after). Signals exit with 130 (SIGINT) and 143 (SIGTERM) and leave nothing either.

Most cases run in this process through ``jaxviz.cli.main`` (fast: one JAX import, shared compile
caches); a handful run as real subprocesses for the exit status and the absence of a traceback.
Only the two cases that read seed 004's Keras file need the shared fixtures.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import hostile as H
import jaxviz
import jaxviz.io.images
from conftest import FIXTURES, need_fixture
from jaxviz import JaxvizError
from jaxviz.cli.common import as_flags
from jaxviz.io.keras import load_keras_weights
from jaxviz.io.torch import load_torch_weights
from jaxviz.cli import main as jaxviz_main
from weights_convert.cli import main as convert_main

DIGITS = ["--weights", "builtin:digits_cnn"]
FASHION_FILE = FIXTURES / "keras" / "fashion_cnn_keras2.11.h5"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_zero_png(path: Path, width: int, height: int) -> Path:
    """A valid grayscale PNG of zeros, written row by row (never held decoded): 20000 x 20000 is about
    390 KB on disk and 400 MB once decoded, a decompression bomb."""
    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def bomb(tmp_path_factory) -> Path:
    path = write_zero_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000, 20000)
    assert path.stat().st_size < 500_000
    return path


@pytest.fixture(scope="session")
def big_photo(tmp_path_factory) -> Path:
    """9000 x 8000 = 72 Mpx: over jaxviz's 64 Mpx cap, under Pillow's own warning threshold (89 Mpx)."""
    return write_zero_png(tmp_path_factory.mktemp("big") / "big_photo.png", 9000, 8000)


@pytest.fixture
def tree(tmp_path, bomb, big_photo) -> dict[str, str]:
    """The inputs the cases refer to, as ``{key: path}`` for ``{key}`` in a case's arguments."""
    t = tmp_path
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(t / "ok.png")
    (t / "photos").mkdir()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(t / "photos" / "a.png")
    (t / "bad.png").write_text("not an image")
    (t / "empty.png").write_bytes(b"")
    good = (t / "ok.png").read_bytes()
    (t / "trunc.png").write_bytes(good[: len(good) // 2])
    (t / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    (t / "big.png").write_bytes(np.random.default_rng(0).bytes(2 * 2**20))
    (t / "file").write_text("x")
    (t / "emptydir").mkdir()
    (t / "notckpt").mkdir()
    (t / "junk.h5").write_text("not hdf5")
    (t / "empty.pth").write_bytes(b"")
    with h5py.File(t / "odd.h5", "w") as f:  # a weights-only Keras layout of no known architecture
        f.attrs["layer_names"] = [b"dense_x"]
        g = f.create_group("dense_x")
        g.attrs["weight_names"] = [b"dense_x/kernel:0", b"dense_x/bias:0"]
        g["dense_x/kernel:0"] = np.ones((3, 7), np.float32)
        g["dense_x/bias:0"] = np.zeros(7, np.float32)
    # a ResNet-18-like PyTorch state dict: no registered architecture fits it
    sd = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "bn1.weight": np.ones(64, np.float32),
          "fc.weight": np.zeros((1000, 512), np.float32), "fc.bias": np.zeros(1000, np.float32)}
    H.write_zip(t / "resnet18.pth", {k: H.tensor_of(k, v) for k, v in sd.items()})
    (t / "busy" / "weights.npz").mkdir(parents=True)  # a directory where an output file must go
    (t / "ckpt_dest").mkdir()
    return {"tmp": str(t), "out": str(t / "out"), "bomb": str(bomb), "big_photo": str(big_photo),
            "fashion": str(FASHION_FILE)}


def fill(text: str, tree: dict[str, str]) -> str:
    for k, v in tree.items():
        text = text.replace("{" + k + "}", v)
    return text


def listing(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files)


def assert_one_error(rc: int, err: str, prog: str, message: str) -> None:
    """Exit 2; the last stderr line, and the only one with 'error:', is ``PROG: error: ...`` holding ``message``."""
    lines = err.splitlines()
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [l for l in lines if "error:" in l]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"{prog}: error: "), err
    assert message in errors[0], err


def run_inprocess(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    if argv[0] == "weights_convert":
        rc = convert_main(argv[1:])
    else:
        rc = jaxviz_main(argv)
    return rc, capsys.readouterr().err


def prog_of(argv: list[str]) -> str:
    return "weights_convert" if argv[0] == "weights_convert" else f"jaxviz {argv[0]}"


# (id, arguments, a fragment of the one error line). {tmp}: the test's directory, {out}: {tmp}/out.
IMAGES = [
    ("image-missing", ["predict", *DIGITS, "{tmp}/nope.png"], "image not found: {tmp}/nope.png"),
    ("image-not-an-image", ["predict", *DIGITS, "{tmp}/bad.png"], "cannot read image {tmp}/bad.png"),
    ("image-empty-file", ["predict", *DIGITS, "{tmp}/empty.png"], "cannot read image {tmp}/empty.png"),
    ("image-truncated-png", ["activations", *DIGITS, "--image", "{tmp}/trunc.png", "--out", "{out}"],
     "cannot read image {tmp}/trunc.png"),
    ("image-eps-refused", ["predict", *DIGITS, "{tmp}/eps.png"], "cannot read image {tmp}/eps.png"),
    ("image-is-a-directory", ["activations", *DIGITS, "--image", "{tmp}/photos", "--out", "{out}"],
     "{tmp}/photos is a directory, not an image file"),
    ("image-decompression-bomb", ["gradcam", *DIGITS, "--image", "{bomb}", "--out", "{out}"],
     "{bomb} declares more than the 64 Mpx jaxviz decodes"),
    ("image-over-64-mpx", ["predict", *DIGITS, "{big_photo}"],
     "{big_photo} declares 9000x8000 pixels, more than the 64 Mpx jaxviz decodes"),
    ("image-too-many-bytes", ["predict", *DIGITS, "{tmp}/big.png"], "MiB, more than the 1 MiB jaxviz reads"),
    ("image-unknown-sample", ["predict", *DIGITS, "sample:nonsense"],
     "unknown sample image 'nonsense'; valid sample images: astronaut"),
    ("image-empty-folder", ["gradcam", *DIGITS, "--image", "{tmp}/emptydir", "--out", "{out}"],
     "folder {tmp}/emptydir holds no images"),
]
MODELS_AND_LAYERS = [
    ("model-unknown", ["predict", "--model", "vgg17", "{tmp}/ok.png"], "unknown model 'vgg17'; valid models: "),
    ("layers-no-name", ["layers"], "give a model name"),
    ("layers-unknown-model", ["layers", "vgg17"], "unknown model 'vgg17'"),
    ("layers-input-150by150", ["layers", "vgg16", "--input", "150by150"], "--input takes a size HxW such as 150x150"),
    ("layers-input-dense-top", ["layers", "vgg16", "--input", "150x150"], "vgg16 with its dense top needs 224x224x3"),
    ("activations-unknown-layer", ["activations", *DIGITS, "--image", "{tmp}/ok.png", "--layers", "conv9", "--out",
                                   "{out}"], "unknown layer 'conv9' in digits_cnn; valid layers: conv2d"),
    ("filters-unknown-layer", ["filters", *DIGITS, "--layer", "conv9", "--out", "{out}"], "unknown layer 'conv9'"),
    ("gradcam-unknown-layer", ["gradcam", *DIGITS, "--image", "{tmp}/ok.png", "--layer", "conv9", "--out", "{out}"],
     "unknown layer 'conv9'"),
    ("weights-unknown-layer", ["weights", *DIGITS, "--layer", "conv9", "--out", "{out}"], "unknown layer 'conv9'"),
    ("weights-layer-without-weights", ["weights", *DIGITS, "--layer", "max_pooling2d", "--out", "{out}"],
     "'max_pooling2d' of digits_cnn has no weights"),
    ("filters-layer-flatten", ["filters", *DIGITS, "--layer", "flatten", "--size", "28", "--out", "{out}"],
     "flatten has no channels of its own"),
    ("predict-no-classifier", ["predict", "--model", "vgg16_notop", "{tmp}/ok.png"], "has no classifier"),
    ("predict-dense-top-wrong-input", ["predict", *DIGITS, "--input", "32x32", "{tmp}/ok.png"],
     "digits_cnn with its dense top needs 28x28x1 inputs, got 32x32x1"),
    ("weights-input-dense-top", ["weights", *DIGITS, "--input", "32x32", "--out", "{out}"],
     "digits_cnn with its dense top needs 28x28x1 inputs, got 32x32x1"),
    ("model-factory-no-file", ["gradcam", "--model", "{tmp}/nope.py:build", "--input", "16x16", "--image",
                               "{tmp}/ok.png", "--out", "{out}"], "--model {tmp}/nope.py: no such file"),
    ("activations-input-too-small", ["activations", "--model", "vgg16_notop", "--input", "16x16", "--image",
                                     "{tmp}/ok.png", "--out", "{out}"], "input 16x16x3 is too small for vgg16_notop"),
    ("gradcam-no-classifier", ["gradcam", "--model", "vgg16_notop", "--input", "32x32", "--image", "{tmp}/ok.png",
                               "--out", "{out}"], "gradcam needs class scores"),
    ("gradcam-saliency-no-classifier", ["gradcam", "--method", "saliency", "--model", "vgg16_notop", "--input",
                                        "32x32", "--image", "{tmp}/ok.png", "--out", "{out}"],
     "saliency needs class scores"),
    ("gradcam-layer-dense", ["gradcam", *DIGITS, "--image", "{tmp}/ok.png", "--layer", "dense", "--out", "{out}"],
     "no spatial map"),
    ("gradcam-layer-flatten", ["gradcam", *DIGITS, "--image", "{tmp}/ok.png", "--layer", "flatten", "--out",
                               "{out}"], "no spatial map"),
]
NUMBERS = [
    ("octave-scale-0", ["filters", *DIGITS, "--layer", "conv2d", "--octaves", "2", "--octave-scale", "0", "--out",
                        "{out}"], "--octave-scale must be at least 1, got 0.0"),
    ("octave-scale-nan", ["filters", *DIGITS, "--layer", "conv2d", "--octave-scale", "nan", "--out", "{out}"],
     "--octave-scale must be at least 1, got nan"),
    ("octave-scale-negative", ["filters", *DIGITS, "--layer", "conv2d", "--octave-scale=-2", "--out", "{out}"],
     "--octave-scale must be at least 1, got -2.0"),
    ("octaves-0", ["filters", *DIGITS, "--layer", "conv2d", "--octaves", "0", "--out", "{out}"],
     "--octaves must be at least 1, got 0"),
    ("steps-0", ["filters", *DIGITS, "--layer", "conv2d", "--steps", "0", "--out", "{out}"],
     "--steps must be at least 1, got 0"),
    ("steps-negative", ["filters", *DIGITS, "--layer", "conv2d", "--steps=-3", "--out", "{out}"],
     "--steps must be at least 1, got -3"),
    ("size-0", ["filters", *DIGITS, "--layer", "conv2d", "--size", "0", "--out", "{out}"], "--size must be 1..4096"),
    ("size-huge", ["filters", *DIGITS, "--layer", "conv2d", "--size", "100000", "--out", "{out}"],
     "--size must be 1..4096, got 100000"),
    ("size-not-a-number", ["filters", *DIGITS, "--layer", "conv2d", "--size", "abc", "--out", "{out}"],
     "argument --size: invalid int value: 'abc'"),
    ("filters-empty-item", ["filters", *DIGITS, "--layer", "conv2d", "--filters", "1,,2", "--out", "{out}"],
     "no empty items; got '1,,2'"),
    ("filters-not-numbers", ["filters", *DIGITS, "--layer", "conv2d", "--filters", "a,b", "--out", "{out}"],
     "--filters takes comma-separated integers"),
    ("filters-repeated", ["filters", *DIGITS, "--layer", "conv2d", "--filters", "3,3", "--out", "{out}"],
     "lists filter 3 more than once"),
    ("filters-out-of-range", ["filters", *DIGITS, "--layer", "conv2d", "--filters", "3,99", "--out", "{out}"],
     "filter index 99 out of range for conv2d of digits_cnn: valid 0..31"),
    ("count-0", ["filters", *DIGITS, "--layer", "conv2d", "--count", "0", "--out", "{out}"],
     "--count 0 out of range for conv2d"),
    ("count-not-a-number", ["filters", *DIGITS, "--layer", "conv2d", "--count", "many", "--out", "{out}"],
     "--count takes a number or 'all'"),
    ("filters-batch-size-0", ["filters", *DIGITS, "--layer", "conv2d", "--batch-size", "0", "--out", "{out}"],
     "--batch-size must be at least 1"),
    ("per-filter-0", ["filters", *DIGITS, "--layer", "conv2d", "--recipe", "lucid", "--per-filter", "0", "--out",
                      "{out}"], "--per-filter must be 1..64, got 0"),
    ("per-filter-65", ["filters", *DIGITS, "--layer", "conv2d", "--recipe", "lucid", "--per-filter", "65", "--out",
                       "{out}"], "--per-filter must be 1..64, got 65"),
    ("diversity-negative", ["filters", *DIGITS, "--layer", "conv2d", "--recipe", "lucid", "--per-filter", "2",
                            "--diversity=-1", "--out", "{out}"], "--diversity must be at least 0, got -1.0"),
    ("diversity-alone", ["filters", *DIGITS, "--layer", "conv2d", "--recipe", "lucid", "--diversity", "4", "--out",
                         "{out}"], "--diversity pushes apart the patterns of one filter; add --per-filter 2"),
    ("recipe-unknown", ["filters", *DIGITS, "--layer", "conv2d", "--recipe", "deepdream", "--out", "{out}"],
     "unknown recipe 'deepdream'; valid recipes: dlwp1"),
    ("input-one-number", ["activations", *DIGITS, "--input", "150", "--image", "{tmp}/ok.png", "--out", "{out}"],
     "--input takes a size HxW such as 150x150 (height x width; channels come from the model), got '150'"),
    ("input-with-channels", ["predict", *DIGITS, "--input", "64x64x3", "{tmp}/ok.png"], "got '64x64x3'"),
    ("input-zero-side", ["predict", "--model", "xception", "--input", "0x10", "{tmp}/ok.png"],
     "--input 0x10: each side must be 1..4096"),
    ("per-row-0", ["activations", *DIGITS, "--image", "{tmp}/ok.png", "--per-row", "0", "--out", "{out}"],
     "--per-row must be at least 1, got 0"),
    ("bins-0", ["weights", *DIGITS, "--bins", "0", "--out", "{out}"], "--bins must be 1..10000, got 0"),
    ("bins-huge", ["weights", *DIGITS, "--bins", "1000000000", "--out", "{out}"], "--bins must be 1..10000"),
    ("in-channel-out-of-range", ["weights", *DIGITS, "--layer", "conv2d_1", "--in-channel", "99", "--out", "{out}"],
     "input channel 99 out of range"),
    ("in-channel-not-a-number", ["weights", *DIGITS, "--in-channel", "red", "--out", "{out}"],
     "--in-channel takes an index or 'rgb'"),
    ("top-0", ["predict", *DIGITS, "--top", "0", "{tmp}/ok.png"], "--top must be at least 1, got 0"),
    ("samples-0", ["gradcam", *DIGITS, "--method", "smoothgrad", "--samples", "0", "--image", "{tmp}/ok.png",
                   "--out", "{out}"], "--samples must be at least 1, got 0"),
    ("noise-nan", ["gradcam", *DIGITS, "--method", "smoothgrad", "--noise", "nan", "--image", "{tmp}/ok.png",
                   "--out", "{out}"], "--noise must be at least 0, got nan"),
    ("class-out-of-range", ["gradcam", *DIGITS, "--image", "{tmp}/ok.png", "--class", "10", "--out", "{out}"],
     "class index 10 out of range for digits_cnn: valid 0..9"),
    ("class-negative", ["gradcam", *DIGITS, "--image", "{tmp}/ok.png", "--class=-1", "--out", "{out}"],
     "class index -1 out of range"),
    ("preprocessing-unknown", ["predict", *DIGITS, "--preprocessing", "imagenet", "{tmp}/ok.png"],
     "argument --preprocessing: invalid choice: 'imagenet'"),
]
WEIGHTS = [
    ("builtin-nonsense", ["predict", "--weights", "builtin:nonsense", "{tmp}/ok.png"],
     "unknown builtin weights 'nonsense'; valid builtin weights: digits_cnn, fruits_cnn, fashion_cnn"),
    ("builtin-nonsense-with-model", ["predict", "--model", "digits_cnn", "--weights", "builtin:nonsense",
                                     "{tmp}/ok.png"], "unknown builtin weights 'nonsense'; valid builtin weights"),
    ("builtin-for-pretrained-model", ["predict", "--model", "efficientnet_lite0", "--weights", "builtin",
                                      "{tmp}/ok.png"],
     "(efficientnet_lite0 has published weights: --weights pretrained)"),
    ("builtin-other-model", ["predict", "--model", "vgg16", "--weights", "builtin:digits_cnn", "{tmp}/ok.png"],
     "--weights builtin:digits_cnn holds digits_cnn weights, not vgg16"),
    ("weights-missing-file", ["weights", "--weights", "{tmp}/missing.h5", "--out", "{out}"], "weights file not found"),
    ("weights-junk-h5", ["predict", "--weights", "{tmp}/junk.h5", "{tmp}/ok.png"], "{tmp}/junk.h5"),
    ("weights-empty-pth", ["predict", "--weights", "{tmp}/empty.pth", "{tmp}/ok.png"], "{tmp}/empty.pth"),
    ("weights-dir-not-checkpoint", ["predict", "--weights", "{tmp}/notckpt", "{tmp}/ok.png"], "{tmp}/notckpt"),
    ("weights-unknown-architecture", ["predict", "--weights", "{tmp}/odd.h5", "{tmp}/ok.png"],
     "cannot tell which architecture {tmp}/odd.h5 holds (1 weighted layers, first 'dense_x') among the registered "
     "ones: pass --model NAME with one of: vgg16,"),
    ("convert-unknown-architecture", ["weights_convert", "{tmp}/odd.h5", "--dry-run"],
     "among the registered ones: pass --arch NAME with one of: vgg16,"),
    # a state dict that fits nothing: the registered architectures and each command's own option
    ("weights-state-dict-fits-nothing", ["predict", "--weights", "{tmp}/resnet18.pth", "{tmp}/ok.png"],
     "no registered architecture fits this state dict"),
    ("convert-state-dict-fits-nothing", ["weights_convert", "{tmp}/resnet18.pth", "--dry-run"],
     "no registered architecture fits this state dict"),
    ("weights-random-without-model", ["predict", "--weights", "random", "{tmp}/ok.png"],
     "give a model name (--model) or a weights file (--weights)"),
    ("weights-pretrained-unknown", ["predict", "--model", "vgg16", "--weights", "pretrained", "{tmp}/ok.png"],
     "no published pretrained weights are known for vgg16"),
    ("weights-pretrained-without-model", ["predict", "--weights", "pretrained", "{tmp}/ok.png"],
     "--weights pretrained needs --model NAME; published weights exist for efficientnet_lite0"),
    ("weights-builtin-without-model", ["predict", "--weights", "builtin", "{tmp}/ok.png"],
     "--weights builtin needs --model NAME; trained builtin weights exist for digits_cnn"),
    ("weights-file-wrong-model", ["predict", "--model", "vgg16", "--weights", "{fashion}", "{tmp}/ok.png"],
     "does not fit vgg16: layer 'block1_conv1' kernel expected shape (3, 3, 3, 64), found (3, 3, 1, 32)"),
    ("convert-missing-source", ["weights_convert", "{tmp}/missing.h5", "{tmp}/ckpt"], "{tmp}/missing.h5"),
    ("convert-junk-source", ["weights_convert", "{tmp}/junk.h5", "{tmp}/ckpt"], "{tmp}/junk.h5"),
    ("convert-existing-destination", ["weights_convert", "{fashion}", "{tmp}/ckpt_dest"], "already exists"),
]
OUTPUTS = [
    ("out-is-a-file", ["weights", *DIGITS, "--out", "{tmp}/file"], "{tmp}/file is a file; choose another --out"),
    ("out-under-a-file", ["activations", *DIGITS, "--image", "{tmp}/ok.png", "--out", "{tmp}/file/sub"],
     "is a file; choose another --out"),
    ("out-not-writable", ["weights", *DIGITS, "--out", "/proc/jaxviz-out"], "is not writable"),
    ("out-empty", ["weights", *DIGITS, "--out", ""], "the output path is empty"),
    ("out-is-the-input-folder", ["gradcam", *DIGITS, "--image", "{tmp}/photos", "--out", "{tmp}/photos"],
     "is the input folder"),
    ("out-new-parents-removed", ["gradcam", *DIGITS, "--image", "{tmp}/bad.png", "--out", "{tmp}/a/b/out"],
     "cannot read image"),
    ("out-file-blocked-by-directory", ["weights", *DIGITS, "--out", "{tmp}/busy"],
     "a directory of that name is in the way"),
]
FIXTURE_CASES = {"weights-file-wrong-model", "convert-existing-destination"}


def _params(cases):
    return [pytest.param(args, msg, id=case) for case, args, msg in cases]


@pytest.mark.parametrize("args, message", _params(IMAGES + MODELS_AND_LAYERS + NUMBERS + WEIGHTS + OUTPUTS))
def test_bad_input_is_one_line_and_leaves_nothing(tree, capsys, monkeypatch, request, args, message):
    if request.node.callspec.id in FIXTURE_CASES:
        need_fixture("keras/fashion_cnn_keras2.11.h5")
    monkeypatch.setattr(jaxviz.io.images, "MAX_IMAGE_BYTES", 2**20)  # 'big.png' (2 MiB) is over it
    argv = [fill(a, tree) for a in args]
    before = listing(tree["tmp"])
    rc, err = run_inprocess(argv, capsys)
    assert_one_error(rc, err, prog_of(argv), fill(message, tree))
    assert "--arch" not in err or argv[0] == "weights_convert"  # jaxviz's flag is --model
    assert listing(tree["tmp"]) == before


# The same refusals from the Python API: the library names its arguments (model=, arch=, weights=), never a
# flag; the CLI says each through the one mapping (jaxviz.cli.common.as_flags), with its own command's option.
LIBRARY = [  # (call, the Python argument it names, the CLI case that meets the same refusal)
    (lambda t: jaxviz.load_model(weights="pretrained"), "weights='pretrained' needs model=NAME",
     "weights-pretrained-without-model"),
    (lambda t: jaxviz.load_model(weights="builtin"), "weights='builtin' needs model=NAME", "weights-builtin-without-model"),
    (lambda t: jaxviz.load_model(model="efficientnet_lite0", weights="builtin"), "weights='pretrained')",
     "builtin-for-pretrained-model"),
    (lambda t: jaxviz.load_model(model="vgg16", weights="builtin:digits_cnn"), "weights='builtin:digits_cnn' holds",
     "builtin-other-model"),
    (lambda t: jaxviz.load_model(weights="random"), "(model=) or a weights file (weights=)", "weights-random-without-model"),
    (lambda t: jaxviz.load_model(weights=f"{t}/odd.h5"), "pass model=NAME with one of", "weights-unknown-architecture"),
    (lambda t: load_keras_weights(f"{t}/odd.h5"), "pass arch=NAME with one of", "convert-unknown-architecture"),
    (lambda t: jaxviz.load_model(weights=f"{t}/resnet18.pth"), "pass model=NAME", "weights-state-dict-fits-nothing"),
    (lambda t: load_torch_weights(f"{t}/resnet18.pth"), "pass arch=NAME", "convert-state-dict-fits-nothing"),
]


@pytest.mark.parametrize("call, argument, case", LIBRARY, ids=[c for *_, c in LIBRARY])
def test_library_names_arguments_and_the_cli_flags(tree, capsys, call, argument, case):
    with pytest.raises(JaxvizError) as e:
        call(tree["tmp"])
    msg = str(e.value)
    assert argument in msg and not re.search(r"--[a-z]", msg), msg
    args = next(a for c, a, _ in WEIGHTS if c == case)
    argv = [fill(a, tree) for a in args]
    rc, err = run_inprocess(argv, capsys)
    line = err.splitlines()[-1]
    flag = {"model": "--model", "arch": "--arch", "weights": "--weights"}
    assert rc == 2 and "=NAME" not in line and "='" not in line, line
    named = {a for a in flag if f"{a}=" in msg}
    # the CLI line speaks the command's own flag for each argument the library named: weights_convert --arch,
    # every jaxviz command --model (the torch and Keras readers' arch= is load_model's model=)
    own = {"arch": "--arch" if argv[0] == "weights_convert" else "--model"}
    assert all({**flag, **own}[a] in line for a in named), (named, line)
    if argv[0] != "weights_convert":
        assert "--arch" not in line
    assert line == f"{prog_of(argv)}: error: {as_flags(msg)}"  # the same message, said as flags


def test_as_flags_says_each_argument_form_as_its_flag():
    said = {"pass arch=NAME with one of: a": "pass --arch NAME with one of: a",
            "weights='builtin:digits_cnn' holds": "--weights builtin:digits_cnn holds",
            'weights="pretrained" needs model=NAME;': "--weights pretrained needs --model NAME;",
            "give a model name (model=) or": "give a model name (--model) or",
            "use size=51 or more; pick in_channel=0..2": "use --size 51 or more; pick --in-channel 0..2",
            "or pass overwrite=True": "or pass --overwrite", "out of range (in classes)": "out of range (--class)",
            # not an argument: another word, a value that is not a literal
            "layer 'submodel=NAME' and model=None": "layer 'submodel=NAME' and model=None"}
    assert {m: as_flags(m) for m in said} == said


def test_out_is_checked_before_any_work(tree, capsys):
    """gradcam (and every command with --out) refuses a bad --out before it loads a model: the error is
    the only line on stderr (no weights line, no preprocessing line)."""
    for cmd in (["gradcam", *DIGITS, "--image", "{tmp}/ok.png"], ["activations", *DIGITS, "--image", "{tmp}/ok.png"],
                ["filters", *DIGITS, "--layer", "conv2d"], ["weights", *DIGITS]):
        argv = [fill(a, tree) for a in cmd + ["--out", "{tmp}/file/sub"]]
        rc, err = run_inprocess(argv, capsys)
        assert rc == 2 and err.splitlines() == [f"{prog_of(argv)}: error: output path {tree['tmp']}/file/sub cannot "
                                                f"be a directory: {tree['tmp']}/file is a file; choose another --out"]


# A few of the same cases through a real process: exit status, and no traceback on the way out.
SUBPROCESS = ["size-not-a-number", "image-decompression-bomb", "layers-input-150by150", "out-is-a-file",
              "builtin-nonsense", "convert-missing-source"]


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_in_a_real_process(tree, case):
    args, message = next((a, m) for c, a, m in IMAGES + MODELS_AND_LAYERS + NUMBERS + WEIGHTS + OUTPUTS if c == case)
    argv = [fill(a, tree) for a in args]
    before = listing(tree["tmp"])
    cmd = [sys.executable, "-m", "weights_convert.cli", *argv[1:]] if argv[0] == "weights_convert" else \
        [sys.executable, "-m", "jaxviz.cli", *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert_one_error(r.returncode, r.stderr, prog_of(argv), fill(message, tree))
    assert listing(tree["tmp"]) == before


# Valid input that must simply work (issue 19, defect 3).
@pytest.mark.slow
def test_xception_one_filter_shortcut_runs(tmp_path, capsys):
    rc, err = run_inprocess(["filters", "--model", "xception_notop", "--layer", "conv2d", "--size", "80", "--steps",
                             "2", "--count", "2", "--out", str(tmp_path / "out")], capsys)
    assert rc == 0, err
    z = np.load(tmp_path / "out" / "conv2d.npz")
    assert z["patterns"].shape == (2, 80, 80, 3) and np.isfinite(z["patterns"]).all()


# -- signals: a long `filters` run stopped from outside --------------------------------------------
@pytest.mark.parametrize("sig, status, word",
                         [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_during_a_long_run_leaves_nothing(tmp_path, sig, status, word):
    out = tmp_path / "out"
    # A job started in the background (`cmd &`, as CI runners may) inherits SIGINT ignored, and Python then
    # keeps ignoring it; the child restores Python's own handler so that Ctrl-C is what is tested.
    child = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from jaxviz.cli import entry; entry()")
    p = subprocess.Popen([sys.executable, "-c", child, "filters", "--model", "fashion_cnn", "--layer",
                          "conv2d_1", "--count", "all", "--batch-size", "1", "--steps", "400", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()  # still working, with its stage in place
    assert list(tmp_path.glob(".out.partial-*"))
    time.sleep(2.0)  # into the model loading / compiling / ascent
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == status, err
    assert "Traceback" not in err and err.splitlines()[-1] == f"jaxviz filters: {word}" + \
        (" (SIGTERM)" if sig == signal.SIGTERM else "") + "; no partial output was left", err
    assert listing(str(tmp_path)) == []
