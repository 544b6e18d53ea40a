"""The pieces every reader and writer of untrusted names and files goes through (issue 24): file
stems, the one opener, terminal-safe text, the activation-memory estimate, the HDF5 structure walk."""

from __future__ import annotations

import os
import threading
import time

import h5py
import numpy as np
import pytest

from jaxviz import JaxvizError, get_model
from jaxviz.errors import EscapingStream, one_line, show
from jaxviz.io.files import check_regular, check_tree, read_bytes
from jaxviz.io.h5probe import check_structure
from jaxviz.io.outputs import file_stem, inside, output_dir
from jaxviz.nn.memory import check_memory

HOSTILE_NAMES = ["../../../escape_rel/x", "/tmp/somewhere/x", "a/b", "..", ".", ".hidden", "-rf", "x" * 300,
                 "nul\x00byte", "esc\x1b]0;title\x07", "new\nline", "back\\slash", "c:\\windows", "ünïcødé", "a b",
                 "", "~", "con", "a~12345678"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_file_stem_is_one_safe_path_component(name, tmp_path):
    stem = file_stem(name)
    assert stem and len(stem) <= 90
    assert set(stem) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+=-~")
    assert stem[0] not in ".-" and os.path.basename(stem) == stem
    # written through the checked join, it lands inside the stage
    path = inside(str(tmp_path), stem + ".png")
    assert os.path.dirname(os.path.realpath(path)) == os.path.realpath(tmp_path)


def test_file_stems_keep_plain_names_and_never_collide():
    assert file_stem("block1_conv1") == "block1_conv1"
    assert file_stem("conv2d_1") == "conv2d_1"
    names = HOSTILE_NAMES + ["a_b", "a/b", "a\\b", "a b", "a:b", "escape_rel_x"]
    stems = [file_stem(n) for n in dict.fromkeys(names)]
    assert len(set(stems)) == len(stems)  # distinct names, distinct stems
    assert "~" not in file_stem("a_b") and file_stem("a/b").startswith("a_b~")


def test_inside_refuses_paths_that_leave_the_stage(tmp_path):
    for rel in ["../x.png", "/etc/passwd", "a/../../x", ""]:
        with pytest.raises(JaxvizError, match="not inside the output directory"):
            inside(str(tmp_path), rel)
    os.symlink("/tmp", tmp_path / "link")
    with pytest.raises(JaxvizError):
        inside(str(tmp_path), "link/x.png")


def test_show_escapes_controls_and_cuts_long_names():
    assert show("a\x1b[2Jb\nc\rd\x07") == "a\\x1b[2Jb\\nc\\rd\\x07"
    assert show("\u202eevil") == "\\u202eevil"  # a bidi override would reorder what the terminal shows
    long = show("x" * 3_000_000, 100)
    assert len(long) <= 100 and "…" in long
    assert "\n" not in one_line("jaxviz x: error: a\nforged: error: b") and len(one_line("y" * 10**6)) <= 2000


def test_every_terminal_write_is_escaped():
    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s
            return len(s)

    sink = Sink()
    EscapingStream(sink).write("ok\n\rbar\t\x1b]0;title\x07\x9b")
    assert sink.text == "ok\n\rbar\t\\x1b]0;title\\x07\\x9b"


def test_the_opener_refuses_what_is_not_a_regular_file_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done = []

    def attempt():
        for target in (fifo, "/dev/zero", tmp_path):
            with pytest.raises(JaxvizError) as e:
                read_bytes(target, "image", 1 << 20)
            done.append(str(e.value))

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "opening a FIFO blocked"
    assert "FIFO" in done[0] and "character device" in done[1] and "directory" in done[2]


def test_the_opener_caps_the_size_before_reading(tmp_path):
    sparse = tmp_path / "jaxviz.json"
    with open(sparse, "wb") as f:
        f.truncate(3 << 30)  # 3 GiB that costs nothing on disk
    t0 = time.perf_counter()
    with pytest.raises(JaxvizError, match="3,072 MiB, more than the 1 MiB"):
        read_bytes(sparse, "checkpoint metadata", 1 << 20)
    assert time.perf_counter() - t0 < 5
    assert check_regular(__file__, "test") == os.path.getsize(__file__)


def test_a_checkpoint_tree_may_hold_only_files_and_folders(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "a").write_bytes(b"x" * 10)
    assert check_tree(tmp_path, "checkpoint") == 10
    os.symlink("/etc/passwd", tmp_path / "params" / "b")
    with pytest.raises(JaxvizError, match="is a symbolic link"):
        check_tree(tmp_path, "checkpoint")
    os.remove(tmp_path / "params" / "b")
    os.mkfifo(tmp_path / "params" / "c")
    with pytest.raises(JaxvizError, match="FIFO"):
        check_tree(tmp_path, "checkpoint")


def test_activation_memory_is_estimated_from_shapes_by_hand():
    model = get_model("fashion_cnn")
    shapes = model.shapes((28, 28, 1))
    by_hand = 4 * 3 * (28 * 28 * 1 + sum(int(np.prod(s)) for _, s in shapes))
    assert check_memory(model, (28, 28, 1), batch=3) == by_hand
    with pytest.raises(JaxvizError, match=r"layer '.*' alone|the input alone"):
        check_memory(model, (28, 28, 1), batch=3, limit=by_hand - 1)


def test_a_huge_input_is_refused_before_any_allocation():
    model = get_model("vgg16_notop")
    with pytest.raises(JaxvizError, match="more than this machine's"):
        check_memory(model, (65536, 65536, 3))


def _h5(path, build):
    with h5py.File(path, "w") as f:
        build(f)
    return path


@pytest.mark.parametrize("case", ["external-link", "external-storage", "virtual", "virtual-missing", "ok"])
def test_hdf5_structure_that_points_outside_the_file_is_refused(tmp_path, case):
    other = _h5(tmp_path / "other.h5", lambda f: f.create_dataset("w", data=np.ones(4, np.float32)))
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 16)

    def build(f):
        g = f.create_group("layers")
        if case == "external-link":
            g["w"] = h5py.ExternalLink(str(other), "/w")
        elif case == "external-storage":
            g.create_dataset("w", shape=(16,), dtype="u1", external=[(str(secret), 0, 16)])
        elif case.startswith("virtual"):
            layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
            src = other if case == "virtual" else tmp_path / "missing.h5"
            layout[:] = h5py.VirtualSource(str(src), "w", shape=(4,))
            g.create_virtual_dataset("w", layout)
        else:
            g.create_dataset("w", data=np.ones(4, np.float32), compression="gzip", shuffle=True)

    path = _h5(tmp_path / "f.h5", build)
    with h5py.File(path, "r") as f:
        if case == "ok":
            check_structure(f, "f.h5")
            return
        with pytest.raises(JaxvizError, match="external link|external file|virtual dataset"):
            check_structure(f, "f.h5")


def test_output_dir_refuses_dangling_links_and_overlong_names(tmp_path):
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(JaxvizError, match="does not exist"):
        with output_dir(tmp_path / "dangling"):
            pass
    with pytest.raises(JaxvizError, match="more than a file name may hold"):
        with output_dir(tmp_path / ("a" * 256)):
            pass
    with output_dir(tmp_path / ("b" * 245)) as stage:  # a long but legal name works: the stage's name is cut
        open(os.path.join(stage, "x.txt"), "w").write("x")
    assert (tmp_path / ("b" * 245) / "x.txt").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["b" * 245, "dangling"]
