"""Hostile and damaged weight files: the ``.pth`` reader proves every tensor's layout lies inside its
storage before copying anything (files written here opcode by opcode, only with the globals the reader
admits, in the zip and the legacy layouts); ``weights_convert --overwrite`` replaces nothing but a
checkpoint; NaN and Inf are refused when checkpoints are saved and loaded and when ``.pth`` files are
converted. Every refusal is one line, from the library and from both command lines."""

import collections
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import hostile as H
import jaxviz.io.torch as torch_reader
from jaxviz import JaxvizError, get_model
from jaxviz.io import load_model
from jaxviz.io.checkpoint import load_checkpoint, save_checkpoint
from weights_convert import load_torch_weights, read_state_dict
from weights_convert.cli import main as convert_main

LAYOUTS = ["zip", "legacy"]
F4 = np.arange(4, dtype=np.float32)
F64 = np.arange(64, dtype=np.float32)


def one_line_error(path, match: str) -> str:
    with pytest.raises(JaxvizError, match=match) as e:
        read_state_dict(path)
    assert "\n" not in str(e.value)
    return str(e.value)


# --------------------------------------------------------------------------------------------- readable files


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rebuild", ["v2", "v1", "param"])
def test_every_rebuild_path_reads_strided_expanded_and_empty_tensors(tmp_path, layout, rebuild):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    s = H.Storage.of("0", a)
    sd = collections.OrderedDict({
        "conv.weight": H.tensor_of("1", a * 2, rebuild),
        "transposed": H.Tensor(s, 0, (4, 3), (1, 4), rebuild),
        "every_other": H.Tensor(s, 1, (2, 3), (2, 4), rebuild),  # a[:, 1::2].T, offset 1
        "expanded": H.Tensor(s, 5, (3, 2), (0, 1), rebuild),  # stride 0: a row broadcast, as torch expand saves
        "odd_unit_stride": H.Tensor(s, 11, (1, 1), (2**63 - 1, 7), rebuild),  # size-1 dims: any stride
        "empty": H.Tensor(s, 12, (0, 512), (512, 1), rebuild),
        "n": H.tensor_of("2", np.array(5, np.int64), rebuild),
    })
    H.write(tmp_path / "ok.pth", layout, sd)
    back = read_state_dict(tmp_path / "ok.pth")
    expected = {"conv.weight": a * 2, "transposed": a.T, "every_other": a[:, 1::2].T,
                "expanded": np.broadcast_to(a.ravel()[5:7], (3, 2)), "odd_unit_stride": np.array([[11.0]], np.float32),
                "empty": np.zeros((0, 512), np.float32), "n": np.array(5, np.int64)}
    assert list(back) == list(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert back[k].flags.c_contiguous and back[k].flags.owndata, k  # copies, never views of the file


def test_big_endian_zip_and_training_checkpoint_wrapper(tmp_path):
    a = np.linspace(-1, 1, 6, dtype=np.float32)
    t = H.Tensor(H.Storage("0", "FloatStorage", 6, a.astype(">f4").tobytes()), 0, (6,), (1,))
    H.write_zip(tmp_path / "be.pth", {"epoch": 3, "state_dict": collections.OrderedDict({"w": t})}, byteorder="big")
    back = read_state_dict(tmp_path / "be.pth")
    np.testing.assert_array_equal(back["w"], a)
    assert back["w"].dtype == np.dtype("=f4")


# --------------------------------------------------------------------------------------------- hostile layouts

def _tensor(offset, size, stride, storage=None, rebuild="v2"):
    return {"w": H.Tensor(storage or H.Storage.of("0", F64), offset, size, stride, rebuild)}


# name -> (state dict, what the one-line error says). Each passes the pickle allow-list.
HOSTILE = {
    # used to read heap bytes before the storage into the parameters, silently
    "small negative stride": (_tensor(0, (64,), (-1,)), "negative offset, size or stride"),
    "negative size": (_tensor(0, (-1,), (1,)), "negative offset, size or stride"),
    "negative offset": (_tensor(-8, (4,), (1,)), "negative offset, size or stride"),
    # 2**40 x 2**40 elements from one float: would need 4 TiB
    "huge zero-stride tensor": (_tensor(0, (2**20, 2**20), (0, 0), H.Storage.of("0", F4[:1])), "claims shape"),
    "offset past the end": (_tensor(100, (4,), (1,)), "reaches element 103 of a storage of 64"),
    "empty tensor past the end": (_tensor(10**6, (0,), (1,)), "starts at 1000000, past the end"),
    # 4 * 2**62 = 2**64 wraps to 0 in int64 arithmetic: a bounds check in int64 would pass it
    "size times stride overflows int64": (_tensor(0, (5,), (2**62,)), "reaches element 18446744073709551616"),
    "sizes and strides disagree": (_tensor(0, (2, 2), (1,)), "has 2 sizes and 1 strides"),
    "a hundred dimensions": (_tensor(0, (1,) * 100, (1,) * 100), "has 100 sizes"),
    "size that is not an integer": (_tensor(0, (2.5,), (1,)), "not an integer"),
    "size that is a boolean": (_tensor(0, (True,), (1,)), "not an integer"),
    # 6000 digits: too many for int -> str, so no message may try to print them
    "size of 2**20000": (_tensor(0, (2**20000,), (1,)), "beyond 64-bit integers"),
    "stride of 2**20000": (_tensor(0, (2,), (2**20000,)), "beyond 64-bit integers"),
    "offset of 2**20000": (_tensor(2**20000, (2,), (1,)), "beyond 64-bit integers"),
    "element count of 2**20000": (_tensor(0, (1,), (1,), H.Storage("0", "FloatStorage", 2**20000, b"")),
                                  "unexpected persistent id"),
    "storage that is not a storage": (_tensor(0, (4,), (1,), storage="0"), "refers to a str instead of a storage"),
    "storage that is a tensor": (_tensor(0, (4,), (1,), storage=H.tensor_of("0", F4)), "refers to a _Tensor"),
    "storage claiming 2**40 elements": ({"w": H.Tensor(H.Storage("0", "FloatStorage", 2**40, F4.tobytes()), 0, (4,),
                                                       (1,))}, "claims 1,099,511,627,776 elements"),
    # one key, two element types: the float tensor would be read from int64 bytes
    "dtype mismatch": ({"a": H.Tensor(H.Storage("0", "FloatStorage", 8, bytes(32)), 0, (4,), (1,)),
                        "b": H.Tensor(H.Storage("0", "LongStorage", 4, bytes(32)), 0, (4,), (1,))},
                       "storage 0 is declared both as 8 x float32 and as 4 x int64"),
    "unknown dtype": (_tensor(0, (4,), (1,), H.Storage("0", "ComplexFloatStorage", 4, bytes(32))),
                      "torch.ComplexFloatStorage are not supported"),
    "storage type that is not a type": (_tensor(0, (4,), (1,), H.Storage("0", 7, 4, bytes(16))),
                                        "unexpected persistent id"),
    "storage key that is not a string": (_tensor(0, (4,), (1,), H.Storage(0, "FloatStorage", 4, bytes(16))),
                                         "unexpected persistent id"),
    "value that is a nested list": ({"w": H.Raw(b"(" * 100_000 + b"l" * 100_000)}, "'w' is a list"),
    "key that is not a string": ({7: H.tensor_of("0", F4)}, "a key is of type int, not str"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layouts_are_one_line_errors(tmp_path, layout, case):
    sd, message = HOSTILE[case]
    H.write(tmp_path / "bad.pth", layout, sd)
    one_line_error(tmp_path / "bad.pth", message)


def test_huge_negative_stride_cannot_crash_the_process(tmp_path):
    """Stride -2**40 on a 4-float storage used to end the process with a segmentation fault: read in
    a child process, so that a crash fails this test instead of killing pytest."""
    code = ("import sys\nfrom jaxviz import JaxvizError\nfrom jaxviz.io.torch import read_state_dict\n"
            "for p in sys.argv[1:]:\n    try:\n        read_state_dict(p)\n    except JaxvizError as e:\n"
            "        print(e)\n")
    paths = []
    for layout in LAYOUTS:
        for rebuild in ("v2", "v1", "param"):
            p = tmp_path / f"{layout}_{rebuild}.pth"
            H.write(p, layout, _tensor(0, (4,), (-2**40,), H.Storage.of("0", F4), rebuild))
            paths.append(str(p))
    r = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    lines = r.stdout.splitlines()
    assert len(lines) == len(paths) and all("negative offset, size or stride" in line for line in lines), r.stdout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_and_truncated_storages(tmp_path, layout):
    t = H.tensor_of("0", F64)
    p = tmp_path / "m.pth"
    if layout == "zip":
        H.write_zip(p, {"w": t}, data={})
        one_line_error(p, "storage 0 has no data in the archive")
        H.write_zip(p, {"w": t}, data={"0": t.storage.data[:-4]})
        one_line_error(p, r"storage 0 is truncated \(252 of 256 bytes\)")
    else:
        H.write_legacy(p, {"w": t}, keys=[])
        one_line_error(p, "storage 0 is used but its data is missing")
        H.write_legacy(p, {"w": t}, data={"0": t.storage.data[:-4]})
        one_line_error(p, "storage 0 is truncated or damaged")
        H.write_legacy(p, {"w": t}, counts={"0": 2**40})
        one_line_error(p, "storage 0 is truncated or damaged")
        H.write_legacy(p, {"w": t}, keys=["0", "0"])
        one_line_error(p, "not a list of distinct names")
        # a pre-1.0 storage view would be read as the whole root storage: refused, not misread
        view = H.Tensor(H.Storage("0", "FloatStorage", 64, t.storage.data, ("1", 8, 4)), 0, (4,), (1,))
        H.write_legacy(p, {"w": view})
        one_line_error(p, "storage 0 is a view of another storage")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("state", ["dict", "slots"])
def test_a_pickle_cannot_rewrite_the_readers_own_objects(tmp_path, layout, state):
    """BUILD sets attributes on whatever is on the stack (from a dict, or from (None, dict) through
    setattr): on the FloatStorage marker it used to change the element type of every later float
    storage, in this file and in every file read afterwards by the same process."""
    attrs = (pickle.EMPTY_DICT + pickle.MARK + pickle.BINUNICODE + struct.pack("<I", 5) + b"dtype"
             + pickle.BINUNICODE + struct.pack("<I", 3) + b"<f8" + pickle.SETITEMS)
    if state == "slots":
        attrs = pickle.NONE + attrs + pickle.TUPLE2
    build = pickle.GLOBAL + b"torch\nFloatStorage\n" + attrs + pickle.BUILD + pickle.POP
    H.write(tmp_path / "b.pth", layout, {"w": H.tensor_of("0", F4)}, prefix=build)
    one_line_error(tmp_path / "b.pth", r"not a readable pickle \(AttributeError")
    H.write(tmp_path / "ok.pth", layout, {"w": H.tensor_of("0", F4)})
    back = read_state_dict(tmp_path / "ok.pth")["w"]
    np.testing.assert_array_equal(back, F4)
    assert back.dtype == np.float32


def test_a_ten_byte_memo_bomb_allocates_nothing(tmp_path):
    """LONG_BINPUT to slot 2**25: CPython's unpickler grows its memo array to twice the index, 512 MiB
    from a few bytes. The opcode scan refuses it first; measured in a child process's peak memory."""
    bomb = H.dumps({}, legacy=True, prefix=pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", 2**25) + pickle.POP)
    p = tmp_path / "bomb.pth"
    p.write_bytes(pickle.dumps(H.LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
                  + pickle.dumps({"little_endian": True}, protocol=2) + bomb)
    code = ("import resource, sys\nfrom jaxviz import JaxvizError\nfrom jaxviz.io.torch import read_state_dict\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    read_state_dict(sys.argv[1])\nexcept JaxvizError as e:\n    print(e)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True)
    message, grown_mib = r.stdout.splitlines()
    assert "stores to memo slot 33,554,432 after 2 opcodes" in message
    assert int(grown_mib) < 64, r.stdout  # the old reader grew by 512 MiB


def test_caps_on_pickle_and_total_size(tmp_path, monkeypatch):
    # two tensors viewing one 4000-byte storage build 8000 bytes of arrays
    s = H.Storage.of("0", np.zeros(1000, np.float32))
    H.write_zip(tmp_path / "two.pth", {"a": H.Tensor(s, 0, (1000,), (1,)), "b": H.Tensor(s, 0, (1000,), (1,))})
    assert sum(a.nbytes for a in read_state_dict(tmp_path / "two.pth", max_bytes=8000).values()) == 8000
    with pytest.raises(JaxvizError, match="tensors add up to more than 7,999 bytes"):
        read_state_dict(tmp_path / "two.pth", max_bytes=7999)
    with pytest.raises(JaxvizError, match="storage 0 claims 1,000 elements, more than the 3,999 bytes"):
        read_state_dict(tmp_path / "two.pth", max_bytes=3999)
    # two storages of 4000 bytes each: the second one read would pass the cap
    H.write_zip(tmp_path / "pair.pth", {"a": H.Tensor(s, 0, (1000,), (1,)),
                                        "b": H.tensor_of("1", np.zeros(1000, np.float32))})
    with pytest.raises(JaxvizError, match="storages add up to more than 7,999 bytes"):
        read_state_dict(tmp_path / "pair.pth", max_bytes=7999)
    # a deflated data.pkl is read no further than the cap (a zip bomb is never inflated)
    monkeypatch.setattr(torch_reader, "MAX_PICKLE_BYTES", 1 << 16)
    big = H.dumps({}, prefix=(pickle.NONE + pickle.POP) * (1 << 16))
    with zipfile.ZipFile(tmp_path / "bomb.pth", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", big)
    assert (tmp_path / "bomb.pth").stat().st_size < len(big) // 50
    one_line_error(tmp_path / "bomb.pth", "data.pkl is larger than 65,536 bytes")


def test_damaged_zip_containers(tmp_path):
    H.write_zip(tmp_path / "ok.pth", {"w": H.tensor_of("0", F4)})
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "crc.pth").write_bytes(data.replace(H.dumps({"w": H.tensor_of("0", F4)})[-20:], b"\x00" * 20))
    one_line_error(tmp_path / "crc.pth", "damaged zip member archive/data.pkl")
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path / "cut.pth", "damaged or truncated zip archive")
    H.write_zip(tmp_path / "order.pth", {"w": H.tensor_of("0", F4)}, byteorder="middle")
    one_line_error(tmp_path / "order.pth", "its byteorder says b'middle'")


# --------------------------------------------------------------------------------------------- command lines


def _stderr_error(r, prog: str, message: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.startswith(prog)]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_both_command_lines_refuse_the_segfault_file(tmp_path):
    bad = tmp_path / "bad.pth"
    H.write_zip(bad, _tensor(0, (4,), (-2**40,), H.Storage.of("0", F4)))
    r = subprocess.run([sys.executable, "-m", "weights_convert.cli", str(bad), str(tmp_path / "out")],
                       capture_output=True, text=True)
    _stderr_error(r, "weights_convert: error:", "negative offset, size or stride")
    assert sorted(os.listdir(tmp_path)) == ["bad.pth"]
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "predict", "--weights", str(bad), "sample:chelsea"],
                       capture_output=True, text=True)
    _stderr_error(r, "jaxviz predict: error:", "negative offset, size or stride")


# --------------------------------------------------------------------------------------------- NaN and Inf


def fashion_state_dict(seed: int = 0) -> "collections.OrderedDict[str, np.ndarray]":
    """fashion_cnn's parameters as a PyTorch state dict (OIHW kernels, (out, in) Linear weights)."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,),
              "fc1.weight": (100, 3136), "fc1.bias": (100,), "fc2.weight": (10, 100), "fc2.bias": (10,)}
    return collections.OrderedDict((k, rng.normal(0, 0.05, s).astype(np.float32)) for k, s in shapes.items())


def write_state_dict(path, sd, layout: str = "zip") -> None:
    H.write(path, layout, collections.OrderedDict((k, H.tensor_of(str(i), v)) for i, (k, v) in enumerate(sd.items())))


@pytest.fixture(scope="module")
def fashion_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("pth") / "fashion.pth"
    write_state_dict(path, fashion_state_dict())
    return path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pth_with_nan_or_inf_is_refused(tmp_path, layout):
    for bad in (np.nan, np.inf):
        sd = fashion_state_dict()
        sd["fc1.weight"][7, 3] = bad
        write_state_dict(tmp_path / "n.pth", sd, layout)
        with pytest.raises(JaxvizError, match=r"module 'fc1' contains NaN or Inf"):
            load_torch_weights(tmp_path / "n.pth", "fashion_cnn")
        with pytest.raises(JaxvizError, match=r"module 'fc1' contains NaN or Inf"):  # not "no architecture fits"
            load_torch_weights(tmp_path / "n.pth")
    write_state_dict(tmp_path / "ok.pth", fashion_state_dict(), layout)
    arch, params = load_torch_weights(tmp_path / "ok.pth", "fashion_cnn")
    np.testing.assert_array_equal(params["dense"]["kernel"], fashion_state_dict()["fc1.weight"].T)


def test_save_checkpoint_refuses_nan(tmp_path, fashion_pth):
    _, params = load_torch_weights(fashion_pth, "fashion_cnn")
    params["conv2d_1"]["bias"] = params["conv2d_1"]["bias"].copy()
    params["conv2d_1"]["bias"][5] = np.nan
    with pytest.raises(JaxvizError, match=r"refusing to save fashion_cnn: layer 'conv2d_1' bias contains NaN or Inf"):
        save_checkpoint(tmp_path / "ck", get_model("fashion_cnn"), params)
    assert os.listdir(tmp_path) == []  # not even a staging directory is left


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, fashion_pth):
    """A checkpoint whose parameters orbax itself wrote with a NaN in them (save_checkpoint refuses to)."""
    import orbax.checkpoint as ocp

    ck = tmp_path_factory.mktemp("nanck") / "ck"
    _, params = load_torch_weights(fashion_pth, "fashion_cnn")
    save_checkpoint(ck, get_model("fashion_cnn"), params)
    params["dense"]["kernel"][0, 0] = np.nan
    shutil.rmtree(ck / "params")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ck / "params", params)
        ckptr.wait_until_finished()
    return ck


def test_load_checkpoint_refuses_nan(nan_checkpoint):
    with pytest.raises(JaxvizError, match=r"ck: layer 'dense' kernel contains NaN or Inf") as e:
        load_checkpoint(nan_checkpoint)
    assert "\n" not in str(e.value)
    with pytest.raises(JaxvizError, match="contains NaN or Inf"):
        load_model(None, str(nan_checkpoint))


def test_filters_command_refuses_a_nan_checkpoint(nan_checkpoint, tmp_path):
    out = tmp_path / "f"
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "filters", "--weights", str(nan_checkpoint), "--layer",
                        "conv2d", "--filters", "0", "--size", "28", "--steps", "2", "--out", str(out)],
                       capture_output=True, text=True)
    _stderr_error(r, "jaxviz filters: error:", "layer 'dense' kernel contains NaN or Inf")
    assert os.listdir(tmp_path) == []


def test_checkpoint_metadata_without_architecture(tmp_path, fashion_pth):
    _, params = load_torch_weights(fashion_pth, "fashion_cnn")
    save_checkpoint(tmp_path / "ck", get_model("fashion_cnn"), params)
    for meta in ({"format": "jaxviz-checkpoint"}, ["a list"], {"format": "jaxviz-checkpoint", "architecture": 3}):
        (tmp_path / "ck" / "jaxviz.json").write_text(json.dumps(meta))
        with pytest.raises(JaxvizError, match="not a jaxviz checkpoint|names no architecture"):
            load_checkpoint(tmp_path / "ck")


# --------------------------------------------------------------------------------------------- --overwrite


def test_overwrite_never_deletes_a_directory_that_is_not_a_checkpoint(tmp_path, fashion_pth, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "precious.txt").write_text("x")
    assert convert_main([str(fashion_pth), str(d), "--arch", "fashion_cnn", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a directory but not a jaxviz checkpoint (it holds 'precious.txt')" in err
    assert (d / "precious.txt").read_text() == "x" and os.listdir(d) == ["precious.txt"]
    assert os.listdir(tmp_path) == ["d"]
    # a checkpoint someone added a file to is not only a checkpoint any more
    assert convert_main([str(fashion_pth), str(tmp_path / "ck"), "--arch", "fashion_cnn"]) == 0
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    assert convert_main([str(fashion_pth), str(tmp_path / "ck"), "--arch", "fashion_cnn", "--overwrite"]) == 2
    assert "(it holds 'notes.txt')" in capsys.readouterr().err
    assert (tmp_path / "ck" / "notes.txt").read_text() == "mine"
    # the library refuses the same, whatever calls it
    with pytest.raises(JaxvizError, match="not a jaxviz checkpoint"):
        save_checkpoint(d, get_model("fashion_cnn"), load_torch_weights(fashion_pth, "fashion_cnn")[1], overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ck", "d"]


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_overwrite_refuses_files_and_links_and_leaves_nothing_behind(tmp_path, fashion_pth, capsys, kind):
    dest = tmp_path / "dest"
    if kind == "file":
        dest.write_text("a file")
    else:
        (tmp_path / "target").mkdir()
        dest.symlink_to(tmp_path / "target")
    before = sorted(os.listdir(tmp_path))
    assert convert_main([str(fashion_pth), str(dest), "--arch", "fashion_cnn", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"is a {'file' if kind == 'file' else 'symbolic link'}, not a jaxviz" in err
    assert sorted(os.listdir(tmp_path)) == before  # no .dest.tmp-*.old, nothing else
    if kind == "file":
        assert dest.read_text() == "a file"
    else:
        assert dest.is_symlink() and os.listdir(tmp_path / "target") == []


def test_overwrite_replaces_a_checkpoint_and_an_empty_directory_cleanly(tmp_path, fashion_pth):
    ck = tmp_path / "ck"
    ck.mkdir()  # empty: nothing to lose
    assert convert_main([str(fashion_pth), str(ck), "--arch", "fashion_cnn", "--overwrite"]) == 0
    assert sorted(os.listdir(ck)) == ["jaxviz.json", "params"]
    write_state_dict(tmp_path / "other.pth", fashion_state_dict(seed=1))
    assert convert_main([str(tmp_path / "other.pth"), str(ck), "--arch", "fashion_cnn", "--overwrite"]) == 0
    _, params, meta = load_checkpoint(ck)
    assert meta["info"]["converted_from"] == str(tmp_path / "other.pth")
    np.testing.assert_array_equal(params["dense_1"]["bias"], fashion_state_dict(seed=1)["fc2.bias"])
    assert sorted(os.listdir(tmp_path)) == ["ck", "other.pth"]  # no staging or .old directory left
