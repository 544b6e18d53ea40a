"""Hostile ONNX files: one line each through the CLI, exit 2, nothing read outside the model's folder."""

from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'jaxviz[onnx]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import onnx_files as OF  # noqa: E402
from jaxviz import JaxvizError  # noqa: E402
from jaxviz.io.onnx import prescan, read_onnx  # noqa: E402


def cli_error(capsys, path, *extra) -> str:
    from jaxviz.cli import main

    rc = main(["layers", "--weights", str(path), *extra])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    return lines[0]


def external_model(folder, location: str, offset: int = 0, length: int | None = None):
    """small_cnn with conv1.weight as external data at ``location`` (written as given, unchecked)."""
    m = OF.small_cnn()
    t = next(i for i in m.graph.initializer if i.name == "conv1.weight")
    n = len(t.raw_data) if t.raw_data else 8 * 3 * 3 * 3 * 4
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(n if length is None else length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return OF.save(m, os.path.join(folder, "model.onnx"))


@pytest.fixture
def outside(tmp_path):
    """A file outside the model's folder that a hostile file would read: its bytes are a valid tensor."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(8 * 3 * 3 * 3, np.float32).tobytes())
    (tmp_path / "m").mkdir()
    return secret, tmp_path / "m"


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlinked_dir", "missing", "past_end", "wrong_length",
                                 "directory"])
def test_external_data_outside_the_folder_is_refused(capsys, outside, how):
    secret, folder = outside
    before = os.stat(secret).st_atime_ns
    loc, kw = {"absolute": (str(secret), {}), "dotdot": ("../secret.bin", {}), "symlink": ("link.bin", {}),
               "symlinked_dir": ("d/secret.bin", {}), "missing": ("nope.bin", {}),
               "past_end": ("data.bin", {"offset": 8}), "wrong_length": ("data.bin", {"length": 12}),
               "directory": ("sub", {})}[how]
    (folder / "data.bin").write_bytes(np.ones(8 * 3 * 3 * 3, np.float32).tobytes())
    (folder / "sub").mkdir()
    (folder / "link.bin").symlink_to(secret)
    (folder / "d").symlink_to(secret.parent)
    path = external_model(folder, loc, **kw)
    line = cli_error(capsys, path)
    assert "external" in line or "directory" in line, line
    with pytest.raises(JaxvizError):
        read_onnx(path)
    assert os.stat(secret).st_atime_ns == before or how not in ("absolute", "dotdot", "symlink", "symlinked_dir")


def test_external_data_inside_the_folder_loads_and_equals_inline(tmp_path):
    import jaxviz

    (tmp_path / "ext").mkdir()
    OF.small_cnn(external="weights.bin", folder=str(tmp_path / "ext"))
    inline = OF.save(OF.small_cnn(), tmp_path / "inline.onnx")
    a, b = jaxviz.load_model(None, inline), jaxviz.load_model(None, tmp_path / "ext" / "model.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(a.model.run(a.params, x).output), np.asarray(b.model.run(b.params, x).output))
    os.chdir(tmp_path)  # the data is read from the model's folder, not the working directory
    proto = read_onnx(tmp_path / "ext" / "model.onnx")
    assert all(not t.external_data and t.data_location == 0 for t in proto.graph.initializer)


def graph_file(tmp_path, nodes, inits=(), inputs=None, opset=17, domain_opsets=()):
    inputs = inputs or [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *domain_opsets])
    m.ir_version = 8
    return OF.save(m, tmp_path / "h.onnx")


def test_graph_level_hostility_is_one_line(tmp_path, capsys):
    cases = {
        "cycle": ([helper.make_node("Add", ["input", "b"], ["a"], name="n1"),
                   helper.make_node("Relu", ["a"], ["b"], name="n2"), helper.make_node("Relu", ["b"], ["y"], name="n3")],
                  "cycle"),
        "if": ([helper.make_node("If", ["input"], ["y"], name="branch",
                                 then_branch=helper.make_graph([], "t", [], []),
                                 else_branch=helper.make_graph([], "e", [], []))], "If"),
        "loop": ([helper.make_node("Loop", ["", ""], ["y"], name="loop", body=helper.make_graph([], "b", [], []))],
                 "Loop"),
        "unknown": ([helper.make_node("FrobnicateV2", ["input"], ["y"], name="frob")], "FrobnicateV2"),
        "custom": ([helper.make_node("Relu", ["input"], ["y"], name="r", domain="com.evil")], "com.evil"),
    }
    for what, (nodes, word) in cases.items():
        line = cli_error(capsys, graph_file(tmp_path, nodes, domain_opsets=[helper.make_opsetid("com.evil", 1)]))
        assert word in line, (what, line)


def test_giant_dims_are_refused_before_allocating(tmp_path, capsys):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2 ** 31, 2 ** 31])  # declares 2**62 floats, holds none
    path = graph_file(tmp_path, [helper.make_node("Add", ["input", "w"], ["y"], name="add")], [t])
    assert "elements" in cli_error(capsys, path)
    inp = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 2 ** 40, 2 ** 40])]
    line = cli_error(capsys, graph_file(tmp_path, [helper.make_node("Relu", ["input"], ["y"], name="r")], inputs=inp))
    assert "out of range" in line or "dimension" in line


def test_truncated_and_overdeclaring_protobufs(tmp_path, capsys):
    good = OF.small_cnn().SerializeToString()
    for k, data in enumerate([good[: len(good) // 2], good[:-3], b"\x3a\xff\xff\xff\xff\x0f" + b"x" * 10, b"", b"\x08",
                              b"not an onnx file at all"]):
        p = tmp_path / f"t{k}.onnx"
        p.write_bytes(data)
        line = cli_error(capsys, p)
        assert "ONNX" in line, line
    # a tensor whose raw bytes are fewer than its dims declare: refused by the pre-scan, before parsing
    m = OF.small_cnn()
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]
    p = OF.save(m, tmp_path / "short.onnx")
    assert "holds" in cli_error(capsys, p)


def test_prescan_bounds_nesting():
    # a graph in an attribute in a node in a graph ... 12 levels, 36 messages deep: past the reader's MAX_DEPTH
    # (24), inside protobuf's own limit (100). One branch per level: with the same graph in both branches the
    # message doubles per level, and 40 such levels (2**40 bytes) exhausted memory while building the file.
    g = helper.make_graph([], "leaf", [], [])
    for k in range(12):
        g = helper.make_graph([helper.make_node("If", ["c"], [], then_branch=g)], f"g{k}", [], [])
    m = helper.make_model(g)
    with pytest.raises(JaxvizError, match="nested"):
        prescan(m.SerializeToString())


def test_fuzzed_bytes_are_one_line_errors_or_models(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings, strategies as st

    good = OF.small_cnn().SerializeToString()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=6),
           st.integers(0, len(good)))
    def check(flips, cut):
        data = bytearray(good[:max(cut, 1)])
        for i, v in flips:
            if i < len(data):
                data[i] = v
        p = tmp_path / "f.onnx"
        p.write_bytes(bytes(data))
        try:
            proto = read_onnx(p)
        except JaxvizError as e:
            assert "\n" not in str(e)
            return
        for t in proto.graph.initializer:  # what the reader passes holds what it declares
            arr = numpy_helper.to_array(t)
            assert arr.size == int(np.prod(t.dims))

    check()
