"""Checkpoints of streamed, resumable jobs (the atlas, evaluate): one atomic npz per process.

:func:`save_state` writes the job's arrays, the hash of its settings and the collection items that
failed, atomically (a crash leaves the previous checkpoint whole); :func:`load_state` reads it back
through the one opener (a regular file, size known before reading), refusing a checkpoint of other
settings in one line.
"""

from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import numpy as np

from jaxviz.errors import JaxvizError, show
from jaxviz.io.collection import Failure
from jaxviz.io.files import read_bytes

MAX_STATE_BYTES = 4 << 30


def save_state(path: str, settings: str, arrays: Mapping[str, np.ndarray], failures: Sequence[Failure]) -> None:
    """Write ``arrays`` with ``settings`` and ``failures`` to ``path`` atomically (fsync, then rename)."""
    out = dict(arrays)
    out.update(settings=np.array(settings), failed=np.array([f.index for f in failures], np.int64),
               failed_reason=np.array([f.reason for f in failures], dtype=str))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **out)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint whole


def load_state(path: str, settings: str, paths: Sequence[str], what: str) -> tuple[dict[str, np.ndarray], list[Failure]]:
    """``(arrays, failures)`` of the checkpoint at ``path``; a one-line error if it was written with other
    settings (``what`` lists them for the message) or cannot be read."""
    try:
        with np.load(io.BytesIO(read_bytes(path, "checkpoint", MAX_STATE_BYTES)), allow_pickle=False) as z:
            if str(z["settings"]) != settings:
                raise JaxvizError(f"the checkpoint {show(path)} was written with other settings ({what}); run "
                                  "without resume, or remove it")
            arrays = {k: z[k] for k in z.files}
    except JaxvizError:
        raise
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise JaxvizError(f"the checkpoint {show(path)} cannot be read ({e.__class__.__name__}); remove it") from None
    failures = [Failure(int(i), paths[int(i)] if i < len(paths) else f"item{int(i)}", str(r))
                for i, r in zip(arrays["failed"], arrays["failed_reason"])]
    return arrays, failures
