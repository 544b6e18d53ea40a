"""Self-describing parameter checkpoints with orbax-checkpoint.

A checkpoint is a directory: ``params/`` (orbax) and ``jaxviz.json`` (architecture name, input
shape, preprocessing, labels, provenance), so the directory alone is enough to rebuild the model.
It is written into a temporary sibling directory and renamed into place; an existing checkpoint
is never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.nn import Params, Sequential, get_model

FORMAT = "jaxviz-checkpoint"
META = "jaxviz.json"


def is_checkpoint(path: "str | os.PathLike") -> bool:
    return os.path.isfile(os.path.join(path, META))


def check_params(model: Sequential, params: Mapping[str, Mapping[str, Any]], input_shape=None) -> None:
    """Raise an error naming the first layer whose parameters do not fit ``model``."""
    expected = model.param_shapes(input_shape)
    for name, shapes in expected.items():
        if name not in params:
            raise JaxvizError(f"weights do not fit {model.name}: layer {name!r} is missing")
        for pname, shape in shapes.items():
            found = getattr(params[name].get(pname), "shape", None)
            if found is None or tuple(found) != tuple(shape):
                raise JaxvizError(
                    f"weights do not fit {model.name}: layer {name!r} {pname} expected shape {tuple(shape)}, found "
                    f"{None if found is None else tuple(found)}"
                )
    extra = [n for n in params if n not in expected]
    if extra:
        raise JaxvizError(f"weights do not fit {model.name}: unexpected layer {extra[0]!r}")


def save_checkpoint(
    path: "str | os.PathLike",
    model: Sequential,
    params: Params,
    *,
    overwrite: bool = False,
    info: Mapping[str, Any] | None = None,
) -> str:
    """Write ``params`` for ``model`` to directory ``path`` atomically; returns the absolute path."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise JaxvizError(f"{path} already exists; choose another destination or pass --overwrite")
    check_params(model, params)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    except OSError as e:
        raise JaxvizError(f"cannot write to {parent}: {e.strerror}") from None
    try:
        host = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, "params"), host)
            ckptr.wait_until_finished()
        meta = {
            "format": FORMAT,
            "version": 1,
            "architecture": model.name,
            "input_shape": list(model.input_shape),
            "preprocessing": model.preprocessing,
            "labels": model.labels,
            "info": dict(info or {}),
        }
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(path):  # overwrite=True: swap, then drop the old one
            old = tmp + ".old"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: "str | os.PathLike") -> dict[str, Any]:
    try:
        with open(os.path.join(path, META)) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise JaxvizError(f"{path} is not a jaxviz checkpoint ({e.__class__.__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise JaxvizError(f"{path} is not a jaxviz checkpoint (format {meta.get('format')!r})")
    return meta


def load_checkpoint(path: "str | os.PathLike") -> tuple[Sequential, Params, dict[str, Any]]:
    """``(model, params, meta)`` from a checkpoint directory written by :func:`save_checkpoint`."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    meta = read_meta(path)
    model = get_model(meta["architecture"])
    shapes = model.param_shapes()
    target = {
        n: {p: jax.ShapeDtypeStruct(s, np.float32) for p, s in ps.items()} for n, ps in shapes.items()
    }
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(os.path.join(path, "params"), target)
    except Exception as e:  # orbax raises many types for a damaged or mismatched tree
        raise JaxvizError(f"cannot restore {path} as {model.name}: {str(e).splitlines()[0][:300]}") from None
    check_params(model, params)
    return model, params, meta
