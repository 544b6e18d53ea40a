"""ONNX graphs built with onnx.helper, imported by jaxviz.nn.onnx.from_onnx and compared node by node with
ONNX Runtime (every node's output within 1e-5 of its scale: max|diff| / max|ref|), and the model protocol
on an imported graph (taps, perturbations, gradients against finite differences, no recompilation)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[test])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

import jaxviz  # noqa: E402
from jaxviz.errors import JaxvizError  # noqa: E402
from jaxviz.nn import policy  # noqa: E402
from jaxviz.nn.onnx import from_onnx, run_graph  # noqa: E402

TOL = 1e-5


def _w(rng, name, shape, scale=0.3):
    return nh.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)


def _c(name, values, dtype=np.int64):
    return nh.from_array(np.asarray(values, dtype), name)


def _model(nodes, inits, in_shape, out_name="y", opset=17, in_name="x"):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info(in_name, T.FLOAT, ["N", *in_shape[1:]])],
                     [h.make_tensor_value_info(out_name, T.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _ort_all(m, feeds):
    """ONNX Runtime's value of every node output: each added to the graph outputs (with its inferred type)."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    inferred = onnx.shape_inference.infer_shapes(m2)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    have = {o.name for o in m2.graph.output}
    for n in m2.graph.node:
        for o in n.output:
            if o and o not in have:
                m2.graph.output.append(h.make_tensor_value_info(o, types.get(o, T.FLOAT), None))
                have.add(o)
    s = ort.InferenceSession(m2.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feeds)))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) if b.size else 0.0


def check_every_node(m, x_nhwc, input_hw=None):
    """Import ``m``, tap every layer, compare each with ONNX Runtime's value of the node output; returns
    the worst relative error and the model."""
    model, params = from_onnx(m, input_hw=input_hw)
    feed = np.transpose(x_nhwc, (0, 3, 1, 2)) if model.channels_first else x_nhwc
    ref = _ort_all(m, {model.input_name: feed})
    out = model.run(params, jnp.asarray(x_nhwc), taps=model.layer_names)
    worst = 0.0
    for layer, value in model.layer_values:
        r = np.asarray(model.view(layer, ref[value]))
        if np.issubdtype(r.dtype, np.floating):
            err = _rel(out.taps[layer], r)
            assert err <= TOL, f"{layer} ({value}): {err:.2e}"
            worst = max(worst, err)
        else:
            np.testing.assert_array_equal(np.asarray(out.taps[layer]), r, err_msg=layer)
    r = ref[model.output_names[0]]
    assert _rel(out.output, np.asarray(model.view(model.output_names[0], r))) <= TOL
    return worst, model, params


def cnn_graph(opset=17):
    """A small CNN with what torchvision's and Paddle's CNN exports use: grouped, dilated, SAME and asymmetric
    convolutions, batch norm, the hard activations, squeeze-and-excite, ceil-mode pooling, a residual Add."""
    rng = np.random.default_rng(0)
    n = h.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="/features/features.0/features.0.0/Conv", pads=[1, 1, 1, 1],
          strides=[2, 2]),
        n("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["bn1"], name="/features/features.0/features.0.1/"
          "BatchNormalization", epsilon=1e-3),
        n("HardSwish", ["bn1"], ["a1"], name="/features/features.0/features.0.2/HardSwish"),
        n("Conv", ["a1", "wd"], ["c2"], name="/features/features.1/block/block.0/Conv", group=8, pads=[2, 2, 2, 2],
          dilations=[2, 2], kernel_shape=[3, 3]),
        n("Relu", ["c2"], ["a2"], name="/features/features.1/block/block.1/Relu"),
        # squeeze-and-excite
        n("GlobalAveragePool", ["a2"], ["se0"], name="/features/features.1/se/avgpool/GlobalAveragePool"),
        n("Conv", ["se0", "ws1", "bs1"], ["se1"], name="/features/features.1/se/fc1/Conv"),
        n("Relu", ["se1"], ["se2"], name="/features/features.1/se/relu/Relu"),
        n("Conv", ["se2", "ws2", "bs2"], ["se3"], name="/features/features.1/se/fc2/Conv"),
        n("HardSigmoid", ["se3"], ["se4"], name="/features/features.1/se/hs/HardSigmoid", alpha=1 / 6, beta=0.5),
        n("Mul", ["se4", "a2"], ["se5"], name="/features/features.1/se/Mul"),
        n("Conv", ["se5", "w3", "b3"], ["c3"], name="/features/features.2/Conv", auto_pad="SAME_UPPER",
          kernel_shape=[2, 2]),
        n("Add", ["c3", "a1"], ["r3"], name="/features/features.2/Add"),
        n("Clip", ["r3", "zero", "six"], ["a3"], name="/features/features.3/Clip"),
        n("MaxPool", ["a3"], ["p1"], name="/pool1/MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        n("AveragePool", ["p1"], ["p2"], name="/pool2/AveragePool", kernel_shape=[2, 2], strides=[2, 2],
          pads=[1, 1, 0, 0], count_include_pad=1, ceil_mode=1),
        n("PRelu", ["p2", "slope"], ["a4"], name="/act/PRelu"),
        n("LeakyRelu", ["a4"], ["a5"], name="/act2/LeakyRelu", alpha=0.2),
        n("GlobalAveragePool", ["a5"], ["gap"], name="/avgpool/GlobalAveragePool"),
        n("Flatten", ["gap"], ["f"], name="/Flatten"),
        n("Gemm", ["f", "wf", "bf"], ["logits"], name="/classifier/classifier.1/Gemm", transB=1),
        n("Softmax", ["logits"], ["y"], name="/Softmax", axis=1),
    ]
    inits = [
        _w(rng, "w1", (8, 3, 3, 3)), _w(rng, "b1", (8,)),
        _w(rng, "g1", (8,)), _w(rng, "be1", (8,)), _w(rng, "m1", (8,)),
        nh.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "v1"),
        _w(rng, "wd", (8, 1, 3, 3)), _w(rng, "ws1", (4, 8, 1, 1)), _w(rng, "bs1", (4,)),
        _w(rng, "ws2", (8, 4, 1, 1)), _w(rng, "bs2", (8,)), _w(rng, "w3", (8, 8, 2, 2)), _w(rng, "b3", (8,)),
        nh.from_array(np.float32(0), "zero"), nh.from_array(np.float32(6), "six"),
        _w(rng, "slope", (8, 1, 1)), _w(rng, "wf", (5, 8)), _w(rng, "bf", (5,)),
    ]
    return _model(nodes, inits, [1, 3, 19, 19], opset=opset)


def vit_graph(gelu_op=False, opset=17, cls_token=False):
    """A ViT-like block as torch.onnx writes it: patch embedding, Shape -> Gather -> Concat -> Reshape,
    Transpose, LayerNormalization, attention (MatMul, Div, Softmax), Erf-GELU (or the Gelu op), a mean head;
    ``cls_token``: a class token (Expand, Concat in front of the 16 patch tokens) that the head reads
    alone (Gather on the token axis), as torchvision's ViT."""
    rng = np.random.default_rng(1)
    n = h.make_node
    D, heads = 8, 2
    nodes = [
        n("Conv", ["x", "wp", "bp"], ["pe"], name="/patch_embed/proj/Conv", strides=[4, 4], kernel_shape=[4, 4]),
        n("Shape", ["pe"], ["s"], name="/Shape"),
        n("Gather", ["s", "i0"], ["s0"], name="/Gather", axis=0),
        n("Gather", ["s", "i1"], ["s1"], name="/Gather_1", axis=0),
        n("Unsqueeze", ["s0", "ax0"], ["u0"], name="/Unsqueeze"),
        n("Unsqueeze", ["s1", "ax0"], ["u1"], name="/Unsqueeze_1"),
        n("Concat", ["u0", "u1", "m1"], ["shp"], name="/Concat", axis=0),
        n("Reshape", ["pe", "shp"], ["tok0"], name="/Reshape"),
        n("Transpose", ["tok0"], ["tok"] if not cls_token else ["patches"], name="/Transpose", perm=[0, 2, 1]),
    ]
    if cls_token:
        nodes += [n("Concat", ["u0", "one_i", "dim"], ["clsshape"], name="/Concat_1", axis=0),
                  n("Expand", ["cls", "clsshape"], ["clsb"], name="/Expand"),
                  n("Concat", ["clsb", "patches"], ["tok"], name="/Concat_2", axis=1)]
    nodes += [
        n("LayerNormalization", ["tok", "ln1g", "ln1b"], ["ln1"], name="/blocks/blocks.0/norm1/LayerNormalization",
          epsilon=1e-6, axis=-1),
        n("MatMul", ["ln1", "wqkv"], ["qkv0"], name="/blocks/blocks.0/attn/qkv/MatMul"),
        n("Add", ["qkv0", "bqkv"], ["qkv1"], name="/blocks/blocks.0/attn/qkv/Add"),
        n("Reshape", ["qkv1", "qkvshape"], ["qkv2"], name="/blocks/blocks.0/attn/Reshape"),
        n("Transpose", ["qkv2"], ["qkv"], name="/blocks/blocks.0/attn/Transpose", perm=[2, 0, 3, 1, 4]),
        n("Split", ["qkv", "ones3"], ["q0", "k0", "v0"], name="/blocks/blocks.0/attn/Split", axis=0),
        n("Squeeze", ["q0", "ax0"], ["q"], name="/blocks/blocks.0/attn/Squeeze"),
        n("Squeeze", ["k0", "ax0"], ["k"], name="/blocks/blocks.0/attn/Squeeze_1"),
        n("Squeeze", ["v0", "ax0"], ["v"], name="/blocks/blocks.0/attn/Squeeze_2"),
        n("Transpose", ["k"], ["kt"], name="/blocks/blocks.0/attn/Transpose_1", perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "kt"], ["att0"], name="/blocks/blocks.0/attn/MatMul"),
        n("Div", ["att0", "sqrtd"], ["att1"], name="/blocks/blocks.0/attn/Div"),
        n("Softmax", ["att1"], ["att"], name="/blocks/blocks.0/attn/Softmax", axis=-1),
        n("MatMul", ["att", "v"], ["o0"], name="/blocks/blocks.0/attn/MatMul_1"),
        n("Transpose", ["o0"], ["o1"], name="/blocks/blocks.0/attn/Transpose_2", perm=[0, 2, 1, 3]),
        n("Reshape", ["o1", "tokshape"], ["o2"], name="/blocks/blocks.0/attn/Reshape_1"),
        n("MatMul", ["o2", "wproj"], ["o3"], name="/blocks/blocks.0/attn/proj/MatMul"),
        n("Add", ["o3", "tok"], ["r1"], name="/blocks/blocks.0/Add"),
        n("LayerNormalization", ["r1", "ln2g", "ln2b"], ["ln2"], name="/blocks/blocks.0/norm2/LayerNormalization",
          epsilon=1e-6, axis=-1),
        n("MatMul", ["ln2", "wfc1"], ["h0"], name="/blocks/blocks.0/mlp/fc1/MatMul"),
    ]
    if gelu_op:
        nodes.append(n("Gelu", ["h0"], ["h4"], name="/blocks/blocks.0/mlp/act/Gelu"))
    else:
        nodes += [
            n("Div", ["h0", "sqrt2"], ["h1"], name="/blocks/blocks.0/mlp/act/Div"),
            n("Erf", ["h1"], ["h2"], name="/blocks/blocks.0/mlp/act/Erf"),
            n("Add", ["h2", "one"], ["h3"], name="/blocks/blocks.0/mlp/act/Add"),
            n("Mul", ["h0", "h3"], ["h3b"], name="/blocks/blocks.0/mlp/act/Mul"),
            n("Mul", ["h3b", "half"], ["h4"], name="/blocks/blocks.0/mlp/act/Mul_1"),
        ]
    nodes += [
        n("MatMul", ["h4", "wfc2"], ["h5"], name="/blocks/blocks.0/mlp/fc2/MatMul"),
        n("Add", ["h5", "r1"], ["r2"], name="/blocks/blocks.0/Add_1"),
        n("Gather", ["r2", "i0"], ["pooled"], name="/Gather_2", axis=1) if cls_token else
        n("ReduceMean", ["r2", "ax1"] if opset >= 18 else ["r2"], ["pooled"], name="/ReduceMean", keepdims=0,
          **({} if opset >= 18 else {"axes": [1]})),
        n("Gemm", ["pooled", "wh", "bh"], ["y"], name="/head/Gemm", transB=1),
    ]
    f32 = np.float32
    inits = [
        _w(rng, "wp", (D, 3, 4, 4)), _w(rng, "bp", (D,)), _c("i0", 0), _c("i1", 1), _c("ax0", [0]), _c("ax1", [1]),
        _c("m1", [-1]), _c("ones3", [1, 1, 1]), _c("qkvshape", [0, -1, 3, heads, D // heads]),
        _c("tokshape", [0, -1, D]),
        nh.from_array(rng.uniform(0.5, 1.5, D).astype(f32), "ln1g"), _w(rng, "ln1b", (D,)),
        nh.from_array(rng.uniform(0.5, 1.5, D).astype(f32), "ln2g"), _w(rng, "ln2b", (D,)),
        _w(rng, "wqkv", (D, 3 * D)), _w(rng, "bqkv", (3 * D,)), _w(rng, "wproj", (D, D)),
        nh.from_array(f32(np.sqrt(D // heads)), "sqrtd"), _w(rng, "wfc1", (D, 16)), _w(rng, "wfc2", (16, D)),
        nh.from_array(f32(np.sqrt(2)), "sqrt2"), nh.from_array(f32(1), "one"), nh.from_array(f32(0.5), "half"),
        _w(rng, "wh", (4, D)), _w(rng, "bh", (4,)),
    ] + ([_w(rng, "cls", (1, 1, D)), _c("one_i", [1]), _c("dim", [D])] if cls_token else [])
    return _model(nodes, inits, [1, 3, 16, 16], opset=opset)


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# node by node against ONNX Runtime
@pytest.mark.parametrize("opset", [14, 17, 22])
def test_cnn_every_node_equals_onnxruntime(opset):
    worst, model, _ = check_every_node(cnn_graph(opset), _x((2, 19, 19, 3)))
    assert worst < TOL
    assert model.input_shape == (19, 19, 3) and model.channels_first


@pytest.mark.parametrize("gelu_op,opset", [(False, 17), (False, 18), (True, 20), (False, 22)])
def test_vit_block_every_node_equals_onnxruntime(gelu_op, opset):
    worst, model, params = check_every_node(vit_graph(gelu_op, opset), _x((2, 16, 16, 3)))
    # shape arithmetic folded at import: the Reshape's shape is static, none of it is a parameter
    assert "qkvshape" not in params and "i0" not in params and "wqkv" in params
    # the 16 tokens (flattened from the 4 x 4 patch grid, transposed to N x T x C) are shown as the grid
    assert dict(model.shapes())["blocks.0.norm1"] == (4, 4, 8)
    from jaxviz.nn import policy

    assert dict(model.shapes())[policy.cam_layer(model)] == (4, 4, 8)


def test_token_grid_with_class_token():
    """A class token in front of the 16 patch tokens: every token layer is shown as the 4 x 4 grid without
    it (equal to ONNX Runtime's tokens 1..16, unflattened); the block's last maps, of which the head
    reads only the class token, are no CAM candidates, so the default CAM layer is the last map read at
    its grid, inside the attention; a perturbation at a grid token moves the output as
    one at that token of the graph, and the gradient there is the gradient at the token."""
    import jax

    from jaxviz.nn import policy

    m = vit_graph(cls_token=True)
    worst, model, params = check_every_node(m, _x((2, 16, 16, 3)))
    shapes = dict(model.shapes())
    assert shapes["/Concat_2"] == shapes["blocks.0.norm1"] == shapes["blocks.0"] == (4, 4, 8)
    # the qkv projection reads the tokens directly (as timm's ViT; torchvision's attention transposes them to
    # T x N x C first, so there the default is ln_1): it is the last map the head reads at its grid
    assert policy.cam_layer(model) == "blocks.0.attn.qkv"
    assert "blocks.0" not in model.maps_hint() and "blocks.0.norm2" not in model.maps_hint()
    assert "blocks.0.norm1" in model.maps_hint()
    x = jnp.asarray(_x((1, 16, 16, 3)))
    g = jax.grad(lambda d: model.run(params, x, perturb={"blocks.0.norm1": d}).logits[0, 1])(jnp.zeros((1, 4, 4, 8)))
    assert float(jnp.abs(g).max()) > 0  # the class token attends to the patch tokens
    # token 1 + 4 * 2 + 3 of the graph is grid cell (2, 3): a bump there is a bump at that cell
    d = jnp.zeros((1, 4, 4, 8)).at[0, 2, 3, 5].set(1e-2)
    moved = model.run(params, x, perturb={"blocks.0.norm1": d}).logits - model.run(params, x).logits
    assert_close = np.testing.assert_allclose
    assert_close(np.asarray(moved[0, 1]), 1e-2 * float(g[0, 2, 3, 5]), rtol=2e-2, atol=1e-7)


@pytest.mark.parametrize("kernel,stride,pads,ceil,include", [
    (3, 2, [0, 0, 0, 0], 1, 0), (3, 2, [1, 1, 1, 1], 1, 1), (2, 2, [0, 0, 0, 0], 1, 0), (3, 3, [1, 0, 1, 0], 1, 1),
    (3, 2, [1, 1, 1, 1], 0, 0), (2, 3, [0, 1, 0, 1], 1, 0),
])
def test_pooling_ceil_mode_and_padding(kernel, stride, pads, ceil, include):
    nodes = [
        h.make_node("MaxPool", ["x"], ["p"], name="max", kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=pads,
                    ceil_mode=ceil),
        h.make_node("AveragePool", ["x"], ["a"], name="avg", kernel_shape=[kernel] * 2, strides=[stride] * 2,
                    pads=pads, ceil_mode=ceil, count_include_pad=include),
        h.make_node("Add", ["p", "a"], ["y"], name="sum"),
    ]
    check_every_node(_model(nodes, [], [1, 2, 10, 11]), _x((1, 10, 11, 2)))


@pytest.mark.parametrize("auto_pad,group,dil,stride", [
    ("SAME_UPPER", 1, 1, 2), ("SAME_LOWER", 2, 1, 2), ("VALID", 4, 2, 1), ("NOTSET", 4, 3, 2),
])
def test_conv_auto_pad_groups_dilations(auto_pad, group, dil, stride):
    rng = np.random.default_rng(2)
    kw = dict(auto_pad=auto_pad, group=group, dilations=[dil, dil], strides=[stride, stride], kernel_shape=[3, 3])
    if auto_pad == "NOTSET":
        kw["pads"] = [2, 1, 0, 3]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", **kw),
             h.make_node("ConvTranspose", ["c", "wt", "bt"], ["y"], name="deconv", strides=[2, 2], group=group,
                         pads=[1, 0, 0, 1], output_padding=[1, 0], dilations=[dil, 1])]
    inits = [_w(rng, "w", (8, 4 // group, 3, 3)), _w(rng, "b", (8,)), _w(rng, "wt", (8, 8 // group, 3, 2)),
             _w(rng, "bt", (8,))]
    check_every_node(_model(nodes, inits, [1, 4, 13, 12]), _x((1, 13, 12, 4)))


@pytest.mark.parametrize("mode,ctm,nearest,scale", [
    ("nearest", "asymmetric", "floor", 2.0), ("nearest", "half_pixel", "round_prefer_floor", 1.5),
    ("nearest", "align_corners", "round_prefer_ceil", 0.5), ("nearest", "pytorch_half_pixel", "ceil", 1.7),
    ("linear", "half_pixel", None, 2.0), ("linear", "align_corners", None, 1.5), ("linear", "asymmetric", None, 0.6),
    ("linear", "pytorch_half_pixel", None, 0.5), ("cubic", "half_pixel", None, 2.0), ("cubic", "align_corners", None, 0.7),
    ("linear", "half_pixel_symmetric", None, 1.3),
])
def test_resize_modes(mode, ctm, nearest, scale):
    kw = dict(mode=mode, coordinate_transformation_mode=ctm)
    if nearest:
        kw["nearest_mode"] = nearest
    nodes = [h.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", **kw)]
    inits = [nh.from_array(np.array([1, 1, scale, scale], np.float32), "scales")]
    check_every_node(_model(nodes, inits, [1, 2, 7, 9], opset=19), _x((1, 7, 9, 2)))


def test_resize_sizes_and_shape_ops():
    """Resize to sizes computed from Shape (as torch's interpolate(size=...) writes it), Pad, Concat, Slice."""
    n = h.make_node
    nodes = [
        n("Shape", ["x"], ["s"], name="shape"),
        n("Slice", ["s", "st", "en"], ["nc"], name="slice"),
        n("Concat", ["nc", "hw"], ["sizes"], name="cat", axis=0),
        n("Resize", ["x", "", "", "sizes"], ["r"], name="/up/Resize", mode="linear"),
        n("Pad", ["r", "pads"], ["p"], name="/pad/Pad", mode="reflect"),
        n("Slice", ["p", "s0", "e0", "a0", "k0"], ["q"], name="/crop/Slice"),
        n("Concat", ["q", "q"], ["y"], name="/cat/Concat", axis=1),
    ]
    inits = [_c("st", [0]), _c("en", [2]), _c("hw", [10, 6]), _c("pads", [0, 0, 1, 2, 0, 0, 2, 1]),
             _c("s0", [1, -1]), _c("e0", [2 ** 62, 0]), _c("a0", [2, 3]), _c("k0", [2, -2])]
    check_every_node(_model(nodes, inits, [1, 3, 5, 4]), _x((1, 5, 4, 3)))


def test_run_graph_raw_arrays_equal_onnxruntime():
    m = vit_graph()
    x = _x((1, 3, 16, 16))
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert _rel(run_graph(m, {"x": x})[0], ref) <= TOL


# ---------------------------------------------------------------------------------------------
# names, kinds, policy
def test_module_path_names_and_aliases():
    model, _ = from_onnx(cnn_graph())
    names = model.layer_names
    assert names[:3] == ["features.0.0", "features.0.1", "features.0.2"]
    assert "features.1.block.0" in names and "features.1.se.fc1" in names and "classifier.1" in names
    # several nodes in one module: the last takes the module's path, the others keep their node names
    assert "features.2" in names and model.node_of("features.2").op == "Add"
    assert "/features/features.2/Conv" in names
    assert model.resolve("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert model.resolve("c1") == "features.0.0"  # the tensor's name too
    with pytest.raises(JaxvizError, match="unknown layer 'nope'.*valid layers: features.0.0"):
        model.resolve("nope")
    assert [model.kind(n) for n in names[:5]] == ["conv", "norm", "act", "conv", "act"]
    assert model.kind("avgpool") == "global_pool" and model.kind("classifier.1") == "dense"
    assert model.kind("features.2") == "merge" and model.kind("pool1") == "pool"
    assert policy.cam_layer(model) == "act2"  # the last map larger than 1 x 1, the one the head reads
    assert dict(model.shapes())["features.3"] == (10, 10, 8)
    kernel = model.layer_params(from_onnx(cnn_graph())[1], "features.0.0")["kernel"]
    assert kernel.shape == (3, 3, 3, 8)  # H x W x in x out


def test_dynamo_name_scopes_metadata():
    m = cnn_graph()
    node = m.graph.node[0]
    node.name = "conv2d"
    p = node.metadata_props.add()
    p.key, p.value = "pkg.torch.onnx.name_scopes", "['', 'features', 'features.0', 'features.0.0']"
    model, _ = from_onnx(m)
    assert model.layer_names[0] == "features.0.0" and model.resolve("conv2d") == "features.0.0"
    # as torch 2.14's dynamo exporter writes it: the list ends with the FX node, which is no module
    p.value = "['', 'layer4', 'layer4.1', 'layer4.1.conv1', 'convolution_18']"
    q = node.metadata_props.add()
    q.key, q.value = "pkg.torch.onnx.fx_node", "%convolution_18 : [num_users=1] = call_function[...]"
    model, _ = from_onnx(m)
    assert model.layer_names[0] == "layer4.1.conv1" and model.resolve("conv2d") == "layer4.1.conv1"


# ---------------------------------------------------------------------------------------------
# the model protocol on an imported graph
def test_perturbation_gradient_is_the_layer_gradient_and_equals_finite_differences():
    model, params = from_onnx(cnn_graph())
    x = jnp.asarray(_x((1, 19, 19, 3), 3))
    layer = "features.1.block.1"
    shape = model.run(params, x, taps=[layer], output=False).taps[layer].shape
    assert shape == (1, 10, 10, 8)  # N x H x W x C though the graph is N x C x H x W

    def score(d):
        return model.run(params, x, perturb={layer: d}).logits[0, 2]

    g = jax.grad(score)(jnp.zeros(shape))
    rng = np.random.default_rng(4)
    for _ in range(3):
        idx = tuple(int(rng.integers(s)) for s in shape)
        e = jnp.zeros(shape).at[idx].set(1e-2)
        fd = (score(e) - score(-e)) / 2e-2
        assert abs(float(fd) - float(g[idx])) <= 2e-3 * max(1.0, float(jnp.abs(g).max()))
    # and with respect to a weight (params are a pytree of float32 arrays)
    gw = jax.grad(lambda p: model.run(p, x).logits[0, 2])(params)["w1"]
    e = np.zeros(params["w1"].shape, np.float32)
    e[1, 0, 1, 1] = 1e-2
    up = {**params, "w1": params["w1"] + e}
    down = {**params, "w1": params["w1"] - e}
    fd = (model.run(up, x).logits[0, 2] - model.run(down, x).logits[0, 2]) / 2e-2
    assert abs(float(fd) - float(gw[1, 0, 1, 1])) <= 2e-3 * max(1.0, float(jnp.abs(gw).max()))


def test_channel_tap_and_output_false():
    model, params = from_onnx(cnn_graph())
    x = jnp.asarray(_x((2, 19, 19, 3), 5))
    full = model.run(params, x, taps=["features.3"]).taps["features.3"]
    one = model.run(params, x, taps=["features.3"], output=False, channel=("features.3", 5))
    assert one.output is None and one.taps["features.3"].shape == (2, 10, 10, 1)
    np.testing.assert_allclose(one.taps["features.3"][..., 0], full[..., 5], rtol=1e-6)
    out = model.run(params, x)
    np.testing.assert_allclose(out.output, jax.nn.softmax(out.logits, axis=-1), rtol=1e-5)


def test_gradcam_runs_and_second_call_compiles_nothing():
    model, params = from_onnx(cnn_graph())
    x = jnp.asarray(_x((2, 19, 19, 3), 6))
    cams = jaxviz.explain(model, params, x, method="gradcam")
    assert cams.heatmaps.shape[:2] == (2, 1) and np.isfinite(cams.heatmaps).all()
    assert cams.heatmaps.max() > 0
    with jaxviz.count_compilations() as c:
        jaxviz.explain(model, params, jnp.asarray(_x((2, 19, 19, 3), 7)), method="gradcam")
    assert c.count == 0


def test_input_size_follows_the_file_or_input_hw():
    m = cnn_graph()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"  # a dim_param clears dim_value
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "w"
    model, _ = from_onnx(m, input_hw=(27, 23))
    assert model.input_shape == (27, 23, 3)
    assert from_onnx(m)[0].input_shape == (224, 224, 3)
    fixed, _ = from_onnx(cnn_graph())
    with pytest.raises(JaxvizError, match="takes 19x19 inputs"):
        fixed.check_input((1, 20, 20, 3))
    with pytest.raises(JaxvizError, match="input_hw"):
        from_onnx(cnn_graph(), input_hw=(20, 20))


# ---------------------------------------------------------------------------------------------
# refusals: one line naming the op, the node and the opset
def _one(nodes, inits=(), opset=17, shape=(1, 2, 4, 4)):
    return _model(nodes, list(inits), list(shape), opset=opset)


@pytest.mark.parametrize("make,pattern", [
    (lambda: _one([h.make_node("Celu", ["x"], ["y"], name="n1")]),
     r"ONNX op Celu \(node 'n1', opset 17\): not supported; supported ops: .*Conv"),
    (lambda: _one([h.make_node("Relu", ["x"], ["y"], name="n2", foo=1)]),
     r"ONNX op Relu \(node 'n2', opset 17\): attribute foo is not supported"),
    (lambda: _one([h.make_node("Gelu", ["x"], ["y"], name="n3", approximate="cubic")], opset=20),
     r"ONNX op Gelu \(node 'n3', opset 20\): approximate='cubic'"),
    (lambda: _one([h.make_node("Gelu", ["x"], ["y"], name="n4")], opset=17),
     r"ONNX op Gelu \(node 'n4', opset 17\): not supported before opset 20"),
    (lambda: _one([h.make_node("Resize", ["x", "", "sc"], ["y"], name="n5", antialias=1)],
                  [nh.from_array(np.ones(4, np.float32), "sc")], opset=18),
     r"ONNX op Resize \(node 'n5', opset 18\): antialias=1"),
    (lambda: _one([h.make_node("Dropout", ["x", "r", "t"], ["y"], name="n6")],
                  [nh.from_array(np.float32(0.5), "r"), nh.from_array(np.bool_(True), "t")]),
     r"ONNX op Dropout \(node 'n6', opset 17\): training_mode"),
    (lambda: _one([h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="n7",
                               training_mode=1)], [nh.from_array(np.ones(2, np.float32), k) for k in "sbmv"]),
     r"ONNX op BatchNormalization \(node 'n7', opset 17\): training_mode=1"),
    (lambda: _one([h.make_node("Relu", ["x"], ["y"], name="n8", domain="com.example")]),
     r"custom domain 'com.example'"),
    (lambda: _one([h.make_node("If", ["c"], ["y"], name="n9", then_branch=h.make_graph([], "t", [], []),
                               else_branch=h.make_graph([], "e", [], []))], [nh.from_array(np.bool_(True), "c")]),
     r"ONNX op If \(node 'n9', opset 17\): control flow with subgraphs"),
    (lambda: _one([h.make_node("Add", ["x", "b"], ["a"], name="c1"), h.make_node("Relu", ["a"], ["b"], name="c2"),
                   h.make_node("Identity", ["a"], ["y"], name="c3")]),
     r"the ONNX graph has a cycle"),
    (lambda: _one([h.make_node("MaxPool", ["x"], ["y", "i"], name="n10", kernel_shape=[2, 2])]),
     r"ONNX op MaxPool \(node 'n10', opset 17\): the Indices output"),
])
def test_refusals_are_one_line(make, pattern):
    with pytest.raises(JaxvizError, match=pattern) as e:
        from_onnx(make())
    assert "\n" not in str(e.value)


def test_giant_initialiser_dims_refused():
    m = cnn_graph()
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([2 ** 31, 2 ** 31, 4])
    with pytest.raises(JaxvizError, match="too large|out of range"):
        from_onnx(m)


def test_opset_dispatch_falls_back_to_the_nearest_older_handler():
    from jaxviz.nn.onnx import ops as O

    node = O.Node("ReduceSum", "r", ("x",), ("y",), {"axes": [1]}, 11)
    assert O.handler(node).__qualname__.endswith("old")  # axes attribute before opset 13
    node = O.Node("ReduceSum", "r", ("x", "a"), ("y",), {}, 21)
    assert O.handler(node).__qualname__.endswith("new")  # axes input from 13 on, still at 21
    node = O.Node("ReduceMean", "r", ("x",), ("y",), {"axes": [1]}, 17)
    assert O.handler(node).__qualname__.endswith("old")  # ReduceMean's axes became an input only at 18


@pytest.mark.parametrize("opset,mode,scales", [(9, "nearest", [1, 1, 2, 2]), (9, "linear", [1, 1, 2, 3]),
                                               (9, "nearest", [1, 1, 1.5, 2.5]), (7, "nearest", [1.0, 1, 3, 2]),
                                               (8, "linear", [1.0, 1, 1.5, 2])])
def test_upsample_equals_onnxruntime(opset, mode, scales):
    """The deprecated Upsample (opsets 7-9), scales as attribute (7, 8) or input (9), against ONNX Runtime."""
    if opset >= 9:
        node = h.make_node("Upsample", ["x", "sc"], ["y"], name="/up/Upsample", mode=mode)
        inits = [nh.from_array(np.asarray(scales, np.float32), "sc")]
    else:
        node = h.make_node("Upsample", ["x"], ["y"], name="/up/Upsample", mode=mode, scales=[float(s) for s in scales])
        inits = []
    m = _model([node], inits, [1, 2, 6, 8], opset=opset)
    m.ir_version = 4 if opset < 9 else 8
    x = _x((1, 6, 8, 2))
    worst, model, _ = check_every_node(m, x)
    assert model.layer_names == ["up"] and worst <= TOL
    assert model.shapes()[-1][1] == tuple(int(d * s) for d, s in zip((6, 8, 2), (scales[2], scales[3], 1)))


@pytest.mark.parametrize("attrs,shapes", [
    ({}, [(2, 3, 5, 4)] * 3), ({"is_causal": 1}, [(1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8)]),
    ({"q_num_heads": 4, "kv_num_heads": 2, "scale": 0.3}, [(2, 5, 16), (2, 7, 8), (2, 7, 8)]),
    ({"softcap": 2.0}, [(1, 4, 3, 6), (1, 2, 5, 6), (1, 2, 5, 6)])])
def test_attention_op_equals_onnxruntime(attrs, shapes):
    """Opset 23's Attention (torch's dynamo export of ViT writes it): 4-D and 3-D heads, grouped K/V heads,
    causal, softcap, against ONNX Runtime."""
    g = h.make_graph([h.make_node("Attention", ["q", "k", "v"], ["y"], **attrs)], "g",
                     [h.make_tensor_value_info(n, T.FLOAT, None) for n in "qkv"], [h.make_tensor_value_info("y", T.FLOAT, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 23)])
    m.ir_version = 10
    feeds = [_x(s, seed=i) for i, s in enumerate(shapes)]
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, dict(zip("qkv", feeds)))
    assert _rel(run_graph(m, feeds)[0], ref[0]) <= TOL


def test_mod_equals_onnxruntime():
    for fmod, dtype in ((1, np.float32), (0, np.int32), (1, np.int32)):
        g = h.make_graph([h.make_node("Mod", ["a", "b"], ["y"], fmod=fmod)], "g",
                         [h.make_tensor_value_info(n, nh.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)
                          for n in "ab"], [h.make_tensor_value_info("y", nh.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
        m.ir_version = 8
        a = (_x((3, 4), 1) * 7).astype(dtype)
        b = (_x((3, 4), 2) * 3).astype(dtype)
        b[b == 0] = 1
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a, "b": b})[0]
        np.testing.assert_allclose(run_graph(m, [a, b])[0], ref, rtol=1e-6, err_msg=f"fmod={fmod} {dtype}")
