"""Atomic outputs: a staged output folder moved into place on success, PNG and npz writers."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np

from jaxviz.errors import JaxvizError


@contextlib.contextmanager
def output_dir(path: "str | os.PathLike") -> Iterator[str]:
    """Stage outputs in a temporary sibling directory; move them into ``path`` only on success.

    Files already in ``path`` that the command does not write are left alone; nothing half-written
    is ever left behind: on an error or an interrupt the stage is removed, and so are the parent
    directories this call created.
    """
    raw = os.fspath(path)
    if not raw.strip():
        raise JaxvizError("the output path is empty; name a directory with --out")
    path = os.path.abspath(raw)
    probe = path
    while probe != os.path.dirname(probe):
        if os.path.exists(probe) and not os.path.isdir(probe):
            raise JaxvizError(f"output path {path} cannot be a directory: {probe} is a file; choose another --out")
        probe = os.path.dirname(probe)
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise JaxvizError(f"output path {path} is not writable; choose another --out")
    parent = os.path.dirname(path)
    created = _missing_dirs(parent)
    try:
        os.makedirs(parent, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    except OSError as e:
        _remove_empty(created)
        raise JaxvizError(f"output path {path} is not writable: {e.strerror}; choose another --out") from None
    try:
        yield stage
        moves = _moves(stage, path)
        os.makedirs(path, exist_ok=True)
        for src, dst in moves:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        raise
    shutil.rmtree(stage, ignore_errors=True)


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
            dst = os.path.normpath(os.path.join(path, rel, f))
            if os.path.isdir(dst):
                raise JaxvizError(f"cannot write {dst}: a directory of that name is in the way; choose another --out")
            moves.append((os.path.join(root, f), dst))
    return moves


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
