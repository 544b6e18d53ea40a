"""Atomic outputs: a staged output folder moved into place on success, PNG and npz writers."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from typing import Iterator

import numpy as np

from jaxviz.errors import JaxvizError, show


@contextlib.contextmanager
def output_dir(path: "str | os.PathLike") -> Iterator[str]:
    """Stage outputs in a temporary directory; move them into ``path`` only on success.

    One run per ``path`` at a time: the run holds :func:`locked_dir`'s lock on ``path`` throughout, so a
    second run on the same ``path`` is refused in one line while the first runs. The stage is a sibling
    ``.NAME.partial-XXXXXXXX`` when this call creates ``path``, else a folder of that name inside ``path``
    (a writable ``path`` in a read-only parent works; a ``path`` that is a mount point too). Stages that
    a killed run (SIGKILL) left for this ``path`` are removed first: only folders of that name, owned by
    this user, holding jaxviz's marker that names this very ``path`` (:data:`STAGE_MARKER`).

    Files already in ``path`` that the command does not write are left alone; nothing half-written
    is ever left behind: on an error or an interrupt the stage is removed, and so are ``path`` and the
    parent directories this call created, if nothing else was put there.
    """
    raw = os.fspath(path)
    if not raw.strip():
        raise JaxvizError("the output path is empty; name a directory (out=)")
    if "\x00" in raw:
        raise JaxvizError(f"output path {show(raw)} contains a NUL byte; choose another out=")
    path = os.path.abspath(raw)
    shown = show(path)
    name = os.path.basename(path)
    if len(name.encode("utf8", "surrogatepass")) > NAME_MAX:
        raise JaxvizError(f"output path {shown}: its last part is {len(name)} characters, more than a file name may "
                          f"hold ({NAME_MAX} bytes); choose another out=")
    if os.path.islink(path) and not os.path.exists(path):
        raise JaxvizError(f"output path {shown} is a symbolic link to {show(os.readlink(path))}, which does not exist; "
                          "choose another out=")
    probe = path
    while probe != os.path.dirname(probe):
        if os.path.exists(probe) and not os.path.isdir(probe):
            raise JaxvizError(f"output path {shown} cannot be a directory: {show(probe)} is a file; choose another out=")
        if os.path.islink(probe) and not os.path.exists(probe):
            raise JaxvizError(f"output path {shown} cannot be made: {show(probe)} is a dangling symbolic link; choose "
                              "another out=")
        probe = os.path.dirname(probe)
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise JaxvizError(f"output path {shown} is not writable; choose another out=")
    existed = os.path.isdir(path)
    with locked_dir(path) as _:
        parent = os.path.dirname(path)
        _remove_stale_stages(path, (parent, path))
        prefix = f".{name[:40]}.partial-"
        try:
            stage = tempfile.mkdtemp(prefix=prefix, dir=path if existed else parent)
            with open(os.path.join(stage, STAGE_MARKER), "wb") as f:
                f.write(os.fsencode(path))
        except OSError as e:
            raise JaxvizError(f"output path {shown} is not writable: {e.strerror}; choose another out=") from None
        try:
            try:
                yield stage
                moves = _moves(stage, path)
                for src, dst in moves:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    os.replace(src, dst)
            except OSError as e:
                if e.errno in _DISK_ERRORS or _within(e.filename, (stage, path)):
                    raise JaxvizError(f"cannot write into {shown}: {e.strerror or e}; nothing was written") from None
                raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)


STAGE_MARKER = ".jaxviz-stage"  # in every stage: the absolute path of the output it is for (its bytes)
LOCK = ".jaxviz.lock"  # in the output folder, while a run uses it (process I of several: .jaxviz.lock.I)


@contextlib.contextmanager
def locked_dir(path: "str | os.PathLike", process: int = 0) -> Iterator[str]:
    """Hold the exclusive lock on the output folder ``path`` (created if missing) while the block runs.

    The lock is ``fcntl.flock`` on ``path/.jaxviz.lock`` (``.jaxviz.lock.I`` for process ``I`` > 0 of a
    ``jax.distributed`` run, which writes its own checkpoint there); the kernel drops it when the holder
    ends, however it ends (SIGKILL too), so a lock file left behind never blocks anyone. A second run on
    the same ``path`` is refused in one :class:`JaxvizError` line naming the holder's process id. On the
    way out the lock file is removed (while still held) and ``path`` and its parents, when this call
    created them and nothing else was put there."""
    import fcntl

    path = os.path.abspath(os.fspath(path))
    created = _missing_dirs(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise JaxvizError(f"output path {show(path)} is not writable: {e.strerror}; choose another out=") from None
    lock = os.path.join(path, LOCK if not process else f"{LOCK}.{int(process)}")
    fd = -1
    ok = False
    try:
        while True:  # the file may be removed by its last holder between our open and our flock: try again
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise JaxvizError(f"output path {show(path)}: cannot make its lock file {show(LOCK)}: "
                                  f"{e.strerror}; choose another out=") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip()
                os.close(fd)
                fd = -1
                who = f" (process {holder})" if holder.isdigit() else ""
                raise JaxvizError(f"output path {show(path)} is in use by another jaxviz run{who}; wait until it "
                                  "ends, or choose another out=") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(lock))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            fd = -1
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        ok = True
        try:
            yield path
        except BaseException:
            ok = False
            raise
    finally:
        if fd >= 0:
            try:
                os.unlink(lock)  # still held: a run waiting on this file sees it gone and opens a new one
            except OSError:
                pass
            os.close(fd)
        if not ok:  # a run that failed leaves no folder it made (one holding a checkpoint stays)
            _remove_empty(created)


_STAGE_NAME = "[a-z0-9_]{8}"  # tempfile.mkdtemp's random part


def _remove_stale_stages(path: str, folders: tuple[str, ...]) -> None:
    """Remove the stages of ``path`` that a killed run left in ``folders`` (called with the lock held:
    no live run uses them). Only a real folder named ``.NAME.partial-XXXXXXXX``, owned by this user,
    whose :data:`STAGE_MARKER` names ``path`` exactly; anything else is left alone."""
    import stat

    name = re.compile(re.escape(f".{os.path.basename(path)[:40]}.partial-") + _STAGE_NAME)
    want = os.fsencode(path)
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for n in names:
            if not name.fullmatch(n):
                continue
            stage = os.path.join(folder, n)
            try:
                st = os.lstat(stage)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    continue
                fd = os.open(os.path.join(stage, STAGE_MARKER), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    mark = os.read(fd, len(want) + 1)
                finally:
                    os.close(fd)
            except OSError:
                continue
            if mark == want:
                shutil.rmtree(stage, ignore_errors=True)


NAME_MAX = 255
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM}


def _within(filename: object, roots: tuple[str, ...]) -> bool:
    if not isinstance(filename, str):
        return False
    f = os.path.abspath(filename)
    return any(f == r or f.startswith(r + os.sep) for r in roots)


def _missing_dirs(path: str) -> list[str]:
    """The directories ``os.makedirs(path)`` would create, deepest first."""
    out = []
    while path and not os.path.exists(path) and path != os.path.dirname(path):
        out.append(path)
        path = os.path.dirname(path)
    return out


def _remove_empty(dirs: list[str]) -> None:
    for d in dirs:  # deepest first; one that holds anything (someone else's file) stays
        try:
            os.rmdir(d)
        except OSError:
            break


def _moves(stage: str, path: str) -> list[tuple[str, str]]:
    """Every staged file and its destination; a destination that is a directory is refused before
    anything moves (os.replace would fail half-way)."""
    moves = []
    for root, _, files in os.walk(stage):
        rel = os.path.relpath(root, stage)
        for f in files:
            if rel == "." and f == STAGE_MARKER:
                continue
            if rel == "." and f.startswith(LOCK):  # never replace a run's lock file
                raise JaxvizError(f"refusing to write {show(f)}: jaxviz's lock file has that name")
            dst = os.path.normpath(os.path.join(path, rel, f))
            if not _within(os.path.realpath(os.path.dirname(dst)), (os.path.realpath(path),)) and \
                    os.path.dirname(dst) != path:
                raise JaxvizError(f"refusing to write {show(dst)}: not a plain file inside {show(path)}")
            if os.path.isdir(dst):
                raise JaxvizError(f"cannot write {dst}: a directory of that name is in the way; choose another out=")
            moves.append((os.path.join(root, f), dst))
    return moves


_SAFE = re.compile(r"[^A-Za-z0-9._+=-]+")
MAX_STEM = 80


def file_stem(name: str) -> str:
    """A file-name stem for a name that came from a model or a file (a layer, an image's file name).

    A name of letters, digits and ``. _ + = -`` only, not starting with a dot or dash and at most
    :data:`MAX_STEM` characters, is its own stem (``block1_conv1``). Any other name (``../../x``,
    ``/tmp/x``, ``a/b``, control characters, 300 characters) has every other run of characters
    replaced by ``_``, is cut to :data:`MAX_STEM` characters and gets ``~`` plus 8 hex digits of its
    SHA-256: safe (never a path, never a hidden file) and collision-free (an unchanged name never
    holds ``~``; changed names differ by their hash)."""
    name = str(name)
    slug = _SAFE.sub("_", name)
    if slug == name and name and name[0] not in ".-" and len(name) <= MAX_STEM:
        return name
    digest = hashlib.sha256(name.encode("utf8", "surrogatepass")).hexdigest()[:8]
    return f"{slug.lstrip('._-')[:MAX_STEM]}~{digest}"


def inside(stage: str, rel: str) -> str:
    """``stage/rel``, refused unless it lies inside ``stage`` (after resolving links): the one check every
    path a writer makes passes."""
    path = os.path.join(stage, rel)
    root = os.path.realpath(stage)
    real = os.path.realpath(path)
    if os.path.isabs(rel) or os.path.commonpath([root, real]) != root or real == root:
        raise JaxvizError(f"refusing to write {show(rel)}: it is not inside the output directory")
    return path


def save_png(path: str, image: np.ndarray) -> None:
    """Write a uint8 RGB (H x W x 3) or grayscale (H x W) image as PNG."""
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"save_png wants uint8, got {image.dtype}")
    bgr = image[..., ::-1] if image.ndim == 3 and image.shape[-1] == 3 else image
    if not cv2.imwrite(path, np.ascontiguousarray(bgr)):
        raise JaxvizError(f"could not write {path}")


def save_npz(path: str, **arrays: np.ndarray) -> None:
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
