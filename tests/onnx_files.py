"""Small ONNX files built with onnx.helper for the ONNX reader and CLI tests (no torch needed)."""

from __future__ import annotations

import os

import numpy as np


def small_cnn(seed: int = 0, external: str | None = None, folder: str | None = None, batch: int | str = 1):
    """A channels-first CNN (Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm) on batch x 3x32x32,
    named like a torch export (``/conv1/Conv``); ``external``: store the weights as external data in that
    file of ``folder``; ``batch``: the input's first dimension (a name such as ``"N"`` leaves it open)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * (2.0 / np.prod(s[1:])) ** 0.5).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(w(8, 3, 3, 3), "conv1.weight"), numpy_helper.from_array(w(8) * 0.1, "conv1.bias"),
             numpy_helper.from_array(w(16, 8, 3, 3), "conv2.weight"),
             numpy_helper.from_array(w(16) * 0.1, "conv2.bias"),
             numpy_helper.from_array(w(5, 16), "fc.weight"), numpy_helper.from_array(w(5) * 0.1, "fc.bias")]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="/conv1/Conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="/conv2/Conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/relu2/Relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="/avgpool/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/Flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                [batch, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external:
        from onnx.external_data_helper import convert_model_to_external_data
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=external, size_threshold=0)
        onnx.save_model(model, os.path.join(folder, "model.onnx"))  # writes the data file next to it
    return model


def save(model, path) -> str:
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return os.fspath(path)


def resnet18_file(folder) -> tuple[str | None, str]:
    """A real torchvision ResNet-18 export (random weights, opset 17, TorchScript exporter, batch-norm
    folded into the convolutions as torch exports it): ``$JAXVIZ_ONNX_ZOO/resnet18_opset17.onnx`` when
    that folder has it, else exported into ``folder`` now where torch and torchvision are installed (by
    ``benchmarks/onnx_zoo.py``, a few seconds). Returns ``(path, "")``, or ``(None, why)`` without either."""
    import importlib.util

    from benchmarks.onnx_zoo import export, file_name

    zoo = os.environ.get("JAXVIZ_ONNX_ZOO")
    if zoo and os.path.isfile(os.path.join(zoo, file_name("resnet18", 17))):
        return os.path.join(zoo, file_name("resnet18", 17)), ""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return None, ("no ResNet-18 ONNX file: set JAXVIZ_ONNX_ZOO to a folder made by `python -m benchmarks.onnx_zoo "
                      "export`, or install torch and torchvision to export one at test time")
    export(os.fspath(folder), only=["resnet18"], opsets=(17,))
    return os.path.join(os.fspath(folder), file_name("resnet18", 17)), ""
