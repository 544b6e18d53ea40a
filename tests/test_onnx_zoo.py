"""Real torchvision/timm exports (made by ``benchmarks/onnx_zoo.py export`` with torch, outside CI) in the
folder ``$JAXVIZ_ONNX_ZOO``: every node of each file equals ONNX Runtime's within 1e-5 of its scale
(max|diff| / max|ref|), the logits too and the top-1 class is the same; where torch and pytorch-grad-cam
are installed (the fixture maker's venv), Grad-CAM at jaxviz's default layer equals pytorch-grad-cam's on
the same PyTorch module within 1e-4 (each image's 3 highest classes; a ViT's token layer through
pytorch-grad-cam's reshape_transform), and not every map is zero. Skipped, with the reason, when the
folder is not there."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'jaxviz[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")

ZOO = os.environ.get("JAXVIZ_ONNX_ZOO")
FILES = sorted(glob.glob(os.path.join(ZOO, "*.onnx"))) if ZOO and os.path.isdir(ZOO) else []
WHY = ("no ONNX zoo: set JAXVIZ_ONNX_ZOO to a folder made by `python -m benchmarks.onnx_zoo export --out DIR` "
       "(needs torch, torchvision, timm; see benchmarks/onnx_zoo.py)") if not FILES else ""

pytestmark = pytest.mark.slow


def _input(model):
    import jax.numpy as jnp

    from jaxviz.nn.preprocess import preprocess

    pixels = np.random.default_rng(0).integers(0, 256, (2, *model.input_shape)).astype(np.float32)
    return np.asarray(preprocess(jnp.asarray(pixels), "torch"))


@pytest.mark.parametrize("path", FILES or [pytest.param(None, marks=pytest.mark.skip(reason=WHY))],
                         ids=[os.path.basename(f) for f in FILES] or ["no-zoo"])
def test_every_node_equals_onnxruntime(path):
    import onnx

    from benchmarks.onnx_zoo import compare_nodes
    from jaxviz import load_model

    loaded = load_model(None, path)
    res = compare_nodes(loaded.model, loaded.params, onnx.load(path), _input(loaded.model))
    assert res["nodes_compared"] + res["int64_taps_skipped"] == len(loaded.model.layer_names)
    assert res["worst_node_err"] <= 1e-5, res
    assert res["logits_err"] <= 1e-5 and res["top1_equal"], res


@pytest.mark.parametrize("path", FILES or [pytest.param(None, marks=pytest.mark.skip(reason=WHY))],
                         ids=[os.path.basename(f) for f in FILES] or ["no-zoo"])
def test_gradcam_equals_pytorch_grad_cam(path):
    pytest.importorskip("torch", reason="torch is not installed: Grad-CAM is compared where it is")
    pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam is not installed")
    import onnx

    from benchmarks.onnx_zoo import build, gradcam_vs_torch, model_of, torch_module_of
    from jaxviz import load_model
    from jaxviz.nn import policy

    name = model_of(path)
    if name is None:
        pytest.skip(f"{os.path.basename(path)} is not one of benchmarks/onnx_zoo.py's exports")
    loaded = load_model(None, path)
    module = build(name)
    layer = policy.cam_layer(loaded.model)
    torch_layer = torch_module_of(module, loaded.model, onnx.load(path, load_external_data=False), layer)
    assert torch_layer is not None, f"no PyTorch module outputs jaxviz's default layer {layer}"
    res = gradcam_vs_torch(module, loaded.model, loaded.params, _input(loaded.model), layer, torch_layer, time16=False)
    assert res["gradcam_err"] <= 1e-4 and res["gradcam_nonzero_maps"] > 0, res  # not all maps zero on both sides
