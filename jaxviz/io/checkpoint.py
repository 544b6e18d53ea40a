"""Self-describing parameter checkpoints with orbax-checkpoint.

A checkpoint is a directory: ``params/`` (orbax) and ``jaxviz.json`` (architecture name, input
shape, preprocessing, labels, provenance), so the directory alone is enough to rebuild the model. An
imported ONNX model adds ``graph.onnx``: its ``ModelProto`` without the initialisers that are parameters,
re-opened by the same reader as any ONNX file (:func:`jaxviz.io.onnx.read_onnx`), the parameters put back
as initialisers (their names and shapes are listed in ``jaxviz.json``) and imported again.
It is written into a temporary sibling directory and renamed into place; an existing checkpoint
is never replaced unless ``overwrite=True``, and nothing but a checkpoint (or an empty directory) is
ever replaced. Parameters that are not finite are refused on saving and on loading.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np

from jaxviz.nn.finite import require_finite
from jaxviz.errors import JaxvizError, show
from jaxviz.io.files import check_tree, read_bytes
from jaxviz.nn import Params, Sequential, get_model
from jaxviz.nn.keras_graph import graph_from_spec, stored_graph

FORMAT = "jaxviz-checkpoint"
META = "jaxviz.json"
MAX_META_BYTES = 16 << 20  # jaxviz.json, graph included (NASNetLarge's: ~0.3 MB)
MAX_PARAMS_BYTES = 5 << 30  # the orbax files (weights are capped at 4 GiB where they are read)
ONNX_GRAPH = "graph.onnx"  # = jaxviz.nn.onnx.graph.STORED_GRAPH
FILES = (ONNX_GRAPH,)  # what a model's stored_hint may write beside params/ and jaxviz.json
MAX_ONNX_PARAMS = 1_000_000  # initialisers listed in jaxviz.json


def is_checkpoint(path: "str | os.PathLike") -> bool:
    """Whether ``path`` is a directory holding a ``jaxviz.json`` (of any kind: a FIFO or device there is
    refused when it is read, rather than taken for something else)."""
    return os.path.isdir(path) and os.path.lexists(os.path.join(path, META))


def check_replaceable(path: "str | os.PathLike") -> None:
    """Raise unless ``overwrite=True`` may replace ``path``: it does not exist, is an empty directory, or is
    a jaxviz checkpoint holding nothing but what :func:`save_checkpoint` writes. A file, a link or any
    other directory is refused, so that overwriting never deletes something that is not a checkpoint."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        kind = "a symbolic link" if os.path.islink(path) else "a file"
        raise JaxvizError(f"{path} is {kind}, not a jaxviz checkpoint; overwrite=True replaces only checkpoints, so "
                          "remove it yourself or choose another destination")
    entries = sorted(os.listdir(path))
    if not entries:
        return
    extra = [e for e in entries if e not in (META, "params", *FILES)]
    if not is_checkpoint(path) or extra:
        what = f"it holds {extra[0]!r}" if extra else f"it has no {META}"
        raise JaxvizError(f"{path} is a directory but not a jaxviz checkpoint ({what}); overwrite=True replaces only "
                          "checkpoints, so remove it yourself or choose another destination")
    read_meta(path)  # a jaxviz.json of another format is refused too


def check_finite(params: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """Raise an error naming the first layer whose parameters hold NaN or Inf (``where``: the subject
    of the message, e.g. the checkpoint's path)."""
    for name, ps in params.items():
        for pname, a in ps.items():
            require_finite(a, f"{where}: layer {show(repr(name), 80)} {pname} contains NaN or Inf; the weights are "
                              "unusable")


def check_params(model: Sequential, params: Mapping[str, Mapping[str, Any]], input_shape=None) -> None:
    """Raise an error naming the first layer whose parameters do not fit ``model`` (a model with its own
    ``check_weights``, such as an imported ONNX graph, checks them itself, finiteness included)."""
    own = getattr(model, "check_weights", None)
    if own is not None:
        own(params, "checkpoint")
        return
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


def _stored(model, params: Any) -> tuple[Any, dict[str, Any], dict[str, bytes]]:
    """What a checkpoint writes for ``model``: ``(the parameter tree for orbax, entries of jaxviz.json,
    {file name: bytes} beside params/)``. A model that carries its own graph says so itself with a
    ``stored_hint(params)`` (an imported ONNX graph: its graph file and its weights under plain keys);
    a graph of layers stores its parameters and, for an imported architecture, its graph spec."""
    hint = getattr(model, "stored_hint", None)
    if hint is not None:
        stored, meta, files = hint(params)
        if any(n not in FILES for n in files):  # only what check_replaceable knows as a checkpoint's own
            raise JaxvizError(f"{show(model.name)} asks to store a file a checkpoint cannot hold")
        return stored, meta, files
    check_params(model, params)
    check_finite(params, f"refusing to save {model.name}")
    return params, {"graph": stored_graph(model)}, {}  # an imported architecture travels with it


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
    if os.path.lexists(path) and not overwrite:
        raise JaxvizError(f"{path} already exists; choose another destination or pass overwrite=True")
    check_replaceable(path)
    stored, extra_meta, files = _stored(model, params)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    except OSError as e:
        raise JaxvizError(f"cannot write to {parent}: {e.strerror}") from None
    try:
        host = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), stored)
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
            **extra_meta,
        }
        for name, data in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=2)
        old = None
        if os.path.lexists(path):  # overwrite=True onto a checkpoint (or empty directory): swap, drop the old
            check_replaceable(path)  # again: it may have changed while the new one was written
            old = tmp + ".old"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)  # put the old one back
                raise
        else:
            os.rename(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise JaxvizError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        try:
            shutil.rmtree(old)
        except OSError as e:
            raise JaxvizError(f"wrote {path}, but the checkpoint it replaced, moved to {old}, could not be removed: "
                              f"{e.strerror or e}") from None
    return path


def read_meta(path: "str | os.PathLike") -> dict[str, Any]:
    path = show(os.fspath(path))
    raw = read_bytes(os.path.join(os.fspath(path), META), "checkpoint metadata", MAX_META_BYTES)
    if raw.count(b"{") + raw.count(b"[") > MAX_META_BYTES // 16:
        raise JaxvizError(f"{path}: its {META} holds too many JSON objects; the checkpoint is damaged")
    try:
        meta = json.loads(raw.decode("utf8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise JaxvizError(f"{path} is not a jaxviz checkpoint ({e.__class__.__name__}: {show(e, 200)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise JaxvizError(f"{path} is not a jaxviz checkpoint (format {show(repr(fmt), 80)})")
    if not isinstance(meta.get("architecture"), str):
        raise JaxvizError(f"{path}: its {META} names no architecture; the checkpoint is damaged")
    return meta


def load_checkpoint(path: "str | os.PathLike") -> tuple[Sequential, Params, dict[str, Any]]:
    """``(model, params, meta)`` from a checkpoint directory written by :func:`save_checkpoint`."""
    path = os.path.abspath(os.fspath(path))
    meta = read_meta(path)
    check_tree(os.path.join(path, "params"), "checkpoint", max_bytes=MAX_PARAMS_BYTES)  # before orbax opens a file
    if meta.get("onnx") is not None:
        return _load_onnx(path, meta)
    model = graph_from_spec(meta["graph"], path) if meta.get("graph") else get_model(meta["architecture"])
    shapes = model.param_shapes()
    target = {
        n: {p: jax.ShapeDtypeStruct(s, np.float32) for p, s in ps.items()} for n, ps in shapes.items()
    }
    params = _restore(path, target, model.name)
    check_params(model, params)
    check_finite(params, path)
    return model, params, meta


def _restore(path: str, target: Mapping[str, Any], arch: str) -> Any:
    """The orbax tree under ``path/params`` restored into ``target`` (a tree of ``ShapeDtypeStruct``), after
    checking that the stored arrays have exactly the target's names and shapes: orbax itself restores an
    array into a target of another shape without a word (cut or padded)."""
    import orbax.checkpoint as ocp

    where = f"cannot restore {show(path)} as {show(arch)}"
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.metadata(os.path.join(path, "params")).item_metadata.tree
            want = jax.tree_util.tree_flatten_with_path(target)[0]
            have = dict(jax.tree_util.tree_flatten_with_path(
                tree, is_leaf=lambda v: hasattr(v, "shape") and not isinstance(v, Mapping))[0])
            for key, t in want:
                found = getattr(have.get(key), "shape", None)
                if found is None or tuple(found) != tuple(t.shape):
                    raise JaxvizError(f"{where}: {jax.tree_util.keystr(key)} is stored with shape "
                                      f"{None if found is None else tuple(found)}, the model needs {tuple(t.shape)}")
            if len(have) != len(want):
                raise JaxvizError(f"{where}: it stores {len(have)} arrays, the model has {len(want)}")
            return ckptr.restore(os.path.join(path, "params"), target)
    except JaxvizError:
        raise
    except Exception as e:  # orbax raises many types for a damaged or mismatched tree
        raise JaxvizError(f"{where}: {show(e, 300)}") from None


def _load_onnx(path: str, meta: dict[str, Any]):
    """An ONNX checkpoint: ``graph.onnx`` through :func:`jaxviz.io.onnx.read_onnx`, the parameters restored
    from orbax and put back as initialisers, then :func:`jaxviz.nn.onnx.from_onnx` as for the file itself."""
    import dataclasses

    from onnx import numpy_helper

    from jaxviz.io.onnx import read_onnx
    from jaxviz.nn.onnx import from_onnx
    from jaxviz.nn.onnx.graph import stored_key
    from jaxviz.nn.preprocess import PREPROCESSORS

    where = show(path)
    bad = JaxvizError(f"{where}: its {META} describes the ONNX graph badly; the checkpoint is damaged")
    spec = meta["onnx"]
    try:
        names = [str(n) for n, _ in spec["params"]]
        shapes = [tuple(int(d) for d in s) for _, s in spec["params"]]
        hw = spec.get("input_hw")
        hw = None if hw is None else (int(hw[0]), int(hw[1]))
        ok = spec.get("graph") == ONNX_GRAPH and len(names) == len(set(names)) and len(names) <= MAX_ONNX_PARAMS and \
            all(0 <= d < 2 ** 40 for s in shapes for d in s) and meta.get("preprocessing") in PREPROCESSORS
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        raise bad from None
    if not ok:
        raise bad
    file = os.path.join(path, ONNX_GRAPH)
    if os.path.islink(file):  # the checkpoint's own file, never one it points to
        raise JaxvizError(f"{where}: {ONNX_GRAPH} is a symbolic link; a checkpoint holds its own files")
    proto = read_onnx(file)
    have = {t.name for t in proto.graph.initializer}
    clash = [n for n in names if n in have]
    if clash:
        raise JaxvizError(f"{where}: {ONNX_GRAPH} already holds the parameter {show(repr(clash[0]), 120)}; the "
                          "checkpoint is damaged")
    target = {stored_key(i): jax.ShapeDtypeStruct(s, np.float32) for i, s in enumerate(shapes)}
    stored = _restore(path, target, meta["architecture"])
    for i, n in enumerate(names):
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(stored[stored_key(i)], np.float32), n))
    del stored
    try:
        model, params = from_onnx(proto, input_hw=hw, name=meta["architecture"])
    except JaxvizError as e:
        raise JaxvizError(f"{where}: {e}") from e
    except Exception as e:  # a graph the importer did not foresee; --debug shows it
        raise JaxvizError(f"{where}: cannot import its ONNX graph ({type(e).__name__}: {show(e, 200)})") from e
    if set(params) != set(names):
        raise JaxvizError(f"{where}: its parameters are not the graph's weights (e.g. "
                          f"{show(repr(sorted(set(params) ^ set(names))[0]), 120)}); the checkpoint is damaged")
    model.check_weights(params, where)
    labels = meta.get("labels")
    model = dataclasses.replace(model, preprocessing=meta["preprocessing"],
                                labels=labels if labels is None else str(labels))
    return model, params, meta
