"""The one way jaxviz opens a file it did not write: as a regular file, with its size known before
reading, read with a bound.

Every reader of untrusted input (images, Keras and PyTorch weight files, checkpoint members,
``jaxviz.json``) goes through :func:`open_regular` or :func:`read_bytes`. A FIFO, a device
(``/dev/zero``), a socket or a directory is refused *without blocking*: the path is ``stat``-ed
first and opened with ``O_NONBLOCK`` (opening a FIFO with no writer would otherwise wait forever), and
the open file is ``fstat``-ed again, so a path swapped between the two looks is refused too. A file
over its cap is refused before a byte is read, and reads stop at the cap even if the file grows.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from typing import BinaryIO, Iterator

from jaxviz.errors import JaxvizError, show

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def check_regular(path: "str | os.PathLike", what: str, limit: int | None = None) -> int:
    """The size of ``path`` if it is a regular file (symbolic links followed) of at most ``limit``
    bytes; otherwise a one-line :class:`JaxvizError` (``what``: ``"image"``, ``"weights file"``, ...)."""
    path = os.fspath(path)
    if "\x00" in path:
        raise JaxvizError(f"{what} path {show(path)} contains a NUL byte")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise JaxvizError(f"{what} not found: {show(path)}") from None
    except OSError as e:
        raise JaxvizError(f"cannot read {what} {show(path)}: {e.strerror}") from None
    return _checked(st, path, what, limit)


def _checked(st: os.stat_result, path: str, what: str, limit: int | None) -> int:
    if stat.S_ISDIR(st.st_mode):
        noun = what if what.endswith("file") else f"{what} file"
        raise JaxvizError(f"{show(path)} is a directory, not {'an' if noun[0] in 'aeiou' else 'a'} {noun}")
    if not stat.S_ISREG(st.st_mode):
        raise JaxvizError(f"{what} {show(path)} is {_kind(st.st_mode)}, not a regular file; jaxviz reads only files")
    if limit is not None and st.st_size > limit:
        raise JaxvizError(f"{what} {show(path)} is {_mib(st.st_size)}, more than the {_mib(limit)} jaxviz reads; "
                          "use a smaller file")
    return st.st_size


@contextlib.contextmanager
def open_regular(path: "str | os.PathLike", what: str, limit: int | None = None) -> Iterator[BinaryIO]:
    """A binary file object of ``path``, refused unless it is a regular file of at most ``limit`` bytes
    (see the module docstring); the file is closed on leaving the block."""
    path = os.fspath(path)
    check_regular(path, what, limit)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise JaxvizError(f"cannot read {what} {show(path)}: {e.strerror}") from None
    try:
        _checked(os.fstat(fd), path, what, limit)  # the file actually opened, not what the path named before
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_bytes(path: "str | os.PathLike", what: str, limit: int) -> bytes:
    """All bytes of the regular file ``path`` (at most ``limit``; a file that grows past it while read is
    refused)."""
    with open_regular(path, what, limit) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise JaxvizError(f"{what} {show(os.fspath(path))} grew over the {_mib(limit)} jaxviz reads while read; "
                          "refusing it")
    return data


def read_head(path: "str | os.PathLike", what: str, n: int) -> bytes:
    """The first ``n`` bytes of the regular file ``path`` (magic numbers)."""
    with open_regular(path, what) as fh:
        return fh.read(n)


def buffer(path: "str | os.PathLike", what: str, limit: int) -> io.BytesIO:
    """:func:`read_bytes` as an in-memory file object."""
    return io.BytesIO(read_bytes(path, what, limit))


def check_tree(root: "str | os.PathLike", what: str, *, max_entries: int = 100_000,
               max_bytes: int | None = None) -> int:
    """Refuse a directory tree (a checkpoint) that holds anything but regular files and directories
    (FIFOs, devices, sockets, symbolic links), more than ``max_entries`` entries, or more than
    ``max_bytes`` in all; returns the total size. Links are refused, not followed, so nothing outside
    ``root`` is reached."""
    root = os.fspath(root)
    total, count = 0, 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            raise JaxvizError(f"cannot read {what} {show(root)}: {show(d)}: {e.strerror}") from None
        for e in entries:
            count += 1
            if count > max_entries:
                raise JaxvizError(f"{what} {show(root)} holds more than {max_entries:,} files; refusing it")
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(e.path)
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if max_bytes is not None and total > max_bytes:
                    raise JaxvizError(f"{what} {show(root)} holds more than {_mib(max_bytes)}; refusing it")
            else:
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else _kind(st.st_mode)
                raise JaxvizError(f"{what} {show(root)}: {show(os.path.relpath(e.path, root))} is {kind}; a "
                                  "checkpoint holds only regular files")
    return total
