"""Read Keras weight files into jaxviz params, without executing anything from the file.

Formats:
  * published ``keras.applications`` weights-only HDF5 (root ``layer_names``, Keras-1 dataset names);
  * Keras 2 full-model HDF5 from ``model.save`` (``model_config``, ``model_weights/...``),
    including a nested base model whose group lists trainable weights first;
  * Keras 3 ``.keras`` archives (read in memory) and ``.weights.h5`` files (``layers/<key>/vars/N``).

The file is reduced to a list of weighted layers ``(name, kind, [(param_name|None, array)])`` in
model order. Layers then map onto the architecture by name when the names agree exactly, otherwise
by order within each kind (conv to conv, dense to dense), as Keras's own ``by_name=False`` loading
does; every shape is checked and the first misfit is named.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from jaxviz.errors import JaxvizError, unknown
from jaxviz.nn import MODELS, Sequential, get_model

# Classes whose configs would make Keras run code; jaxviz refuses such files by name.
UNSAFE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda"}


def weights_kind(ndims: tuple[int, ...]) -> str:
    """The kind of layer a list of weight ranks belongs to, as Keras lists them: conv (kernel[, bias];
    also depthwise), sepconv (depthwise, pointwise[, bias]), dense (kernel[, bias]) or batchnorm
    (gamma, beta, moving mean, moving variance)."""
    if ndims[:2] == (4, 4):
        return "sepconv"
    if ndims[:1] == (4,):
        return "conv"
    if ndims[:1] == (2,):
        return "dense"
    if ndims == (1, 1, 1, 1):
        return "batchnorm"
    return "x".join(map(str, ndims)) + "-d"


@dataclass
class FileLayer:
    name: str
    weights: list[tuple[str | None, np.ndarray]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return weights_kind(tuple(a.ndim for _, a in self.weights)) if self.weights else "none"


@dataclass
class KerasFile:
    """What a Keras file holds, reduced to weighted layers in model order."""

    path: str
    format: str  # 'published-h5', 'keras2-h5', 'keras3'
    layers: list[FileLayer]
    config: dict | None = None
    keras_version: str | None = None


# ---------------------------------------------------------------------------------------------
# Configs


def _config_layers(cfg: dict) -> list[dict]:
    """The layer list of a Sequential/Functional config (Keras 2.0 Sequentials store a bare list)."""
    inner = cfg.get("config", cfg)
    if isinstance(inner, list):
        return inner
    return inner.get("layers", []) if isinstance(inner, dict) else []


def refuse_unsafe(cfg: Any, path: str) -> None:
    """Refuse configs that would execute code (Lambda layers, custom objects)."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls = node.get("class_name")
            name = (node.get("config") or {}).get("name") if isinstance(node.get("config"), dict) else None
            if cls in UNSAFE_CLASSES:
                raise JaxvizError(
                    f"refusing {path}: its config has a {cls} layer {name!r}, which would run code from the file; "
                    "jaxviz never executes code from weight files (rebuild the model without it)"
                )
            module = node.get("module")
            registered = node.get("registered_name")
            custom = (isinstance(module, str) and module.split(".")[0] not in ("keras", "builtins")) or (
                isinstance(registered, str) and ">" in registered
            )
            if isinstance(cls, str) and custom:
                raise JaxvizError(
                    f"refusing {path}: layer {name!r} uses custom object {registered or cls!r} from module {module!r}; "
                    "jaxviz never executes code from weight files"
                )
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg)


def _nested_orders(cfg: dict | None) -> dict[str, list[str]]:
    """``{container_layer_name: [its layer names in order]}`` for nested models in a Keras 2 config."""
    orders: dict[str, list[str]] = {}
    if not cfg:
        return orders
    for layer in _config_layers(cfg):
        if isinstance(layer, dict) and layer.get("class_name") in ("Functional", "Model", "Sequential"):
            name = layer.get("config", {}).get("name") or layer.get("name")
            orders[name] = [l.get("config", {}).get("name") or l.get("name") for l in _config_layers(layer)]
    return orders


# ---------------------------------------------------------------------------------------------
# HDF5 readers


def _strs(values: Iterable) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_legacy(f, path: str) -> KerasFile:
    """Keras 1/2 layout: ``layer_names`` on the root (weights-only) or on ``model_weights`` (full model)."""
    full = "model_weights" in f
    root = f["model_weights"] if full else f
    config = None
    if "model_config" in f.attrs:
        raw = f.attrs["model_config"]
        try:
            config = json.loads(raw.decode("utf8") if isinstance(raw, bytes) else raw)
        except json.JSONDecodeError:
            raise JaxvizError(f"{path}: model_config is not valid JSON; the file is damaged") from None
        refuse_unsafe(config, path)
    orders = _nested_orders(config)
    layers: list[FileLayer] = []
    for lname in _strs(root.attrs["layer_names"]):
        if lname not in root:
            raise JaxvizError(f"{path}: layer group {lname!r} listed in layer_names is missing; the file is damaged")
        group = root[lname]
        wnames = _strs(group.attrs.get("weight_names", []))
        sub: dict[str, FileLayer] = {}
        for wn in wnames:
            if wn not in group:
                raise JaxvizError(f"{path}: dataset {lname}/{wn} is missing; the file is damaged")
            parts = wn.split(":")[0].split("/")
            owner, pname = (parts[-2], parts[-1]) if len(parts) >= 2 else (lname, None)
            sub.setdefault(owner, FileLayer(owner)).weights.append((pname, np.asarray(group[wn][()])))
        if len(sub) == 1:  # a plain layer: its group name is its name
            only = next(iter(sub.values()))
            layers.append(FileLayer(lname, only.weights))
        elif sub:  # a nested model: order its layers as its config does, not as its weights are listed
            order = orders.get(lname, [])
            rank = {n: i for i, n in enumerate(order)}
            layers += sorted(sub.values(), key=lambda l: rank.get(l.name, len(rank)))
    version = f.attrs.get("keras_version")
    version = version.decode() if isinstance(version, bytes) else version
    return KerasFile(path, "keras2-h5" if full else "published-h5", layers, config, version)


def _natural(key: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    assert m
    return m.group(1), int(m.group(2) or 0)


def _snake(name: str) -> str:
    """Keras's ``to_snake_case``: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_keys(cfg: dict) -> list[tuple[str, dict]]:
    """Keras 3 weight-file keys of a container's layers, in ``model.layers`` order.

    Keras 3 names each layer's group by its class in snake case plus a per-class counter, in
    ``model.layers`` order; a Sequential's ``model.layers`` leaves out its InputLayer.
    """
    counters: dict[str, int] = {}
    out = []
    seq = cfg.get("class_name") == "Sequential"
    for layer in _config_layers(cfg):
        cls = layer.get("class_name", "")
        if seq and cls == "InputLayer":
            continue
        base = _snake(cls)
        n = counters.get(base, 0)
        counters[base] = n + 1
        out.append((base if n == 0 else f"{base}_{n}", layer))
    return out


def _read_keras3(h5, path: str, config: dict | None, version: str | None) -> KerasFile:
    if config is not None:
        refuse_unsafe(config, path)
    layers: list[FileLayer] = []

    def vars_of(group, name: str) -> FileLayer:
        fl = FileLayer(name)
        if "vars" in group:
            for k in sorted(group["vars"].keys(), key=int):  # vars/10 after vars/9
                fl.weights.append((None, np.asarray(group["vars"][k][()])))
        return fl

    def walk(group, cfg: dict | None) -> None:
        if "layers" not in group:
            return
        children = group["layers"]
        if cfg is not None:
            keyed = [(k, c) for k, c in _keras3_keys(cfg) if k in children]
        else:  # no config: containers first (a base model leads), then by class counter
            keys = sorted(children.keys(), key=lambda k: ("layers" not in children[k], _natural(k)))
            keyed = [(k, None) for k in keys]
        for key, child_cfg in keyed:
            child = children[key]
            name = (child_cfg or {}).get("config", {}).get("name", key) if child_cfg else key
            if "layers" in child:
                walk(child, child_cfg)
            fl = vars_of(child, name)
            if fl.weights:
                layers.append(fl)

    if "layers" not in h5:
        raise JaxvizError(f"{path}: no 'layers' group; not a Keras 3 weights file")
    walk(h5, config)
    return KerasFile(path, "keras3", layers, config, version)


# ---------------------------------------------------------------------------------------------
# Entry points


def read_keras_file(path: "str | os.PathLike") -> KerasFile:
    """Read any supported Keras file into a :class:`KerasFile` (no code from the file is run)."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise JaxvizError(f"weights file not found: {path}")
    if os.path.isdir(path):
        raise JaxvizError(f"{path} is a directory, not a Keras file (a jaxviz checkpoint has a jaxviz.json)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if "model.weights.h5" not in names:
                    raise JaxvizError(f"{path}: zip archive without model.weights.h5; not a Keras 3 .keras file")
                config = json.loads(z.read("config.json")) if "config.json" in names else None
                meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
                data = z.read("model.weights.h5")  # in memory; nothing is extracted to disk
        except zipfile.BadZipFile as e:
            raise JaxvizError(f"cannot read {path}: damaged zip archive ({e})") from None
        except json.JSONDecodeError:
            raise JaxvizError(f"{path}: config.json or metadata.json is not valid JSON; the file is damaged") from None
        if config is not None:
            refuse_unsafe(config, path)
        try:
            with h5py.File(io.BytesIO(data), "r") as h5:
                return _read_keras3(h5, path, config, meta.get("keras_version"))
        except OSError as e:
            raise JaxvizError(f"cannot read {path}: its model.weights.h5 is damaged ({e})") from None
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        if magic[:2] == b"PK":
            raise JaxvizError(f"cannot read {path}: damaged or truncated zip archive")
        if magic[:1] == b"\x80" or path.endswith((".pkl", ".pickle", ".pt", ".pth")):
            raise JaxvizError(f"refusing {path}: pickled data is never loaded as a Keras file; a PyTorch state dict "
                              "(.pth) goes through the restricted reader jaxviz.io.torch")
        raise JaxvizError(f"cannot read {path}: not an HDF5 or .keras file")
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or "model_weights" in f:
                if "model_weights" in f and "layer_names" not in f["model_weights"].attrs:
                    raise JaxvizError(f"{path}: model_weights has no layer_names; the file is damaged")
                return _read_legacy(f, path)
            if "layers" in f:
                return _read_keras3(f, path, None, None)
            raise JaxvizError(f"{path}: no layer_names, model_weights or layers; not a Keras weights file")
    except OSError as e:
        raise JaxvizError(f"cannot read {path}: damaged or truncated HDF5 file ({str(e).splitlines()[0]})") from None


def _model_params_spec(model: Sequential) -> list[tuple[str, str, dict[str, tuple[int, ...]]]]:
    return [(n, weights_kind(tuple(len(v) for v in s.values())), s) for n, s in model.param_shapes().items()]


def _pairs(model: Sequential, kf: KerasFile) -> tuple[list[tuple[str, FileLayer | None]], list[list[FileLayer]]]:
    """Pair each weighted model layer with a file layer: by name if all names agree, else by order per kind.

    Returns the pairs (``None`` where the file ran out of layers of that kind) and the unused file layers.
    """
    spec = _model_params_spec(model)
    file_names = [l.name for l in kf.layers]
    if sorted(file_names) == sorted(n for n, _, _ in spec) and len(set(file_names)) == len(file_names):
        by_name = {l.name: l for l in kf.layers}
        return [(n, by_name[n]) for n, _, _ in spec], []
    pairs = []
    queues: dict[str, list[FileLayer]] = {}
    for l in kf.layers:
        queues.setdefault(l.kind, []).append(l)
    for kind in queues:
        if kind not in ("conv", "sepconv", "dense", "batchnorm"):
            l = queues[kind][0]
            raise JaxvizError(
                f"{kf.path} does not fit {model.name}: file layer {l.name!r} has weights of shapes "
                f"{[w.shape for _, w in l.weights]}, which no {model.name} layer has"
            )
    for name, kind, shapes in spec:
        q = queues.get(kind, [])
        pairs.append((name, q.pop(0) if q else None))
    return pairs, [q for q in queues.values() if q]


def describe_shapes(expected: dict[str, tuple[int, ...]]) -> str:
    """``kernel (3, 3, 3, 64), bias (64,)``: a layer's parameter shapes for error messages."""
    return ", ".join(f"{p} {tuple(s)}" for p, s in expected.items())


def to_params(model: Sequential, kf: KerasFile) -> dict[str, dict[str, np.ndarray]]:
    """Map a :class:`KerasFile` onto ``model``'s parameters, checking every shape and value."""
    params: dict[str, dict[str, np.ndarray]] = {}
    pairs, leftovers = _pairs(model, kf)
    all_expected = model.param_shapes()
    for name, fl in pairs:
        expected = all_expected[name]
        if fl is None:
            raise JaxvizError(
                f"{kf.path} does not fit {model.name}: layer {name!r} expects {describe_shapes(expected)} "
                "but the file has no more layers of that kind"
            )
        pnames = [p for p, _ in fl.weights]
        if all(p in expected for p in pnames) and len(set(pnames)) == len(pnames):
            values = {p: a for p, a in fl.weights}
        else:  # Keras-1 names (W, b) or Keras 3 vars/N: by position, as Keras loads them
            values = {p: a for p, (_, a) in zip(expected, fl.weights)}
        if len(fl.weights) != len(expected):
            raise JaxvizError(
                f"{kf.path} does not fit {model.name}: layer {name!r} expects {len(expected)} arrays "
                f"({describe_shapes(expected)}), file layer {fl.name!r} has {len(fl.weights)}: "
                f"{', '.join(str(tuple(a.shape)) for _, a in fl.weights)}"
            )
        for p, shape in expected.items():
            found = tuple(values[p].shape) if p in values else None
            if found != tuple(shape):
                raise JaxvizError(
                    f"{kf.path} does not fit {model.name}: layer {name!r} {p} expected shape {tuple(shape)}, "
                    f"found {found} (file layer {fl.name!r})"
                )
            arr = np.asarray(values[p], np.float32)
            if not np.all(np.isfinite(arr)):
                raise JaxvizError(f"{kf.path}: layer {fl.name!r} {p} contains NaN or Inf; the weights are unusable")
            params.setdefault(name, {})[p] = arr
    for q in leftovers:
        kind = q[0].kind
        hint = " (a with-top file? try --arch vgg16)" if model.name.endswith("_notop") and kind == "dense" else ""
        raise JaxvizError(
            f"{kf.path} does not fit {model.name}: the file has {len(q)} more {kind} layer(s) than the model, "
            f"first {q[0].name!r} with {tuple(q[0].weights[0][1].shape)} weights{hint}"
        )
    return params


def detect_architecture(kf: KerasFile) -> str:
    """The registered architecture whose parameter shapes match the file's (first registered wins a tie)."""
    shapes = [tuple(tuple(a.shape) for _, a in l.weights) for l in kf.layers]
    for name in MODELS:
        model = get_model(name)
        spec = [tuple(tuple(s) for s in p.values()) for p in model.param_shapes().values()]
        if sorted(spec) == sorted(shapes):
            return name
    raise JaxvizError(
        f"cannot tell which architecture {kf.path} holds ({len(kf.layers)} weighted layers, first "
        f"{kf.layers[0].name if kf.layers else None!r}); pass --arch with one of: {', '.join(MODELS)}"
    )


def load_keras_weights(path: "str | os.PathLike", arch: str | None = None) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """``(architecture_name, params)`` from any supported Keras file; ``arch`` overrides detection."""
    return keras_file_params(read_keras_file(path), arch)


def keras_file_params(kf: KerasFile, arch: str | None = None) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """``(architecture_name, params)`` from an already-read :class:`KerasFile`."""
    if not kf.layers:
        raise JaxvizError(f"{kf.path} holds no weights")
    if arch is None:
        arch = detect_architecture(kf)
    elif arch not in MODELS:
        raise unknown("architecture", arch, list(MODELS))
    return arch, to_params(get_model(arch), kf)
