"""Long jobs that survive (issue 37), second part, through the CLI on builtin:digits_cnn: one run per --out
at a time (a second is refused in one line, the first ends with the uninterrupted result); the stage a
SIGKILL leaves is removed by the next run, whose --resume equals the uninterrupted result; a checkpoint
folder that is a symbolic link is refused and its target left untouched; a checkpoint that cannot be
written (RLIMIT_FSIZE, as a full disk) is one line and the previous one stays whole; decoding memory is
bounded by the budget (peak RSS of the child); a writable --out in a read-only parent works."""

import glob
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.io import output_dir

from conftest import cli_peak_mib

CLI = [sys.executable, "-c", "from jaxviz.cli import entry; entry()"]
ATLAS = ["atlas", "--weights", "builtin:digits_cnn", "--layer", "conv2d", "--patterns", "none"]
DIGITS = ATLAS + ["--images", "digits", "--batch-size", "16"]  # 1,797 images, 113 batches
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(args, timeout=300, **kw):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=ENV, **kw)


def _start(args):
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _one_line(r, rc=2):
    errors = [l for l in r.stderr.splitlines() if "error" in l.lower()]
    assert r.returncode == rc and len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr and "ERROR:absl" not in r.stderr, r.stderr
    return errors[0]


def _arrays(folder):
    with np.load(os.path.join(folder, "atlas.npz")) as z:
        return {k: z[k] for k in z.files}


def _assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _leftovers(root):
    """Stages, stage markers and lock files anywhere under ``root``."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirs + files if ".partial-" in n or n.startswith(".jaxviz")]
    return out


def _wait_for(predicate, p, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _generations(out):
    return sorted(glob.glob(os.path.join(out, ".atlas-checkpoint", "*", "g*")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted atlas of the digits, alone on its --out."""
    out = tmp_path_factory.mktemp("ref") / "out"
    r = _run(DIGITS + ["--out", str(out)])
    assert r.returncode == 0, r.stderr
    return _arrays(out)


def _sigkill_after_a_checkpoint(out):
    p = _start(DIGITS + ["--checkpoint-every", "1", "--out", str(out)])
    _wait_for(lambda: _generations(out), p)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert not os.path.exists(os.path.join(out, "atlas.npz"))


# -- 1. one run per --out ----------------------------------------------------------------------------------
def test_output_dir_is_one_run_at_a_time(tmp_path):
    with output_dir(tmp_path / "out") as stage:
        with pytest.raises(JaxvizError, match="in use by another jaxviz run") as e:
            with output_dir(tmp_path / "out"):
                pass
        assert f"process {os.getpid()}" in str(e.value)
        with output_dir(tmp_path / "other"):  # another --out is free
            pass
        open(os.path.join(stage, "a.txt"), "w").write("a")
    with output_dir(tmp_path / "out"):  # released when the first ends
        pass
    assert sorted(os.listdir(tmp_path / "out")) == ["a.txt"] and sorted(os.listdir(tmp_path)) == ["other", "out"]


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tmp_path, reference):
    out = tmp_path / "out"
    a = _start(DIGITS + ["--out", str(out)])
    lock = out / ".jaxviz.lock"
    _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(a.pid), a)
    a.send_signal(signal.SIGSTOP)  # the first run holds the lock, however slow it is
    try:
        before = sorted(os.listdir(tmp_path)), sorted(os.listdir(out))
        for other in ([], ["--k", "3"], ["--resume"]):  # the same settings, others, a resume
            b = _run(DIGITS + other + ["--out", str(out)])
            assert f"is in use by another jaxviz run (process {a.pid})" in _one_line(b), b.stderr
        assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(out))) == before  # the second touched nothing
    finally:
        a.send_signal(signal.SIGCONT)
    _, err = a.communicate(timeout=300)
    assert a.returncode == 0, err
    _assert_same(_arrays(out), reference)  # was: an orbax traceback, or "Directory not empty"
    assert _leftovers(tmp_path) == []


# -- 2. the stage a SIGKILL leaves -------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_and_removes_the_stale_stage(tmp_path, reference):
    out = tmp_path / "out"
    _sigkill_after_a_checkpoint(out)
    assert glob.glob(str(tmp_path / ".out.partial-*"))  # what the killed run left
    r = _run(DIGITS + ["--resume", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    _assert_same(_arrays(out), reference)
    assert _leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["out"]


def test_only_jaxvizs_own_stages_of_this_out_are_removed(tmp_path):
    (tmp_path / "out").mkdir()
    stale = tmp_path / ".out.partial-abcd1234"  # as a killed run leaves it: a marker naming this --out
    stale.mkdir()
    (stale / ".jaxviz-stage").write_bytes(os.fsencode(tmp_path / "out"))
    (stale / "half.png").write_bytes(b"x")
    inner = tmp_path / "out" / ".out.partial-efgh5678"  # a stage inside --out (it existed)
    inner.mkdir()
    (inner / ".jaxviz-stage").write_bytes(os.fsencode(tmp_path / "out"))
    keep = {".out.partial-nomarker": None, ".out.partial-otherout": os.fsencode(tmp_path / "out2"),
            ".out.partial-toolong99": os.fsencode(tmp_path / "out"), "out.partial-nodot123": None}
    for name, mark in keep.items():
        (tmp_path / name).mkdir()
        if mark is not None:
            (tmp_path / name / ".jaxviz-stage").write_bytes(mark)
    os.symlink(stale, tmp_path / ".out.partial-linklink")
    with output_dir(tmp_path / "out") as stage:
        assert os.path.dirname(stage) == str(tmp_path / "out")  # --out exists: staged inside it
        assert not stale.exists() and not inner.exists()
        open(os.path.join(stage, "a.txt"), "w").write("a")
    assert sorted(os.listdir(tmp_path)) == sorted([*keep, ".out.partial-linklink", "out"])
    assert sorted(os.listdir(tmp_path / "out")) == ["a.txt"]


# -- 3. a checkpoint folder that is a link -----------------------------------------------------------------
def test_a_symlinked_checkpoint_folder_is_refused_and_its_target_untouched(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (12, 8, 8)).astype(np.float32))
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "canary").write_text("c")
    out = tmp_path / "out"
    out.mkdir()
    # the folder itself (checked with or without --resume: the same check), and the state folder below it
    for link, extra in [(out / ".atlas-checkpoint", ["--resume"]), (out / ".atlas-checkpoint" / "atlas-state-0of1", [])]:
        if link.parent != out:
            link.parent.mkdir(exist_ok=True)
        os.symlink(target, link)
        r = _run(ATLAS + ["--images", str(tmp_path / "x.npy"), "--out", str(out)] + extra)
        assert "is a symbolic link" in _one_line(r) and "--out" in _one_line(r), r.stderr
        assert os.listdir(target) == ["canary"] and (target / "canary").read_text() == "c"  # was: checkpoints there
        assert os.path.islink(link) and not (out / "atlas.npz").exists()
        os.unlink(link)


# -- 4. a checkpoint that cannot be written ----------------------------------------------------------------
def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _tree_digest(folder):
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(folder)):
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(dirpath, f), folder).encode())
            h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


@pytest.mark.slow
def test_a_checkpoint_write_error_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, reference):
    out = tmp_path / "out"
    _sigkill_after_a_checkpoint(out)
    (gen,) = _generations(out)
    before = _tree_digest(gen)
    stages = glob.glob(os.path.join(gen, "..", ".stage-*"))  # the kill may have cut a write short
    r = _run(DIGITS + ["--resume", "--checkpoint-every", "1", "--out", str(out)],
             preexec_fn=_file_size_limit(256))  # a file may hold 256 bytes: as a disk that is full
    line = _one_line(r)
    assert "cannot write the checkpoint" in line and "File too large" in line and "previous checkpoint is kept" in line
    assert len(r.stderr.splitlines()) < 20, r.stderr  # was: ~140 lines of the writer threads' tracebacks
    assert _generations(out) == [gen] and _tree_digest(gen) == before  # whole, and nothing half-written beside
    assert glob.glob(os.path.join(gen, "..", ".stage-*")) == stages  # the failed write left nothing
    r = _run(DIGITS + ["--resume", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    _assert_same(_arrays(out), reference)
    assert _leftovers(tmp_path) == []


# -- 5. decoding memory -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_decoding_memory_is_bounded_by_the_budget_not_the_workers(tmp_path):
    import cv2

    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir()
    small.mkdir()
    # 7000 x 7000 RGB (49 Mpx, 147 MB decoded; legal: under the 64 Mpx cap), noise in a band so that the
    # PNG stays small on disk; each decode for the grey model also converts RGB to grey
    img = np.zeros((7000, 7000, 3), np.uint8)
    img[:64] = np.random.default_rng(0).integers(0, 256, (64, 7000, 3), dtype=np.uint8)
    cv2.imwrite(str(big / "i00.png"), img)
    cv2.imwrite(str(small / "i00.png"), img[:70, :70])
    for i in range(1, 8):
        shutil.copy(big / "i00.png", big / f"i{i:02d}.png")
        shutil.copy(small / "i00.png", small / f"i{i:02d}.png")
    args = ATLAS + ["--workers", "8", "--batch-size", "8", "--k", "2"]
    rc, err, base = cli_peak_mib(args + ["--images", str(small), "--out", str(tmp_path / "o1")], ENV)
    assert rc == 0, err
    rc, err, peak = cli_peak_mib(args + ["--images", str(big), "--out", str(tmp_path / "o2")], ENV)
    assert rc == 0, err
    # the 1 GiB budget (DECODE_MEMORY) and a little for the arrays the budget does not count (the file's
    # bytes before its header is read, the batches); 8 workers at once held ~9 GB here before
    print(f"peak RSS: {peak:.0f} MiB over 8 large images, {base:.0f} MiB over 8 small ones")
    assert peak - base < 1024 + 256, (peak, base)


# -- 6. a writable --out in a read-only parent --------------------------------------------------------------
def test_a_writable_out_in_a_read_only_parent_works(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (12, 8, 8)).astype(np.float32))
    parent, out = tmp_path / "parent", tmp_path / "parent" / "out"
    out.mkdir(parents=True)
    prefix = []
    if os.geteuid() == 0:  # root writes through any mode: the child drops the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: a read-only folder cannot be made read-only for the child")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    os.chmod(parent, 0o555)
    try:
        probe = subprocess.run(prefix + [sys.executable, "-c", f"open({str(parent / 'x')!r}, 'w')"], capture_output=True)
        assert probe.returncode != 0  # the parent is read-only for the child
        r = subprocess.run(prefix + CLI + ATLAS + ["--images", str(tmp_path / "x.npy"), "--out", str(out)],
                           capture_output=True, text=True, timeout=300, env=ENV)
        assert r.returncode == 0, r.stderr  # was: "not writable" (the stage was made in the parent)
        assert os.listdir(parent) == ["out"] and sorted(os.listdir(out)) == ["atlas.npz", "index.html"]
        with np.load(out / "atlas.npz") as z:
            assert len(z["paths"]) == 12
    finally:
        os.chmod(parent, 0o755)


# -- 7. a peer killed mid-run ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0], ids=["peer", "coordinator"])
def test_a_peer_killed_mid_run_ends_the_survivor_with_one_line_and_resume_is_exact(tmp_path, reference, killed):
    import socket

    def free_port():
        with socket.socket() as s:
            s.bind(("localhost", 0))
            return s.getsockname()[1]

    out = tmp_path / "out"
    args = DIGITS + ["--checkpoint-every", "1", "--coordinator", f"localhost:{free_port()}", "--peer-timeout", "10",
                     "--out", str(out)]
    ps = [_start(args + ["--process", f"{i}/2"]) for i in range(2)]
    try:
        _wait_for(lambda: glob.glob(str(out / ".atlas-checkpoint" / "atlas-state-1of2" / "g*")), ps[1], timeout=300)
        t0 = time.monotonic()
        ps[killed].send_signal(signal.SIGKILL)
        survivor = ps[1 - killed]
        _, err = survivor.communicate(timeout=120)  # was: the survivor waited, then SIGABRT
        waited = time.monotonic() - t0
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.communicate()
    r = subprocess.CompletedProcess(survivor.args, survivor.returncode, "", err)
    # exit 2, not SIGABRT (-6): was a Gloo traceback, a std::bad_cast and an abort (the coordinator's loss
    # aborted every survivor within 0.1 s, before the coordination service moved to its own process)
    line = _one_line(r)
    assert f"process {1 - killed} of 2" in line and "--resume" in line, err
    print(f"the survivor ended {waited:.1f} s after the kill (--peer-timeout 10)")
    assert not (out / "atlas.npz").exists()
    args[args.index("--coordinator") + 1] = f"localhost:{free_port()}"  # the old port may linger in TIME_WAIT
    ps = [_start(args + ["--resume", "--process", f"{i}/2"]) for i in range(2)]
    for p in ps:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    _assert_same(_arrays(out), reference)  # two processes after the kill equal one uninterrupted
    assert _leftovers(tmp_path) == []
