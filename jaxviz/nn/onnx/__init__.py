"""ONNX graphs as jaxviz models: :func:`from_onnx` (a parsed ``onnx.ModelProto`` -> ``(model, params)``)
and :func:`run_graph` (the same handlers on raw arrays). The op handlers are in :mod:`jaxviz.nn.onnx.ops`."""

from jaxviz.nn.onnx.graph import OnnxModel, from_onnx, module_path, run_graph
from jaxviz.nn.onnx.ops import OPS

__all__ = ["OPS", "OnnxModel", "from_onnx", "module_path", "run_graph"]
