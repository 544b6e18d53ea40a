"""Long jobs that survive (issue 37), through the CLI on builtin:digits_cnn and small array collections:
a peer that never joins, a port in use, a bad or foreign address: one line, exit 2, within the timeout,
nothing written; hostile collections (an empty array, NaN images, an .npz declaring a gigantic array,
--out inside --images): one line or skipped and counted; weights_convert escapes what a file says."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.io.collection import open_collection

CLI = [sys.executable, "-c", "from jaxviz.cli import entry; entry()"]
BASE = ["atlas", "--weights", "builtin:digits_cnn", "--layer", "conv2d", "--patterns", "none"]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(args, timeout=120):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=env)


def _one_line(r):
    lines = [l for l in r.stderr.splitlines() if "error" in l]
    assert len(lines) == 1 and "Traceback" not in r.stderr and "Check failure" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture
def digits_npy(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (12, 8, 8)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("process", ["0/2", "1/2"])
def test_a_peer_that_never_joins_is_one_line_within_the_timeout(tmp_path, digits_npy, process):
    t0 = time.monotonic()
    r = _run(BASE + ["--images", str(digits_npy), "--coordinator", f"localhost:{_free_port()}", "--process", process,
                     "--peer-timeout", "2", "--out", str(tmp_path / "out")])
    assert r.returncode == 2, r.stderr  # not a signal (SIGABRT was -6)
    assert "did not all join" in _one_line(r) and "--peer-timeout" in _one_line(r)
    assert time.monotonic() - t0 < 60  # the 2 s timeout, imports and the model load; was ~5 minutes
    assert not (tmp_path / "out").exists()


def test_port_in_use_bad_host_and_foreign_address_are_one_line(tmp_path, digits_npy):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cases = [(f"127.0.0.1:{port}", "in use"), ("no-such-host.invalid:1234", "cannot be resolved"),
                 ("192.0.2.1:1234", "cannot listen there"), ("localhost:99999", "HOST:PORT")]
        for address, message in cases:
            r = _run(BASE + ["--images", str(digits_npy), "--coordinator", address, "--process", "0/2",
                             "--out", str(tmp_path / "out")])
            assert r.returncode == 2 and message in _one_line(r), (address, r.stderr)  # was a segfault (-11)
    assert not (tmp_path / "out").exists()


def test_peer_timeout_is_in_the_help():
    for cmd in ("atlas", "evaluate"):
        r = _run([cmd, "--help"])
        assert "--peer-timeout" in r.stdout and "default 60" in r.stdout


def test_out_inside_the_images_folder_is_refused(tmp_path):
    from jaxviz.cli.common import refuse_out_in_collection

    (tmp_path / "imgs").mkdir()
    for out in (tmp_path / "imgs", tmp_path / "imgs" / "run"):
        with pytest.raises(JaxvizError, match="inside the --images folder"):
            refuse_out_in_collection(str(out), str(tmp_path / "imgs"))
    refuse_out_in_collection(str(tmp_path / "elsewhere"), str(tmp_path / "imgs"))


def test_empty_array_collections_are_refused_in_one_line(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 8, 8), np.float32))
    np.savez(tmp_path / "e.npz", images=np.zeros((0, 8, 8, 1), np.uint8))
    for spec in (tmp_path / "e.npy", tmp_path / "e.npz", np.zeros((0, 8, 8, 1), np.float32)):
        with pytest.raises(JaxvizError, match="holds no image"):
            open_collection(spec, (8, 8, 1))
    r = _run(BASE + ["--images", str(tmp_path / "e.npy"), "--out", str(tmp_path / "out")])
    assert r.returncode == 2 and "holds no image" in _one_line(r)  # was: ran, every unit dead


def test_non_finite_images_are_skipped_and_counted_at_any_size():
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1)).astype(np.float32)
    x[1, 0, 0], x[4, 3, 3] = np.nan, np.inf
    for shape in ((8, 8, 1), (16, 16, 1)):  # the model's size, and resized (was: NaN -> 0, Inf -> 255, scored)
        c = open_collection(x, shape, batch_size=6, max_failures=0.5)
        batch = next(iter(c))
        assert batch.valid.tolist() == [True, False, True, True, False, True]
        assert [f.index for f in c.failures] == [1, 4]


def test_an_npz_declaring_a_gigantic_array_is_refused_before_allocation(tmp_path):
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros((1,), np.float32))
    header["shape"] = (10**9, 1000, 1000, 3)
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as zf, zf.open("images.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(JaxvizError, match="declares shape"):
        open_collection(str(tmp_path / "big.npz"), (8, 8, 1))


def test_non_utf8_names_are_kept_in_paths(tmp_path):
    import cv2

    folder = os.fsencode(tmp_path / "imgs")
    os.mkdir(folder)
    name = os.path.join(folder, b"caf\xe9.png")
    with open(name, "wb") as f:  # a bytes path: cv2 cannot take a name that is not UTF-8
        f.write(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    c = open_collection(str(tmp_path / "imgs"), (8, 8, 1))
    assert os.fsencode(c.paths[0]) == name  # every byte, exactly
    arr = np.array(c.paths, dtype=str)
    assert os.fsencode(str(arr[0])) == name


def test_weights_convert_dry_run_escapes_what_the_file_says(monkeypatch, capsys):
    import weights_convert.cli as wc
    from jaxviz import get_model

    m = get_model("digits_cnn")
    import jax

    params = m.init(jax.random.key(0))
    monkeypatch.setattr("jaxviz.io.weightfile.load_model_file",
                        lambda src, arch: (m, params, "keras", "3.0\x1b[31m" + "x" * 5_000_000))
    wc.convert("file.keras", None)
    out = capsys.readouterr().out
    assert "\x1b" not in out and len(out) < 20_000 and "\\x1b" in out
