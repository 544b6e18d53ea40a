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
    is ever left behind.
    """
    path = os.path.abspath(os.fspath(path))
    probe = path
    while probe != os.path.dirname(probe):
        if os.path.exists(probe) and not os.path.isdir(probe):
            raise JaxvizError(f"output path {path} cannot be a directory: {probe} is a file; choose another --out")
        probe = os.path.dirname(probe)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    except OSError as e:
        raise JaxvizError(f"output path {path} is not writable: {e.strerror}; choose another --out") from None
    try:
        yield stage
        os.makedirs(path, exist_ok=True)
        for root, _, files in os.walk(stage):
            rel = os.path.relpath(root, stage)
            os.makedirs(os.path.join(path, rel), exist_ok=True)
            for f in files:
                os.replace(os.path.join(root, f), os.path.join(path, rel, f))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
