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


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pth-zip", "pth-legacy", "keras.h5", "keras.keras"])
def test_mutated_files_load_or_fail_with_a_jaxviz_error(seeds, workdir, worker, target):
    suffix, seed = seeds[target]

    @FUZZ
    @given(MUTATIONS)
    def run(mutations):
        check_load(worker, workdir, suffix, mutate(seed, mutations), target.startswith("pth"))

    run()


@pytest.mark.slow
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------------------------- structure and config
# (issue 24) Mutations a byte flip cannot reach: HDF5 features that point outside the file, unusual
# filters and element types, and config values a hostile author picks (names with control characters
# and path separators, huge sizes). What reads another file must be refused, whatever else happens;
# everything else loads or fails with one line that holds no raw control character.

STRUCT_EXAMPLES = 40  # per target: these add ~20 s to the file
STRUCT = settings(FUZZ, max_examples=STRUCT_EXAMPLES)

H5_TRICK = st.one_of(
    st.tuples(st.just("external_link"), st.sampled_from(["source", "missing", "self", "fifo"])),
    st.tuples(st.just("virtual"), st.sampled_from(["source", "missing", "self"])),
    st.tuples(st.just("external_storage"), st.sampled_from(["source", "missing", "passwd"]),
              st.sampled_from([0, 8, 2**31, 2**40])),
    st.tuples(st.just("filter"), st.sampled_from(["gzip", "lzf", "shuffle", "fletcher32", "scaleoffset", "unknown"])),
    st.tuples(st.just("soft_link"), st.sampled_from(["other", "dangling", "self"])),
    st.tuples(st.just("dtype"), st.sampled_from(["<f2", "<f8", "i1", "u1", "<i8", "S4", ">f4"])),
)
OUTSIDE = ("external_link", "virtual", "external_storage")

NAME_PART = st.one_of(st.sampled_from(["/", "..", "\x00", "\n", "\r", "\x1b[2J", "\x1b]0;t\x07", "\\", "~", " ",
                                       "\u202e", "x" * 300, "/tmp/x", "%s", "{}"]),
                      st.text(max_size=3))
NAME = st.lists(NAME_PART, min_size=1, max_size=4).map("".join)
HUGE = st.sampled_from([0, -1, 2**31, 2**63, 10**6, 65536, 1.5, None, "x", [2**31, 2**31], []])
CONFIG_MUTATION = st.one_of(
    st.tuples(st.just("layer_name"), st.integers(0, 10), NAME),
    st.tuples(st.just("model_name"), NAME),
    st.tuples(st.just("size"), st.integers(0, 10),
              st.sampled_from(["filters", "units", "kernel_size", "strides", "batch_shape", "dilation_rate", "groups"]),
              HUGE),
)

WORKER_STRUCT = r"""
import json, re, sys, traceback, warnings
warnings.simplefilter("ignore")
from jaxviz import JaxvizError
from weights_convert import load_weights_file
from jaxviz.io.weightfile import load_model_file

CONTROL = re.compile(r"[\x00-\x1f\x7f\x9b]")
for line in sys.stdin:
    path, refuse = json.loads(line)
    try:
        load_model_file(path)
        verdict = ["must be refused", "loaded"] if refuse else ["ok", "loaded"]
    except JaxvizError as e:
        bad = "\n" in str(e) or CONTROL.search(str(e))
        verdict = ["raw control character or newline in the message" if bad else "ok", str(e)[:300]]
    except BaseException as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        verdict = ["other exception", f"{type(e).__name__}: {str(e)[:200]} at {where.filename}:{where.lineno}"]
    print(json.dumps([verdict]), flush=True)
"""


@pytest.fixture(scope="module")
def struct_worker(workdir, seeds):
    w = Worker(workdir, WORKER_STRUCT)
    yield w
    w.stop()


@pytest.fixture(scope="module")
def outside_files(workdir):
    """What the tricks point at: another HDF5 file, a raw file, a FIFO; ``missing`` names nothing."""
    import h5py

    files = {"source": os.path.join(workdir, "source.h5"), "raw": os.path.join(workdir, "raw.bin"),
             "fifo": os.path.join(workdir, "fifo.h5"), "missing": os.path.join(workdir, "missing.h5")}
    with h5py.File(files["source"], "w") as f:
        f["x"] = np.ones(4096, np.float32)
    np.ones(4096, np.float32).tofile(files["raw"])
    os.mkfifo(files["fifo"])
    return files


def apply_h5_trick(f, index: int, trick: tuple, files: dict, self_path: str) -> bool:
    """Replace one dataset of open HDF5 file ``f`` as ``trick`` says; True when the result reads outside
    the file (it must be refused)."""
    import h5py

    names = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim > 0 and o.size > 0 else None)
    where = sorted(names)[index % len(names)]
    old = f[where][()]
    parent, _, leaf = where.rpartition("/")
    g = f[parent] if parent else f
    del f[where]
    kind = trick[0]
    if kind == "external_link":
        target = {"source": files["source"], "missing": files["missing"], "self": self_path, "fifo": files["fifo"]}[trick[1]]
        g[leaf] = h5py.ExternalLink(target, "x" if trick[1] != "self" else "/" + where)
    elif kind == "virtual":
        src = {"source": files["source"], "missing": files["missing"], "self": self_path}[trick[1]]
        layout = h5py.VirtualLayout(shape=old.shape, dtype=old.dtype)
        layout[...] = h5py.VirtualSource(src, "x", shape=old.shape, dtype=old.dtype)
        g.create_virtual_dataset(leaf, layout, fillvalue=0)
    elif kind == "external_storage":
        raw = {"source": files["raw"], "missing": files["missing"], "passwd": "/etc/passwd"}[trick[1]]
        g.create_dataset(leaf, shape=old.shape, dtype=old.dtype, external=[(raw, trick[2], max(old.nbytes, 1))])
    elif kind == "filter":
        name = trick[1]
        if name == "unknown":
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk(old.shape or (1,))
            dcpl.set_filter(32123, h5py.h5z.FLAG_OPTIONAL, (1,))
            dsid = h5py.h5d.create(g.id, leaf.encode(), h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple(old.shape), dcpl=dcpl)
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(old, np.float32))
        else:
            kw = {"gzip": dict(compression="gzip"), "lzf": dict(compression="lzf"), "shuffle": dict(shuffle=True),
                  "fletcher32": dict(fletcher32=True), "scaleoffset": dict(scaleoffset=4)}[name]
            g.create_dataset(leaf, data=old, chunks=old.shape or None, **kw)
    elif kind == "soft_link":
        target = {"other": "/" + sorted(names)[(index + 1) % len(names)], "dangling": "/nowhere",
                  "self": "/" + where}[trick[1]]
        g[leaf] = h5py.SoftLink(target)
    elif kind == "dtype":
        g.create_dataset(leaf, data=old.astype(np.dtype(trick[1])) if trick[1] != "S4" else old.astype("S4"))
    return kind in OUTSIDE


def h5_tricked(seeds, target: str, index: int, trick: tuple, files: dict, workdir: str) -> tuple[str, bool]:
    import h5py

    suffix, seed = seeds[target]
    path = os.path.join(workdir, "struct" + suffix)
    if suffix == ".h5":
        with open(path, "wb") as out:
            out.write(seed)
        with h5py.File(path, "r+") as f:
            refuse = apply_h5_trick(f, index, trick, files, path)
    else:
        member = zipfile.ZipFile(io.BytesIO(seed)).read("model.weights.h5")
        buf = io.BytesIO(member)
        with h5py.File(buf, "r+") as f:
            refuse = apply_h5_trick(f, index, trick, files, os.path.join(workdir, "member-self.h5"))
        with open(path, "wb") as out:
            out.write(repack(seed, "model.weights.h5", buf.getvalue()))
    return path, refuse


@pytest.mark.slow
@pytest.mark.parametrize("target", ["keras.h5", "keras.keras"])
def test_hdf5_structure_that_reads_outside_the_file_is_refused(seeds, workdir, struct_worker, outside_files, target):
    @STRUCT
    @given(st.integers(0, 100), H5_TRICK)
    def run(index, trick):
        path, refuse = h5_tricked(seeds, target, index, trick, outside_files, workdir)
        verdict = struct_worker.load(path, refuse)
        assert all(v == "ok" for v, _ in verdict), (trick, verdict)

    run()


def mutate_config(cfg: dict, m: tuple) -> dict:
    cfg = json.loads(json.dumps(cfg))
    layers = [l for l in cfg.get("config", {}).get("layers", []) if isinstance(l, dict)]
    if m[0] == "model_name":
        cfg["config"]["name"] = m[1]
    elif m[0] == "layer_name" and layers:
        layers[m[1] % len(layers)].setdefault("config", {})["name"] = m[2]
    elif m[0] == "size" and layers:
        c = layers[m[1] % len(layers)].setdefault("config", {})
        c[m[2]] = [None, m[3], m[3], 1] if m[2] == "batch_shape" and isinstance(m[3], int) else m[3]
        layers[m[1] % len(layers)].pop("build_config", None)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("target", ["keras.h5", "keras.keras"])
def test_config_mutations_load_or_fail_with_one_clean_line(seeds, workdir, struct_worker, target):
    import h5py

    suffix, seed = seeds[target]
    if suffix == ".keras":
        base = json.loads(zipfile.ZipFile(io.BytesIO(seed)).read("config.json"))
    else:
        with h5py.File(io.BytesIO(seed), "r") as f:
            base = json.loads(f.attrs["model_config"])

    @STRUCT
    @given(st.lists(CONFIG_MUTATION, min_size=1, max_size=3))
    def run(mutations):
        cfg = base
        for m in mutations:
            cfg = mutate_config(cfg, m)
        text = json.dumps(cfg)
        path = os.path.join(workdir, "config" + suffix)
        if suffix == ".keras":
            data = repack(seed, "config.json", text.encode())
            with open(path, "wb") as out:
                out.write(data)
        else:
            with open(path, "wb") as out:
                out.write(seed)
            with h5py.File(path, "r+") as f:
                f.attrs["model_config"] = text
        verdict = struct_worker.load(path, False)
        assert all(v == "ok" for v, _ in verdict), (mutations, verdict)

    run()
