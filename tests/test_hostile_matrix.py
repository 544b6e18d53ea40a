"""The hostile-file matrix (issue 24): a model file, an image or an output path can only ever cost a
clear one-line error; it never reaches outside its own bytes.

Each case builds its inputs in a sandbox directory (``tests/hostile_files2.py``), runs the command line
in a child process with a time limit and a memory bound, and asserts:

* an expected refusal exits with status 2, the last line of stderr is ``jaxviz CMD: error: ...`` and it
  is the only line with ``error:``; no ``Traceback`` anywhere;
* a case whose hostile names can be made safe (``expect="ok"``) exits 0 and writes only inside ``--out``;
* nothing outside ``--out`` is new or changed (the sandbox tree -- names, types, sizes, mtimes -- is
  listed before and after; canary files sit where a path escape would write), no ``.partial`` stage is
  left next to ``--out`` (an error case leaves nothing at all);
* no raw control character (ESC, CR, BEL, NUL, ...) reaches stdout or stderr;
* finished in under 60 s with a peak resident memory under 2 GB.

The children come from a fork server: one process imports jax, flax, orbax, h5py, ... once (no JAX
backend is started: checked), then forks one child per case, which sets its limits, points fd 0/1/2 at
/dev/null and two files, imports :mod:`jaxviz.cli` and calls ``main(argv)``; the child starts its own
JAX backend. A child costs ~0.6 s instead of ~4 s for a fresh interpreter. The server polls each
child's resident set from /proc every 20 ms and kills it above 2 GB or after 60 s; ``RLIMIT_AS`` is a
backstop at 8 GB only (XLA reserves address space: a 1.5 GB ``RLIMIT_AS`` crashes its start-up).
Cases that need another environment (``JAX_PLATFORMS``) run as a plain ``python -m jaxviz.cli``
subprocess under the same watch.

A second table checks Python API misuse: each a JaxvizError (or TypeError/ValueError) whose message
names the Python argument, and no ``--`` flag.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import hostile_files2 as B

TIMEOUT_S = float(os.environ.get("JAXVIZ_MATRIX_TIMEOUT", "60"))
RSS_CAP_MB = 2048
AS_CAP = 8 << 30
DIGITS = "builtin:digits_cnn"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")  # everything a terminal acts on but \t and \n
FORGED = re.compile(r"^\s*jaxviz\b[^:\n]*: error:", re.M)  # a line that reads as jaxviz's own error

WATCH = r'''
import os, signal, time


def rss_kb(pid):
    # VmHWM: the high-water mark of the child's own memory since its exec. (wait4's ru_maxrss is not used
    # for children that were exec'ed: Linux carries the spawning process's high-water mark over into it, so a
    # child spawned by a large pytest process would report pytest's size.)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def watch(pid, timeout, rss_cap_mb, use_rusage=True):
    """Wait for child ``pid``; kill it above ``rss_cap_mb`` of resident memory or after ``timeout`` s."""
    t0 = time.monotonic()
    peak, killed = 0, None
    while True:
        done, status, ru = os.wait4(pid, os.WNOHANG)
        if done:
            break
        peak = max(peak, rss_kb(pid))
        if killed is None and peak > rss_cap_mb * 1024:
            killed = "memory"
        elif killed is None and time.monotonic() - t0 > timeout:
            killed = "time"
        if killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    return {"rc": os.waitstatus_to_exitcode(status), "wall_s": round(time.monotonic() - t0, 2),
            "peak_mb": round(max(peak, ru.ru_maxrss if use_rusage else 0) / 1024, 1), "killed": killed}
'''

SERVER = WATCH + r'''
import json, resource, sys, traceback
import numpy, jax, jax.numpy, flax.linen, h5py, PIL.Image, optax, orbax.checkpoint
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
try:
    import cv2
except ImportError:
    pass
import jax._src.xla_bridge as xb

print(json.dumps({"backends": sorted(getattr(xb, "_backends", {}) or {})}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            resource.setrlimit(resource.RLIMIT_AS, (req["as_cap"], req["as_cap"]))
            os.chdir(req["cwd"])
            for fd, (name, flags) in enumerate([(os.devnull, os.O_RDONLY),
                                                (req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                                (req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)]):
                os.dup2(os.open(name, flags, 0o644), fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sys.argv = ["jaxviz", *req["argv"]]
            import jaxviz.cli
            rc = jaxviz.cli.main(req["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc if isinstance(rc, int) else 1)
    print(json.dumps(watch(pid, req["timeout"], req["rss_cap_mb"])), flush=True)
'''

_watch_ns: dict = {}
exec(WATCH, _watch_ns)


class ForkServer:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        hello = json.loads(self.proc.stdout.readline())
        self.usable = not hello["backends"]  # a started backend cannot be forked safely

    def run(self, argv, cwd, stdout, stderr) -> dict:
        req = {"argv": argv, "cwd": cwd, "stdout": stdout, "stderr": stderr, "timeout": TIMEOUT_S,
               "rss_cap_mb": RSS_CAP_MB, "as_cap": AS_CAP}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_subprocess(argv, cwd, stdout, stderr, env=None) -> dict:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_CAP, AS_CAP))

    with open(stdout, "wb") as o, open(stderr, "wb") as e:
        p = subprocess.Popen([sys.executable, "-m", "jaxviz.cli", *argv], cwd=cwd, stdin=subprocess.DEVNULL, stdout=o,
                             stderr=e, env={**os.environ, **(env or {})}, preexec_fn=limit)
        result = _watch_ns["watch"](p.pid, TIMEOUT_S, RSS_CAP_MB, use_rusage=False)
        p.returncode = result["rc"]
    return result


@pytest.fixture(scope="module")
def server():
    s = ForkServer()
    yield s
    s.close()


# --------------------------------------------------------------------------------------------- sandbox


class Sandbox:
    """A case's world: inputs under ``in/``, ``--out`` at ``a/b/c/out`` (so that a name three levels up
    from the stage lands at ``a/escape_rel/``), canary files where the escaping names would write."""

    def __init__(self, root: Path):
        self.root = root
        (root / "in").mkdir(parents=True)
        (root / "a" / "b" / "c").mkdir(parents=True)
        self.out = str(root / "a" / "b" / "c" / "out")
        self.img = B.write_png(root / "in" / "img.png", 8)
        self.img28 = B.write_png(root / "in" / "img28.png", 28)
        self.abs_target = str(root / "abs_target")
        for d in (root / "a" / "escape_rel", Path(self.abs_target)):
            d.mkdir()
            for stem in ("x", "x_hist", "x_kernels", "x_filters"):
                for ext in (".png", ".npz", ".json"):
                    (d / (stem + ext)).write_text("canary")

    def p(self, name: str) -> str:
        return str(self.root / "in" / name)


def snapshot(root: str, skip: str | None) -> dict:
    """``{relative path: (type, size, mtime_ns)}`` of everything under ``root`` but ``skip`` (the --out);
    directories by type only (their mtime changes when --out appears beside them)."""
    found = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            if skip and (p == skip or p.startswith(skip + os.sep)):
                continue
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            found[os.path.relpath(p, root)] = (kind, 0, 0) if stat.S_ISDIR(kind) else (kind, st.st_size, st.st_mtime_ns)
    return found


@dataclasses.dataclass
class Case:
    family: str
    id: str
    build: Callable[[Sandbox], list]  # -> argv (of jaxviz); may also build files in the sandbox
    expect: str = "error"  # "error": status 2, one line; "ok": status 0, files only inside --out; "either"
    fragment: str | None = None  # a piece of the error line, when the right message is known
    env: dict | None = None  # run as a subprocess with these environment variables
    needs: Callable[[], str | None] | None = None  # a reason to skip, or None
    out: Callable[[Sandbox], str] | None = None  # the --out path when it is not the sandbox's


# --------------------------------------------------------------------------------------------- argv builders


def acts(w, s, *extra):
    return ["activations", "--weights", w, "--image", s.img, "--out", s.out, *extra]


def wts(w, s, *extra):
    return ["weights", "--weights", w, "--out", s.out, *extra]


def pred(w, s, img=None):
    return ["predict", "--weights", w, img or s.img]


def filt(w, s, layer, *extra):
    return ["filters", "--weights", w, "--layer", layer, "--count", "1", "--size", "8", "--steps", "1", "--no-quality",
            "--out", s.out, *extra]


def digits_filters(s, *extra):
    return ["filters", "--weights", DIGITS, "--layer", "conv2d", "--size", "28", "--out", s.out, *extra]


def digits_gradcam(s, *extra):
    return ["gradcam", "--weights", DIGITS, "--image", s.img28, "--out", s.out, *extra]


REL = "../../../escape_rel/x"  # from the stage a/b/c/.out.partial-*: lands in a/escape_rel/
NEWLINE = "conv\njaxviz activations: error: forged by the file"
ANSI = "\x1b[2J\x1b[31mconv\x1b[0m"
OSC = "\x1b]0;pwned\x07conv"
CR = "conv\rOVERWRITTEN"
LONG = "L" * 300
NUL = "co\x00nv"
BIG = 1_000_000_000


def abs_name(s: Sandbox) -> str:
    return os.path.join(s.abs_target, "x")


def k_named(s, name, layer="conv"):
    return B.keras_layer_named(s.p("m.keras"), name, layer)


def h_named(s, name):
    return B.h5_layer_named(s.p("m.h5"), name)


def ckpt_named(s, name):
    """A checkpoint made by ``weights_convert`` from a .keras whose conv layer is called ``name``; when
    the converter refuses the name (one line, status 2), the same checkpoint is made by editing a clean
    conversion's jaxviz.json (the layer renamed in its graph and params keys are not touched: the
    reader then meets the name in the metadata first)."""
    src = k_named(s, name)
    status, err = B.converted_checkpoint(src, s.p("ck"))
    if status != 0:
        assert status == 2 and err.count("\n") <= 1 and "Traceback" not in err, err
        shutil.rmtree(s.p("ck"), ignore_errors=True)
        status, err = B.converted_checkpoint(B.keras_layer_named(s.p("clean.keras"), "conv"), s.p("ck"))
        assert status == 0, err
        meta_path = os.path.join(s.p("ck"), "jaxviz.json")
        meta = open(meta_path).read().replace('"conv"', json.dumps(name))
        with open(meta_path, "w") as f:
            f.write(meta)
    return s.p("ck")


def secret(s) -> str:
    """A file outside the model whose bytes the HDF5 tricks pull in: 72 bytes (the conv kernel's size)."""
    path = s.p("secret.bin")
    np.full((3, 3, 1, 2), 7.0, np.float32).tofile(path)
    return path


def source_h5(s) -> str:
    return B.write_source(s.p("source.h5"), np.full((3, 3, 1, 2), 7.0, np.float32))


def ckpt_with(s, member: str, make: Callable[[str], object]) -> str:
    ck = B.digits_checkpoint(s.p("ck"))
    path = os.path.join(ck, member)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
    make(path)
    return ck


def folder_with(s, names: list[str]) -> str:
    d = s.p("photos")
    os.mkdir(d)
    for n in names:
        B.write_png(os.path.join(d, n), 28)
    return d


def no_tmpfs() -> str | None:
    return None if os.geteuid() == 0 and shutil.which("mount") else "disk full needs a tmpfs mount (root)"


def root_ignores_modes() -> str | None:
    return "running as root: file modes do not stop root from writing" if os.geteuid() == 0 else None


def unwritable_parent(s):
    parent = s.root / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    return str(parent / "out")


# --------------------------------------------------------------------------------------------- the cases


def cases() -> list[Case]:
    C = Case
    out = []
    # -- path escape and terminal text through layer and model names --------------------------------------
    for tag, name in [("relative", REL), ("dotdot", ".."), ("300-chars", LONG), ("newline", NEWLINE),
                      ("ansi", ANSI), ("osc-title", OSC), ("carriage-return", CR)]:
        out.append(C("name-escape", f"keras-{tag}-activations", lambda s, n=name: acts(k_named(s, n), s), "ok"))
    # a NUL byte: made safe or refused in one line, both fine
    out.append(C("name-escape", "keras-nul-activations", lambda s: acts(k_named(s, NUL), s), "either"))
    out.append(C("name-escape", "keras-absolute-activations", lambda s: acts(k_named(s, abs_name(s)), s), "ok"))
    out.append(C("name-escape", "keras-relative-weights", lambda s: wts(k_named(s, REL), s), "ok"))
    out.append(C("name-escape", "keras-absolute-weights", lambda s: wts(k_named(s, abs_name(s)), s), "ok"))
    out.append(C("name-escape", "keras-ansi-weights", lambda s: wts(k_named(s, ANSI), s), "ok"))
    out.append(C("name-escape", "keras-relative-filters", lambda s: filt(k_named(s, REL), s, REL), "ok"))
    out.append(C("name-escape", "keras-absolute-filters", lambda s: filt(k_named(s, abs_name(s)), s, abs_name(s)), "ok"))
    out.append(C("name-escape", "keras-pool-relative-activations",
                 lambda s: acts(k_named(s, REL.replace("x", "x_pool"), "pool"), s), "ok"))
    for tag, name in [("relative", REL), ("ansi", ANSI), ("newline", NEWLINE), ("300-chars", LONG)]:
        out.append(C("name-escape", f"h5-{tag}-activations", lambda s, n=name: acts(h_named(s, n), s), "ok"))
    out.append(C("name-escape", "h5-absolute-activations", lambda s: acts(h_named(s, abs_name(s)), s), "ok"))
    out.append(C("name-escape", "h5-relative-weights", lambda s: wts(h_named(s, REL), s), "ok"))
    for tag, name in [("relative", REL), ("ansi", ANSI), ("300-chars", LONG)]:
        out.append(C("name-escape", f"checkpoint-{tag}-activations", lambda s, n=name: acts(ckpt_named(s, n), s), "ok"))
    out.append(C("name-escape", "checkpoint-absolute-activations", lambda s: acts(ckpt_named(s, abs_name(s)), s), "ok"))
    out.append(C("name-escape", "model-name-3MB-in-error",
                 lambda s: acts(B.keras_model_named(s.p("m.keras"), "M" * 3_000_000), s, "--layers", "nope")))
    out.append(C("name-escape", "model-name-ansi-in-error",
                 lambda s: acts(B.keras_model_named(s.p("m.keras"), ANSI + "\n" + OSC), s, "--layers", "nope")))
    out.append(C("name-escape", "layer-names-ansi-listed-in-error",
                 lambda s: acts(k_named(s, ANSI), s, "--layers", "nope")))

    # -- HDF5 that reads other files ----------------------------------------------------------------------
    K = B.TINY_KERNEL
    out += [
        C("hdf5-outside", "h5-external-link-weights",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.external_link(f, K, source_h5(s))), s)),
        C("hdf5-outside", "h5-external-link-activations",
          lambda s: acts(B.h5_edited(s.p("m.h5"), lambda f: B.external_link(f, K, source_h5(s))), s)),
        C("hdf5-outside", "h5-virtual-dataset",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.virtual(f, K, source_h5(s))), s)),
        C("hdf5-outside", "h5-virtual-dataset-missing-source",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.virtual(f, K, s.p("gone.h5"))), s)),
        C("hdf5-outside", "h5-external-storage-sandbox-file",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.external_storage(f, K, secret(s))), s)),
        C("hdf5-outside", "h5-external-storage-etc-passwd",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.external_storage(f, K, "/etc/passwd")), s)),
        C("hdf5-outside", "h5-external-storage-relative-name",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.external_storage(f, K, os.path.relpath(secret(s),
                                                                                                   s.p("")))), s)),
        C("hdf5-outside", "h5-filter-scaleoffset",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.scaleoffset(f, K)), s)),
        C("hdf5-outside", "h5-filter-unknown",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.unknown_filter(f, K)), s)),
        C("hdf5-outside", "keras-member-external-link",
          lambda s: wts(B.keras_weights_member(s.p("m.keras"), lambda f: B.external_link(f, B.KERAS_KERNEL,
                                                                                         source_h5(s))), s)),
        C("hdf5-outside", "keras-member-virtual-dataset",
          lambda s: wts(B.keras_weights_member(s.p("m.keras"), lambda f: B.virtual(f, B.KERAS_KERNEL, source_h5(s))),
                        s)),
        C("hdf5-outside", "keras-member-external-storage",
          lambda s: wts(B.keras_weights_member(s.p("m.keras"), lambda f: B.external_storage(f, B.KERAS_KERNEL,
                                                                                            secret(s))), s)),
        C("hdf5-outside", "keras-member-filter-unknown",
          lambda s: wts(B.keras_weights_member(s.p("m.keras"), lambda f: B.unknown_filter(f, B.KERAS_KERNEL)), s)),
    ]

    # -- FIFOs (a blocking open or read is a hang) -----------------------------------------------------------
    out += [
        C("fifo", "fifo-image-predict", lambda s: pred(DIGITS, s, B.fifo(s.p("pipe.png")))),
        C("fifo", "fifo-image-activations",
          lambda s: ["activations", "--weights", DIGITS, "--image", B.fifo(s.p("pipe.png")), "--out", s.out]),
        C("fifo", "fifo-image-in-folder",
          lambda s: ["gradcam", "--weights", DIGITS, "--image",
                     (folder_with(s, ["a.png"]), B.fifo(s.p("photos/b.png")))[0], "--out", s.out]),
        C("fifo", "fifo-weights-h5", lambda s: wts(B.fifo(s.p("m.h5")), s)),
        C("fifo", "fifo-weights-keras", lambda s: wts(B.fifo(s.p("m.keras")), s)),
        C("fifo", "fifo-weights-pth", lambda s: wts(B.fifo(s.p("m.pth")), s)),
        C("fifo", "fifo-checkpoint-jaxviz-json", lambda s: wts(ckpt_with(s, "jaxviz.json", B.fifo), s)),
        C("fifo", "fifo-checkpoint-orbax-metadata", lambda s: wts(ckpt_with(s, "params/_METADATA", B.fifo), s)),
        C("fifo", "fifo-checkpoint-orbax-manifest", lambda s: wts(ckpt_with(s, "params/manifest.ocdbt", B.fifo), s)),
        C("fifo", "fifo-h5-external-link-target",
          lambda s: wts(B.h5_edited(s.p("m.h5"), lambda f: B.external_link(f, K, B.fifo(s.p("target.h5")))), s)),
    ]

    # -- devices and other non-regular files -----------------------------------------------------------------
    def linked(target):
        return lambda p: os.symlink(target, p)

    out += [
        C("non-regular", "dev-zero-weights", lambda s: wts("/dev/zero", s)),
        C("non-regular", "dev-zero-weights-named-keras", lambda s: wts((os.symlink("/dev/zero", s.p("z.keras")),
                                                                         s.p("z.keras"))[1], s)),
        C("non-regular", "dev-zero-weights-named-pth", lambda s: wts((os.symlink("/dev/zero", s.p("z.pth")),
                                                                       s.p("z.pth"))[1], s)),
        C("non-regular", "dev-zero-image", lambda s: pred(DIGITS, s, "/dev/zero")),
        C("non-regular", "dev-zero-image-symlink", lambda s: pred(DIGITS, s, (os.symlink("/dev/zero", s.p("z.png")),
                                                                               s.p("z.png"))[1])),
        C("non-regular", "checkpoint-jaxviz-json-to-dev-zero", lambda s: wts(ckpt_with(s, "jaxviz.json",
                                                                                       linked("/dev/zero")), s)),
        C("non-regular", "checkpoint-jaxviz-json-sparse-3GiB", lambda s: wts(ckpt_with(s, "jaxviz.json", B.sparse), s)),
        C("non-regular", "checkpoint-jaxviz-json-is-a-directory", lambda s: wts(ckpt_with(s, "jaxviz.json", os.mkdir),
                                                                                s)),
        C("non-regular", "checkpoint-params-is-a-file",
          lambda s: wts(ckpt_with(s, "params", lambda p: open(p, "w").write("x")), s)),
        C("non-regular", "weights-is-a-socket", lambda s: wts(s.sock(s.p("m.h5")), s)),
        C("non-regular", "weights-is-a-directory-named-keras", lambda s: wts((os.mkdir(s.p("d.keras")),
                                                                               s.p("d.keras"))[1], s)),
    ]

    # -- size bombs -------------------------------------------------------------------------------------------
    out += [
        C("size-bomb", "h5-gzip-int8-kernel-float32-9GiB", lambda s: wts(B.weights_only_bomb(s.p("bomb.h5")), s)),
        C("size-bomb", "keras-deflate-bomb-member-2.5GiB", lambda s: wts(cached(s, "bomb.keras", B.deflate_bomb), s)),
        C("size-bomb", "upsampling-10000x10000", lambda s: acts(B.upsampling_bomb(s.p("up.keras")), s)),
        C("size-bomb", "upsampling-10000x10000-predict", lambda s: pred(B.upsampling_bomb(s.p("up.keras")), s)),
        C("size-bomb", "input-65536x65536", lambda s: acts(B.huge_input(s.p("in.keras")), s)),
        # listing the shapes computes nothing: it works at any size
        C("size-bomb", "input-65536x65536-layers", lambda s: ["layers", "--weights", B.huge_input(s.p("in.keras"))], "ok"),
        C("size-bomb", "200000-activation-layers", lambda s: wts(cached(s, "acts.keras", B.many_activations), s)),
        C("size-bomb", "20M-empty-dicts-config", lambda s: wts(cached(s, "dicts.keras", B.empty_dicts), s)),
        C("size-bomb", "config-nested-200000-deep", lambda s: wts(B.deeply_nested(s.p("deep.keras")), s)),
    ]

    # -- numbers on the command line without an upper bound ------------------------------------------------------
    out += [
        C("cli-numbers", "filters-steps-1e9", lambda s: digits_filters(s, "--steps", str(BIG)), fragment="--steps"),
        C("cli-numbers", "filters-batch-size-1e9", lambda s: digits_filters(s, "--batch-size", str(BIG)),
          fragment="--batch-size"),
        C("cli-numbers", "filters-octaves-1e9", lambda s: digits_filters(s, "--octaves", str(BIG)), fragment="--octaves"),
        C("cli-numbers", "filters-octave-scale-1e300", lambda s: digits_filters(s, "--octaves", "2", "--octave-scale",
                                                                               "1e300"), fragment="--octave-scale"),
        C("cli-numbers", "filters-count-1e9", lambda s: digits_filters(s, "--count", str(BIG)), fragment="--count"),
        C("cli-numbers", "filters-seed-2**70", lambda s: digits_filters(s, "--seed", str(2**70), "--steps", "1"),
          fragment="--seed"),
        C("cli-numbers", "gradcam-smoothgrad-samples-1e9",
          lambda s: digits_gradcam(s, "--method", "smoothgrad", "--samples", str(BIG)), fragment="--samples"),
        C("cli-numbers", "gradcam-batch-size-1e9", lambda s: digits_gradcam(s, "--batch-size", str(BIG)),
          fragment="--batch-size"),
        C("cli-numbers", "gradcam-ig-steps-1e9", lambda s: digits_gradcam(s, "--method", "ig", "--steps", str(BIG)),
          fragment="--steps"),
        C("cli-numbers", "gradcam-scorecam-chunk-1e9",
          lambda s: digits_gradcam(s, "--method", "scorecam", "--chunk", str(BIG)), fragment="--chunk"),
        C("cli-numbers", "activations-per-row-1e9",
          lambda s: ["activations", "--weights", DIGITS, "--image", s.img28, "--per-row", str(BIG), "--out", s.out],
          fragment="--per-row"),
        C("cli-numbers", "predict-top-1e9", lambda s: ["predict", "--weights", DIGITS, "--top", str(BIG), s.img28],
          fragment="--top"),
    ]

    # -- output paths ---------------------------------------------------------------------------------------------
    def dangling(s):
        os.symlink(s.p("nowhere"), s.root / "dangling")
        return str(s.root / "dangling")

    def dangling_parent(s):
        os.symlink(s.p("nowhere"), s.root / "dangling_dir")
        return str(s.root / "dangling_dir" / "out")

    out += [
        C("output", "out-dangling-symlink", lambda s: acts(DIGITS, s), out=dangling),
        C("output", "out-parent-dangling-symlink", lambda s: acts(DIGITS, s), out=dangling_parent),
        # 250 characters is a legal file name (the stage beside it must still fit); 256 is not
        C("output", "out-name-250-chars", lambda s: acts(DIGITS, s), "ok", out=lambda s: str(s.root / ("o" * 250))),
        C("output", "out-name-256-chars", lambda s: acts(DIGITS, s), out=lambda s: str(s.root / ("o" * 256))),
        C("output", "out-is-a-file", lambda s: acts(DIGITS, s),
          out=lambda s: (open(s.root / "file", "w").write("x"), str(s.root / "file"))[1]),
        C("output", "out-parent-in-proc", lambda s: acts(DIGITS, s), out=lambda s: "/proc/self/jaxviz-hostile-out"),
        C("output", "out-parent-unwritable", lambda s: acts(DIGITS, s), out=unwritable_parent,
          needs=root_ignores_modes),
        C("output", "out-disk-full", lambda s: acts(DIGITS, s), out=lambda s: s.tiny_disk(), needs=no_tmpfs),
    ]

    # -- platform, numerics, terminal text in image names ------------------------------------------------------------
    out += [
        C("platform", "jax-platforms-cuda", lambda s: pred(DIGITS, s, s.img28), env={"JAX_PLATFORMS": "cuda"}),
        C("platform", "jax-platforms-tpu", lambda s: pred(DIGITS, s, s.img28), env={"JAX_PLATFORMS": "tpu"}),
        C("numerics", "batchnorm-negative-epsilon-predict", lambda s: pred(B.bn_epsilon(s.p("eps.keras")), s)),
        C("numerics", "batchnorm-negative-epsilon-gradcam",
          lambda s: ["gradcam", "--weights", B.bn_epsilon(s.p("eps.keras")), "--image", s.img, "--out", s.out]),
        C("numerics", "batchnorm-zero-epsilon-predict", lambda s: pred(B.bn_epsilon(s.p("eps.keras"), 0.0), s)),
        C("terminal", "image-name-ansi-in-folder",
          lambda s: ["gradcam", "--weights", DIGITS, "--image", folder_with(s, ["a\x1b[2J\x1b]0;t\x07.png"]), "--out",
                     s.out], "ok"),
        C("terminal", "image-name-newline-in-folder",
          lambda s: ["gradcam", "--weights", DIGITS, "--image",
                     folder_with(s, ["b\njaxviz gradcam: error: forged.png"]), "--out", s.out], "ok"),
        C("terminal", "image-name-ansi-missing", lambda s: pred(DIGITS, s, s.p("\x1b[2Jgone\r.png"))),
        C("terminal", "image-name-ansi-not-an-image",
          lambda s: pred(DIGITS, s, (open(s.p("\x1b]0;t\x07.png"), "w").write("no"), s.p("\x1b]0;t\x07.png"))[1])),
    ]
    return out


_CACHE: dict[str, str] = {}


def cached(s: Sandbox, name: str, build) -> str:
    """Big builders run once per session; each case gets its own copy."""
    if name not in _CACHE:
        import tempfile

        _CACHE[name] = build(os.path.join(tempfile.mkdtemp(prefix="jaxviz-hostile-cache-"), name))
    shutil.copyfile(_CACHE[name], s.p(name))
    return s.p(name)


CASES = cases()


def test_the_matrix_is_large_and_covers_every_family():
    families = {c.family for c in CASES}
    assert len(CASES) >= 70 and len({c.id for c in CASES}) == len(CASES)
    assert families == {"name-escape", "hdf5-outside", "fifo", "non-regular", "size-bomb", "cli-numbers", "output",
                        "platform", "numerics", "terminal"}


def prog_of(argv: list[str]) -> str:
    return f"jaxviz {argv[0]}"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}:{c.id}" for c in CASES])
def test_hostile_input(case: Case, server, tmp_path):
    if case.needs and (why := case.needs()):
        pytest.skip(why)
    sandbox = Sandbox(tmp_path / "sb")
    sockets, mounts = [], []
    sandbox.sock = lambda p: (lambda r: (sockets.append(r[1]), r[0])[1])(B.unix_socket(p))

    def tiny_disk():
        d = tmp_path / "sb" / "tiny"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(d)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
        mounts.append(str(d))
        return str(d / "out")

    sandbox.tiny_disk = tiny_disk
    try:
        argv = case.build(sandbox)
        if case.out is not None:
            argv = [case.out(sandbox) if a == sandbox.out else a for a in argv]
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        root = str(sandbox.root)
        before = snapshot(root, out if case.expect != "error" else None)
        io_dir = tmp_path / "io"
        io_dir.mkdir()
        stdout, stderr = str(io_dir / "stdout"), str(io_dir / "stderr")
        if case.env or not server.usable:
            result = run_subprocess(argv, root, stdout, stderr, case.env)
        else:
            result = server.run(argv, root, stdout, stderr)
        after = snapshot(root, out if case.expect != "error" else None)
        err = open(stderr, "rb").read().decode("utf8", "backslashreplace")
        text_out = open(stdout, "rb").read().decode("utf8", "backslashreplace")
        lines = err.splitlines()
        where = f"{result}\nstderr tail: {err[-1500:]!r}\nstdout tail: {text_out[-500:]!r}"
        if os.environ.get("JAXVIZ_MATRIX_LOG"):  # one JSON line per case, for tallies
            with open(os.environ["JAXVIZ_MATRIX_LOG"], "a") as log:
                log.write(json.dumps({"family": case.family, "id": case.id, **result,
                                      "first": (lines[:1] or [""])[0][:300], "last": (lines[-1:] or [""])[0][:300],
                                      "changed": sorted(k for k in set(before) | set(after)
                                                        if before.get(k) != after.get(k))[:5]}) + "\n")

        assert result["killed"] is None, where
        assert result["wall_s"] < 60 and result["peak_mb"] < RSS_CAP_MB, where
        assert "Traceback" not in err, where
        assert not CONTROL.search(err) and not CONTROL.search(text_out), where
        assert not FORGED.search(text_out), where  # e.g. a newline in a name forging an error line
        prog = prog_of(argv)
        expect = case.expect if case.expect != "either" else ("ok" if result["rc"] == 0 else "error")
        if expect == "error":
            assert not (out and os.path.lexists(out)) or case.out is not None, where
            assert result["rc"] == 2, where
            errors = [line for line in lines if "error:" in line]
            assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith(f"{prog}: error: "), where
            assert len(errors[0]) < 4000, f"an error line of {len(errors[0])} characters"
            if case.fragment:
                assert case.fragment in errors[0], where
        else:
            assert result["rc"] == 0, where
            assert not FORGED.search(err), where
            assert out is None or (os.path.isdir(out) and os.listdir(out)), where
        changed = {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert not changed, f"changed outside --out: {sorted(changed)[:10]}\n{where}"
        if out and os.path.isdir(os.path.dirname(out)):
            assert not [n for n in os.listdir(os.path.dirname(out)) if ".partial" in n], where
    finally:
        for s in sockets:
            s.close()
        for m in mounts:
            subprocess.run(["umount", "-l", m], capture_output=True)
        for p in tmp_path.rglob("*"):  # an unwritable parent must not stop pytest cleaning up
            if p.is_dir() and not p.is_symlink():
                try:
                    p.chmod(0o755)
                except OSError:
                    pass


# --------------------------------------------------------------------------------------------- API misuse


@pytest.fixture(scope="module")
def digits():
    from jaxviz import load_model

    loaded = load_model(None, DIGITS)
    x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
    return loaded.model, loaded.params, x


@pytest.fixture(scope="module")
def other_params():
    from jaxviz import load_model

    return load_model(None, "builtin:fruits_cnn").params


def _nan(x):
    x = x.copy()
    x[0, 3, 3, 0] = np.nan
    return x


def _inf(x):
    x = x.copy()
    x[1, 0, 0, 0] = np.inf
    return x


def api_cases():
    import jaxviz as J

    A = J.activations
    E = J.explain
    F = lambda m, p, **k: J.filter_patterns(m, p, k.pop("layer", "conv2d"), k.pop("filters", [0]), **k)  # noqa: E731
    W = J.layer_weights
    return [
        ("activations-params-of-another-model", "params", lambda m, p, x, o: A(m, o, x)),
        ("activations-params-empty", "params", lambda m, p, x, o: A(m, {}, x)),
        ("activations-empty-batch", "x", lambda m, p, x, o: A(m, p, x[:0])),
        ("activations-no-batch-axis", "x", lambda m, p, x, o: A(m, p, x[0])),
        ("activations-nan-image", "x", lambda m, p, x, o: A(m, p, _nan(x))),
        ("activations-inf-image", "x", lambda m, p, x, o: A(m, p, _inf(x))),
        ("activations-layer-not-a-string", "layers", lambda m, p, x, o: A(m, p, x, [0])),
        ("explain-params-of-another-model", "params", lambda m, p, x, o: E(m, o, x)),
        ("explain-params-empty", "params", lambda m, p, x, o: E(m, {}, x)),
        ("explain-empty-batch", "x", lambda m, p, x, o: E(m, p, x[:0])),
        ("explain-nan-image", "x", lambda m, p, x, o: E(m, p, _nan(x))),
        ("explain-inf-image", "x", lambda m, p, x, o: E(m, p, _inf(x))),
        ("explain-class-float", "classes", lambda m, p, x, o: E(m, p, x, [1.5, 2])),
        ("explain-class-out-of-range", "classes", lambda m, p, x, o: E(m, p, x, [10, 0])),
        ("explain-class-negative", "classes", lambda m, p, x, o: E(m, p, x, -1)),
        ("explain-layer-zero", "layer", lambda m, p, x, o: E(m, p, x, layer=0)),
        ("explain-layer-unknown", "layer", lambda m, p, x, o: E(m, p, x, layer="conv9")),
        ("explain-method-number", "method", lambda m, p, x, o: E(m, p, x, method=42)),
        ("filter-patterns-recipe-42", "recipe", lambda m, p, x, o: F(m, p, recipe=42)),
        ("filter-patterns-layer-zero", "layer", lambda m, p, x, o: F(m, p, layer=0)),
        ("filter-patterns-filter-float", "filters", lambda m, p, x, o: F(m, p, filters=[1.5])),
        ("filter-patterns-params-of-another-model", "params", lambda m, p, x, o: F(m, o)),
        ("filter-patterns-params-empty", "params", lambda m, p, x, o: F(m, {})),
        ("layer-weights-layer-zero", "layer", lambda m, p, x, o: W(m, p, 0)),
        ("layer-weights-params-empty", "params", lambda m, p, x, o: W(m, {}, "conv2d")),
        ("layer-weights-params-of-another-model", "params", lambda m, p, x, o: W(m, o, "conv2d")),
    ]


API_CASES = api_cases()


@pytest.mark.parametrize("name,argument,call", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_misuse_names_the_argument(digits, other_params, name, argument, call):
    from jaxviz import JaxvizError

    model, params, x = digits
    with pytest.raises((JaxvizError, TypeError, ValueError)) as e:
        call(model, params, x, other_params)
    message = str(e.value)
    assert re.search(rf"\b{re.escape(argument)}\b", message), f"{type(e.value).__name__}: {message}"
    assert not re.search(r"(^|\s)--[a-z]", message), message
    assert "\n" not in message.strip(), message


@pytest.mark.parametrize("fn", ["activations", "explain"])
def test_api_uint8_batch_is_converted_or_refused(digits, fn):
    """A uint8 batch is either refused (naming ``x`` and saying integers are not taken) or converted:
    then the result equals that of the same values as float32 (never computed in uint8)."""
    import jaxviz as J
    from jaxviz import JaxvizError

    model, params, _ = digits
    x8 = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
    call = (lambda x: J.activations(model, params, x, ["conv2d"])["conv2d"]) if fn == "activations" else \
        (lambda x: J.explain(model, params, x, [3, 4]).heatmaps)
    try:
        got = call(x8)
    except (JaxvizError, TypeError, ValueError) as e:
        assert re.search(r"\bx\b", str(e)) and re.search(r"uint8|integer", str(e)), str(e)
        return
    np.testing.assert_allclose(np.asarray(got), np.asarray(call(x8.astype(np.float32))), rtol=1e-5, atol=1e-6)
