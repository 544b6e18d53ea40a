"""Checkpoints of streamed, resumable jobs (the atlas, evaluate), written with orbax-checkpoint.

A job's checkpoint is a directory of *generations* ``g000001``, ``g000002``, ...; each holds ``state/``
(the job's arrays, written by orbax's ``PyTreeCheckpointHandler``) and ``job.json`` (the hash of the
settings, the items that failed, the names of empty arrays, which orbax does not store). A generation
is written whole into a staging directory beside the others and renamed into place: that rename is
the commit, so a crash at any moment leaves the previous generation whole; older generations are
removed only after it. :func:`load_state` reads the newest generation.

Each process of a ``jax.distributed`` run writes its own checkpoint, at its own moments (a barrier with
the others would wait forever). orbax 0.12 cannot: its numpy writer writes only from process 0, and
it refuses host-local ``jax.Array`` s in a multi-process run. So there the arrays go into
``state.npz`` (numpy's format, written and read exactly) in the same generation, with the same
``job.json``, staging and commit; a one-process run (the common case) writes ``state/`` with orbax.

Reading follows :mod:`jaxviz.io.files`: the checkpoint must be a directory (a link, FIFO or device
there is refused), holding only regular files and directories (no links, nothing outside it is
reached), bounded in size (:data:`MAX_STATE_BYTES`) before orbax reads a byte; ``job.json`` is read
through the one opener.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from typing import Mapping, Sequence

import numpy as np

from jaxviz.errors import JaxvizError, show
from jaxviz.io.collection import Failure
from jaxviz.io.files import buffer, check_tree, read_bytes

MAX_STATE_BYTES = 4 << 30
MAX_JOB_BYTES = 256 << 20  # job.json: the settings and the failed items (names are in the collection)
JOB = "job.json"
FORMAT = "jaxviz-jobstate"
_GENERATION = re.compile(r"g(\d{6,})")
_STAGE = re.compile(r"\.stage-\w+")


def _checkpointer():
    import jax
    import orbax.checkpoint as ocp
    from orbax.checkpoint import options

    me = jax.process_index()
    alone = options.MultiprocessingOptions(primary_host=me, active_processes={me})
    handler = ocp.PyTreeCheckpointHandler(multiprocessing_options=alone)
    return ocp.Checkpointer(handler, multiprocessing_options=alone)


def _generations(path: str) -> list[tuple[int, str]]:
    """The committed generations in ``path``, oldest first."""
    out = []
    for name in os.listdir(path):
        m = _GENERATION.fullmatch(name)
        if m:
            out.append((int(m[1]), name))
    return sorted(out)


def _check_dir(path: str) -> None:
    try:
        st = os.lstat(path)
    except OSError as e:
        raise JaxvizError(f"cannot read the checkpoint {show(path)}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file, not a directory"
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            kind = "a FIFO or device"
        raise JaxvizError(f"the checkpoint {show(path)} is {kind}; jaxviz reads only the checkpoint directories it "
                          "writes; remove it")


def check_folder(folder: "str | os.PathLike", state: "str | os.PathLike | None" = None) -> None:
    """Refuse, in one line, a checkpoint folder jaxviz would not write into: ``folder`` (e.g.
    ``--out/.atlas-checkpoint``) and every part of it below its parent (the job's ``NAME-state-IofN``)
    must be real folders when they exist, never links: a link there would carry the checkpoints out of
    ``--out``. ``state``: the job's own state folder in it, which must be a folder if it exists; other
    files there are left alone. What is not there yet is made as a real folder by :func:`save_state`."""
    folder = os.path.abspath(os.fspath(folder))
    _check_real(folder)
    if os.path.isdir(folder) and not os.path.islink(folder):
        for name in os.listdir(folder):  # no links; other files (a note, a saved result) are left alone
            _check_real(os.path.join(folder, name), folder_only=False)
    if state is not None:  # the job's own state folder (``NAME-state-IofN``) must be a folder
        _check_real(os.path.abspath(os.fspath(state)))


def _check_real(path: str, folder_only: bool = True) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise JaxvizError(f"cannot read the checkpoint folder {show(path)}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise JaxvizError(f"the checkpoint folder {show(path)} is a symbolic link (to {show(os.readlink(path))}); "
                          "jaxviz writes checkpoints only into real folders inside --out: remove the link")
    if folder_only and not stat.S_ISDIR(st.st_mode):
        raise JaxvizError(f"the checkpoint folder {show(path)} is not a folder; jaxviz writes checkpoints only into "
                          "real folders inside --out: remove it")


class CheckpointWriteError(JaxvizError):
    """A checkpoint could not be written (disk full, quota, permission); the previous one is whole."""


def exists(path: "str | os.PathLike") -> bool:
    """Whether anything is at ``path`` (what it is is checked when it is read)."""
    return os.path.lexists(path)


def save_state(path: "str | os.PathLike", settings: str, arrays: Mapping[str, np.ndarray],
               failures: Sequence[Failure]) -> None:
    """Write ``arrays`` (names with ``/`` are nested) with ``settings`` and ``failures`` as the next
    generation of the checkpoint directory ``path`` (see the module docstring)."""
    path = os.path.abspath(os.fspath(path))  # orbax writes only to absolute paths
    _check_real(os.path.dirname(path))
    _check_real(path)
    stage = None
    try:
        os.makedirs(path, exist_ok=True)
        done = _generations(path)
        number = done[-1][0] + 1 if done else 1
        # a fresh name each time: an interrupted write's threads may still be writing into the last one
        stage = tempfile.mkdtemp(prefix=".stage-", dir=path)
        final = _write_generation(path, stage, number, settings, arrays, failures)
    except JaxvizError:
        raise
    except Exception as e:  # noqa: BLE001  (OSError; orbax and tensorstore raise ValueError and others)
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise CheckpointWriteError(f"cannot write the checkpoint {show(path)} ({_reason(e)}); the previous checkpoint "
                                   "is kept: make room and continue with --resume") from None
    for name in os.listdir(path):  # the new generation is in place: older ones and crashed writes go
        if (_GENERATION.fullmatch(name) and name != os.path.basename(final)) or _STAGE.fullmatch(name):
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)


def _reason(e: Exception) -> str:
    """One short reason for a failed write: the OS's words for its error code where there is one."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    m = re.search(r"os_error_code='?(\d+)", str(e))  # tensorstore: ... Failed to write ... [os_error_code='28']
    if m:
        return os.strerror(int(m[1]))
    return e.__class__.__name__


def _write_generation(path: str, stage: str, number: int, settings: str, arrays: Mapping[str, np.ndarray],
                      failures: Sequence[Failure]) -> str:
    tree: dict = {}
    specs = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        specs[name] = [list(a.shape), a.dtype.str]  # orbax restores a scalar as shape (1,) and stores no empty array
        if a.size == 0:
            continue
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(a)
    _write_arrays(stage, tree, {n: np.asarray(a) for n, a in arrays.items() if np.asarray(a).size})
    job = {"format": FORMAT, "version": 1, "settings": settings, "arrays": specs, "failed": [[f.index, f.reason] for f in failures]}
    with open(os.path.join(stage, JOB), "w", encoding="utf-8") as f:
        json.dump(job, f)
        f.flush()
        os.fsync(f.fileno())
    final = os.path.join(path, f"g{number:06d}")
    _commit(stage, final)
    return final


def _write_arrays(stage: str, tree: dict, flat: dict) -> None:
    import jax

    if jax.process_count() > 1:  # see the module docstring
        with open(os.path.join(stage, "state.npz"), "wb") as f:
            np.savez(f, **flat)
            f.flush()
            os.fsync(f.fileno())
        return
    import orbax.checkpoint as ocp

    with _quiet_writer(), _checkpointer() as ck:
        ck.save(os.path.join(stage, "state"), args=ocp.args.PyTreeSave(tree))


@contextlib.contextmanager
def _quiet_writer():
    """Hold back what orbax's writer threads print while it writes: on a failed write (disk full) they
    log each error with its traceback (absl), tensorstore's callbacks print tracebacks into the closed
    event loop and asyncio reports the futures nobody retrieved: hundreds of lines before the one line
    the caller prints, which says it all. What is printed meanwhile goes to a temporary file (file
    descriptor 2: the C++ threads print there too) and is passed on when the write succeeds; after a
    failed write, the ``absl`` and ``asyncio`` loggers stay quiet (the job is ending with its one line)."""
    import gc
    import logging
    import sys
    import time

    loggers = [logging.getLogger(n) for n in ("absl", "asyncio")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        held = tempfile.TemporaryFile()
        saved = os.dup(2)
    except OSError:  # no room even for that: nothing is held back
        held, saved = None, -1
    if held is not None:
        sys.stderr.flush()
        os.dup2(held.fileno(), 2)
    failed = False
    try:
        yield
    except Exception:
        failed = True
        time.sleep(0.2)  # the writes still in flight end (each prints into the closed loop), then their futures go
        gc.collect()
        raise
    finally:
        if held is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                text = held.read(1 << 20)
                if text:
                    sys.stderr.write(text.decode("utf-8", "replace"))
            held.close()
        if not failed:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


def _read_arrays(gen: str) -> dict:
    stored: dict = {}
    if not os.path.lexists(os.path.join(gen, "state")):
        with np.load(buffer(os.path.join(gen, "state.npz"), "checkpoint file", MAX_STATE_BYTES),
                     allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    import orbax.checkpoint as ocp

    with _checkpointer() as ck:
        _flatten(ck.restore(os.path.join(gen, "state"), args=ocp.args.PyTreeRestore()), "", stored)
    return stored


def _commit(stage: str, final: str) -> None:
    os.rename(stage, final)  # atomic: the generation appears whole or not at all
    fd = os.open(os.path.dirname(final), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(path: "str | os.PathLike", settings: str, paths: Sequence[str],
               what: str) -> tuple[dict[str, np.ndarray], list[Failure]]:
    """``(arrays, failures)`` of the newest generation of the checkpoint at ``path``; a one-line error
    if it was written with other settings (``what`` lists them for the message), or is not a
    checkpoint directory jaxviz wrote, or cannot be read."""
    path = os.path.abspath(os.fspath(path))
    _check_dir(path)
    done = _generations(path)
    if not done:
        raise JaxvizError(f"the checkpoint {show(path)} holds no complete state; run without resume, or remove it")
    gen = os.path.join(path, done[-1][1])
    check_tree(gen, "checkpoint", max_bytes=MAX_STATE_BYTES)
    try:
        job = json.loads(read_bytes(os.path.join(gen, JOB), "checkpoint file", MAX_JOB_BYTES))
        ok = isinstance(job, dict) and job.get("format") == FORMAT
    except JaxvizError:
        raise
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise JaxvizError(f"the checkpoint {show(path)} cannot be read (its {JOB} is not a jaxviz job state); "
                          "remove it")
    if job.get("settings") != settings:
        raise JaxvizError(f"the checkpoint {show(path)} was written with other settings ({what}); run without "
                          "resume, or remove it")
    try:
        stored = _read_arrays(gen)
        arrays = {}
        for name, (shape, dtype) in job["arrays"].items():
            a = stored.pop(name, None)
            if a is None and np.prod(shape) == 0:
                a = np.zeros(shape, np.dtype(dtype))
            if a is None or a.dtype != np.dtype(dtype) or a.size != np.prod(shape):
                raise ValueError(f"array {name} does not match {JOB}")
            arrays[name] = a.reshape(shape)
        if stored:
            raise ValueError(f"arrays not named in {JOB}")
        failures = [Failure(int(i), paths[int(i)] if 0 <= int(i) < len(paths) else f"item{int(i)}", str(r))
                    for i, r in job["failed"]]
    except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise many kinds on damaged files)
        raise JaxvizError(f"the checkpoint {show(path)} cannot be read ({e.__class__.__name__}); remove it") from None
    return arrays, failures


def _flatten(tree, prefix: str, out: dict) -> None:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            _flatten(v, f"{prefix}{k}/", out)
    else:
        out[prefix[:-1]] = np.asarray(tree)
