"""Fuzzing the weight-file readers: small valid ``.pth`` (zip and legacy), Keras ``.h5`` and ``.keras``
files, their bytes flipped, truncated, spliced, overwritten with boundary integers and extended, and the
members of their zip archives mutated and repacked (a raw mutation of a stored member mostly stops at
its CRC). Loading through the public loaders must either succeed or raise a one-line
:class:`JaxvizError`: no other exception, no crash, no hang.

The loads run in one long-lived worker process, so that a crash (a segmentation fault in a C library)
or a hang (an endless loop inside libhdf5, which holds the GIL and cannot be interrupted) fails the
example that caused it instead of killing or freezing pytest; the worker is restarted after either.
Reproducible: ``derandomize=True`` and no example database.
"""

import collections
import io
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile as H
from weights_convert import read_state_dict

EXAMPLES = 150  # per target
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_S = 60  # per example: far above any load of these small files, so only a true hang trips it

# 1-, 2-, 4- and 8-byte integers at the edges (lengths, counts, offsets are where readers trust files)
EDGES = [v.to_bytes(n, "little", signed=v < 0) for n in (1, 2, 4, 8) for v in
         (0, 1, 2**(8 * n - 1) - 1, 2**(8 * n) - 1 if n < 8 else -1, 2**(8 * n - 2))]

POS = st.integers(0, 2**31)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), POS, st.integers(1, 255)),
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("splice"), POS, POS, st.integers(1, 64)),
    st.tuples(st.just("edge"), POS, st.sampled_from(EDGES)),
)
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=4)


def mutate(data: bytes, mutations: list) -> bytes:
    """Apply the mutations in order; positions wrap around the current length."""
    b = bytearray(data)
    for m in mutations:
        n = max(len(b), 1)
        if m[0] == "flip" and b:
            b[m[1] % n] ^= m[2]
        elif m[0] == "truncate":
            del b[m[1] % n:]
        elif m[0] == "insert":
            b[m[1] % n:m[1] % n] = m[2]
        elif m[0] == "splice" and b:  # copy a chunk from one place over another
            src, dst = m[1] % n, m[2] % n
            chunk = bytes(b[src:src + m[3]])
            b[dst:dst + len(chunk)] = chunk
        elif m[0] == "edge" and b:
            p = m[1] % n
            b[p:p + len(m[2])] = m[2]
    return bytes(b)


def repack(data: bytes, member: str, new: bytes) -> bytes:
    """The zip archive ``data`` with ``member`` replaced by ``new``; other members and their order kept."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, new if info.filename == member else src.read(info))
    return out.getvalue()


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as d:
        yield d


@pytest.fixture(scope="module")
def seeds(workdir) -> dict:
    """The valid files every mutation starts from: {target name: (suffix, bytes)}."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3)).astype(np.float32)
    sd = collections.OrderedDict({
        "conv.weight": H.tensor_of("0", rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "param"),
        "conv.bias": H.tensor_of("1", rng.normal(size=2).astype(np.float32), "v1"),
        "fc.weight": H.Tensor(H.Storage.of("2", a), 0, (3, 4), (1, 3)),  # a transposed view
        "bn.num_batches_tracked": H.tensor_of("3", np.array(7, np.int64)),
    })
    out = {}
    for layout in ("zip", "legacy"):
        p = os.path.join(workdir, f"seed_{layout}.pth")
        H.write(p, layout, sd)
        out[f"pth-{layout}"] = (".pth", open(p, "rb").read())
        read_state_dict(p)  # the seeds themselves are valid

    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="fc")])
    for suffix in (".h5", ".keras"):
        p = os.path.join(workdir, "seed" + suffix)
        model.save(p)
        out["keras" + suffix] = (suffix, open(p, "rb").read())
    return out


WORKER = r"""
import json, sys, traceback, warnings
warnings.simplefilter("ignore")
import numpy as np
from jaxviz import JaxvizError
from weights_convert import load_weights_file, read_state_dict


def check(load, path):
    try:
        result = load(path)
    except JaxvizError as e:
        return ["ok" if "\n" not in str(e) else "multi-line error", str(e)[:300]]
    except BaseException as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        return ["other exception", f"{type(e).__name__}: {str(e)[:200]} at {where.filename}:{where.lineno}"]
    if load is read_state_dict:  # copies out of the file, never views of its buffers
        good = all(isinstance(v, np.ndarray) and v.flags.owndata for v in result.values())
    else:
        good = all(np.isfinite(np.asarray(v)).all() for p in result[1].values() for v in p.values())
    return ["ok" if good else "bad result", "loaded"]


for line in sys.stdin:
    path, pth = json.loads(line)
    loads = (read_state_dict, load_weights_file) if pth else (load_weights_file,)
    print(json.dumps([check(load, path) for load in loads]), flush=True)
"""


class Worker:
    """A process that loads files on request and answers one JSON line each; a crash or a hang is
    reported as such and the process replaced."""

    def __init__(self, workdir: str, code: str = WORKER, hang_s: float = HANG_S):
        self.workdir, self.code, self.hang_s = workdir, code, hang_s
        self.start()

    def start(self) -> None:
        self.log = open(os.path.join(self.workdir, "worker.log"), "w")  # libhdf5 prints its error stacks
        self.proc = subprocess.Popen([sys.executable, "-c", self.code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda out, q: [q.put(x) for x in out] + [q.put(None)],
                         args=(self.proc.stdout, self.lines), daemon=True).start()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def load(self, path: str, pth: bool) -> list:
        """``[[verdict, detail]]``, one per loader; verdict "ok" means success or a one-line JaxvizError."""
        self.proc.stdin.write(json.dumps([path, pth]) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=self.hang_s)
        except queue.Empty:
            self.stop()
            self.start()
            return [["hang", f"no answer in {self.hang_s} s"]]
        if line is None:
            code = self.proc.wait()
            self.log.close()
            self.start()
            return [["crash", f"the loading process died with status {code}"]]
        return json.loads(line)


@pytest.fixture(scope="module")
def worker(workdir, seeds):
    w = Worker(workdir)
    for name, (suffix, data) in seeds.items():  # the worker's imports are done before the first example
        path = os.path.join(workdir, "seed" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        verdicts = w.load(path, name.startswith("pth"))
        assert all(v == "ok" for v, _ in verdicts), verdicts
        if name.startswith("pth"):  # read_state_dict reads the seed; no registered architecture fits it
            assert verdicts[0] == ["ok", "loaded"], verdicts
    yield w
    w.stop()


def check_load(worker: Worker, workdir: str, suffix: str, data: bytes, pth: bool) -> None:
    """Load ``data`` as a file ending in ``suffix``: success or a one-line JaxvizError, nothing else."""
    path = os.path.join(workdir, "case" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    verdicts = worker.load(path, pth)
    assert all(v == "ok" for v, _ in verdicts), verdicts


@pytest.mark.parametrize("target", ["pth-zip", "pth-legacy", "keras.h5", "keras.keras"])
def test_mutated_files_load_or_fail_with_a_jaxviz_error(seeds, workdir, worker, target):
    suffix, seed = seeds[target]

    @FUZZ
    @given(MUTATIONS)
    def run(mutations):
        check_load(worker, workdir, suffix, mutate(seed, mutations), target.startswith("pth"))

    run()


@pytest.mark.parametrize("target", ["pth-zip", "keras.keras"])
def test_mutated_archive_members_load_or_fail_with_a_jaxviz_error(seeds, workdir, worker, target):
    suffix, seed = seeds[target]
    members = zipfile.ZipFile(io.BytesIO(seed)).namelist()

    @FUZZ
    @given(st.sampled_from(members), MUTATIONS)
    def run(member, mutations):
        old = zipfile.ZipFile(io.BytesIO(seed)).read(member)
        check_load(worker, workdir, suffix, repack(seed, member, mutate(old, mutations)), target.startswith("pth"))

    run()


def test_the_seeds_load_and_the_mutator_mutates(seeds, workdir):
    """The fuzz starts from files the loaders accept, and its mutations change them."""
    suffix, seed = seeds["pth-zip"]
    path = os.path.join(workdir, "plain.pth")
    with open(path, "wb") as f:
        f.write(seed)
    sd = read_state_dict(path)
    assert list(sd) == ["conv.weight", "conv.bias", "fc.weight", "bn.num_batches_tracked"]
    assert sd["fc.weight"].shape == (3, 4)
    assert mutate(b"abcd", [("flip", 5, 1)]) == b"accd"  # position 5 wraps to 1; b ^ 1 == c
    assert mutate(b"abcd", [("truncate", 2)]) == b"ab"
    assert mutate(b"abcd", [("insert", 1, b"XY")]) == b"aXYbcd"
    assert mutate(b"abcdef", [("splice", 0, 4, 2)]) == b"abcdab"
    assert mutate(b"abcdef", [("edge", 1, b"\xff\xff")]) == b"a\xff\xffdef"


def test_the_worker_reports_crashes_and_hangs_and_recovers(workdir):
    """The harness itself can fail: a segmentation fault and an endless loop are verdicts, not a dead
    or frozen pytest, and the next request is answered by a fresh process."""
    code = ("import ctypes, json, sys, time\n"
            "for line in sys.stdin:\n"
            "    path, _ = json.loads(line)\n"
            "    if path == 'crash': ctypes.string_at(0)\n"
            "    if path == 'hang': time.sleep(3600)\n"
            "    print(json.dumps([['ok', path]]), flush=True)\n")
    w = Worker(workdir, code, hang_s=5)
    try:
        assert w.load("fine", False) == [["ok", "fine"]]
        assert w.load("crash", False)[0][0] == "crash"
        assert w.load("hang", False)[0][0] == "hang"
        assert w.load("fine", False) == [["ok", "fine"]]
    finally:
        w.stop()


def test_an_h5_with_a_zeroed_global_heap_object_does_not_hang(seeds, workdir):
    """Found by the fuzz above: the variable-length strings of an .h5 file's attributes (layer names,
    the model config) live in a global heap; with one object's size and the next object's header
    zeroed, libhdf5 loops forever reading the attribute, holding the GIL."""
    suffix, seed = seeds["keras.h5"]
    at = seed.find(b"\x07" + bytes(7) + b"flatten\x00")  # the heap object holding the name 'flatten'
    assert seed.find(b"GCOL") < at
    data = seed[:at] + bytes(32) + seed[at + 32:]
    path = os.path.join(workdir, "heap" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    w = Worker(workdir, hang_s=20)
    try:
        assert w.load(path, False)[0][0] == "ok"
    finally:
        w.stop()
