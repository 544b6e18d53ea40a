"""ONNX's own backend node tests (onnx.backend.test) for every op jaxviz.nn.onnx implements, through an
``onnx.backend.base.Backend`` adapter around :func:`jaxviz.nn.onnx.run_graph`.

The node tests feed raw arrays in the op's own layout, and compare with ONNX's expected outputs at the
test's own tolerance (rtol 1e-3, atol 1e-7 unless the case says otherwise). INCLUDE names the tests of
the implemented ops; EXCLUDE lists, with the reason, the cases out of scope. BackendTest collects the
simple, PyTorch-converted and real-model tests as well as the node tests, and a few of their names match
INCLUDE (``expand_shape_model1``, ``softmax_lastdim``): they run too. ``python
tests/test_onnx_backend.py`` prints the counts per kind (included, excluded and why).
"""

from __future__ import annotations

import re
import sys

import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[test])")

import numpy as np  # noqa: E402
import onnx.backend.test  # noqa: E402
from onnx.backend.base import Backend, BackendRep  # noqa: E402

from jaxviz.nn.onnx import run_graph  # noqa: E402


class JaxvizRep(BackendRep):
    def __init__(self, model):
        self.model = model

    def run(self, inputs, **kwargs):
        return tuple(run_graph(self.model, list(inputs)))


class JaxvizBackend(Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return JaxvizRep(model)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


# The node tests of the implemented ops (names as the test suite writes them, without the _cpu suffix).
INCLUDE = [
    "basic_conv_.*", "conv_with_.*", "convtranspose.*", "batchnorm_.*", "relu", "leakyrelu.*", "prelu_.*",
    "clip.*", "sigmoid.*", "hardsigmoid.*", "hardswish.*", "tanh.*", "erf", "gelu_.*", "softmax_.*",
    "add.*", "sub.*", "mul.*", "div.*", "pow.*", "sqrt.*", "gemm_.*", "matmul_.*", "maxpool_.*",
    "averagepool_.*", "globalaveragepool.*", "globalmaxpool.*", "layer_normalization_.*", "flatten_.*",
    "reshape_.*", "transpose_.*", "concat_.*", "split_.*", "slice.*", "gather_.*", "squeeze.*",
    "unsqueeze.*", "expand_.*", "constant_pad.*", "edge_pad", "reflect_pad", "wrap_pad", "resize_.*",
    "shape.*", "constantofshape_.*", "constant", "cast_.*", "identity", "where_.*", "equal.*",
    "range_.*", "reduce_mean_.*", "reduce_sum_.*", "upsample_.*",
]

# Excluded cases, each with the reason (regex over the name without test_ and _cpu).
EXCLUDE = {
    r".*_expanded(_ver\d+)?": "the function-expanded forms run other ops (Less, Exp, ...) that are not in scope",
    r"batchnorm_.*training.*": "training-only (training_mode=1), refused by design",
    r"(cast|.*)_.*(string|STRING|bfloat16|BFLOAT16|FLOAT8|float8|FLOAT4|float4|e4m3|e5m2|INT4|int4|UINT4|"
    r"uint4|INT2|int2|UINT2|uint2|FLOAT16|float16).*": "string, float16, bfloat16, float8/4 and 2/4-bit types: jaxviz runs float32",
    r".*(uint64|uint32|int64_int64|float32_uint64|float32_uint32).*": "64-bit/unsigned 32-bit integer "
    "arithmetic: JAX runs with x64 off (int32); image models use none",
    r"identity_(sequence|opt)": "sequence and optional types are not tensors",
    r"equal_string.*": "string types",
    r"maxpool_with_argmax.*": "MaxPool's Indices output is not supported (refused by name)",
    r"maxpool_2d_uint8": "integer max pooling of a uint8 image: inputs are float32",
    r"resize_.*tf_crop_and_resize.*": "tf_crop_and_resize (roi) is not supported (refused by name)",
    r"resize_.*antialias.*": "antialias=1 is not supported (refused by name)",
    r"resize_downsample_scales_(linear|cubic)_align_corners": "ONNX's expected values take the unrounded "
    "input x scale as the output length in align_corners; ONNX Runtime (the oracle here) takes the output size, "
    "and jaxviz matches ONNX Runtime ([1, 4], not [1, 3.142857])",
    r"split_to_sequence.*": "sequence outputs",
    r"gather_elements.*": "GatherElements is another op",
    r"reduce_sum_square.*|reduce_sum_exp.*|reduce_mean_.*_empty_set|reduce_sum_empty_set.*": "other ops "
    "(ReduceSumSquare, ReduceLogSumExp) or empty reductions",
    r"split_zero_size_splits.*|slice_start_out_of_bounds": "zero-size tensors: no image model makes them",
    r"clip_default_int8.*|clip_.*int8.*": "int8 clipping: inputs are float32",
    r"softmax_cross_entropy.*|sce_.*": "SoftmaxCrossEntropyLoss is a training loss",
    r"squeezenet": "a real-model test: its model is downloaded at run time, and CI has no network",
}


def _load():
    backend_test = onnx.backend.test.BackendTest(JaxvizBackend, __name__)
    for p in INCLUDE:
        backend_test.include(rf"^test_(?:{p})_cpu$")
    for p in EXCLUDE:
        backend_test.exclude(rf"^test_(?:{p})_cpu$")
    return backend_test


backend_test = _load()
globals().update(backend_test.test_cases)


KINDS = ("node", "real", "simple", "pytorch-converted", "pytorch-operator")


def _counts() -> dict:
    """Over every kind of ONNX backend test (node tests, and the simple, PyTorch-converted, PyTorch-operator
    and real-model tests that BackendTest also collects: a name such as ``expand_shape_model1`` or
    ``softmax_lastdim`` matches INCLUDE too): per kind the tests matched by INCLUDE, and those run (not
    EXCLUDEd); excluded ones by reason."""
    from onnx.backend.test.loader import load_model_tests

    out = {"matched": {}, "run": {}, "excluded": {}}
    for kind in KINDS:
        names = [c.name[len("test_"):] for c in load_model_tests(kind=kind)]
        inc = [n for n in names if any(re.fullmatch(p, n) for p in INCLUDE)]
        out["matched"][kind] = len(inc)
        for n in inc:
            why = next((r for p, r in EXCLUDE.items() if re.fullmatch(p, n)), None)
            if why:
                out["excluded"].setdefault(why, []).append(n)
            else:
                out["run"].setdefault(kind, []).append(n)
    return out


if __name__ == "__main__":  # the counts for the docs
    c = _counts()
    run = sum(map(len, c["run"].values()))
    print(f"matched {sum(c['matched'].values())}, run {run}, excluded {sum(map(len, c['excluded'].values()))}")
    for kind in KINDS:
        print(f"  {kind}: matched {c['matched'][kind]}, run {len(c['run'].get(kind, []))}"
              + (f" ({' '.join(c['run'][kind])})" if kind != "node" and c["run"].get(kind) else ""))
    for why, ns in c["excluded"].items():
        print(f"  {len(ns):3d} {why}: {' '.join(ns)[:300]}")
    sys.exit(0)
