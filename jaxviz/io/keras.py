"""Read Keras files into jaxviz models and params, without executing anything from the file.

Formats:
  * published ``keras.applications`` weights-only HDF5 (root ``layer_names``, Keras-1 dataset names);
  * Keras 2 full-model HDF5 from ``model.save`` (``model_config``, ``model_weights/...``),
    including a nested base model whose group lists trainable weights first; Keras 3 writes the same
    layout when it saves to ``.h5``;
  * Keras 3 ``.keras`` archives (read in memory) and ``.weights.h5`` files (``layers/<key>/vars/N``).

The file is reduced to a list of weighted layers ``(name, path, [(param_name|None, array)])`` in
model order, reading at most :data:`MAX_CONFIG_BYTES` of config and :data:`MAX_WEIGHT_BYTES` of weights.

:func:`load_keras_model` rebuilds the architecture from the file's own config
(:func:`jaxviz.nn.keras_graph.build_graph`) and takes each layer's weights by its path in the file
(:func:`graph_params`); a config that is exactly a registered architecture opens as that one. Files
without a config, and :func:`load_keras_weights` / :func:`keras_file_params`, map onto a registered
architecture: by name when the names agree exactly, otherwise by order within each kind (conv to conv,
dense to dense), as Keras's own ``by_name=False`` loading does; every shape is checked and the first
misfit is named.

Why one module of ~640 lines: every Keras file layout and its bounded reads form one security
boundary (what a file may make jaxviz read); the config-to-graph translation lives in nn.keras_graph.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from jaxviz.errors import JaxvizError, show, unknown
from jaxviz.nn.finite import require_finite
from jaxviz.io.files import open_regular
from jaxviz.io.h5probe import check_dataset, check_structure, probe_h5
from jaxviz.nn import MODELS, Params, Sequential, get_model
from jaxviz.nn import layers as L
from jaxviz.nn.keras_graph import UNSAFE_CLASSES, KerasGraph, build_graph, refuse_custom  # noqa: F401 (re-exported)

# What a file may make jaxviz read (untrusted input must not exhaust memory): a model config (JSON) of at
# most MAX_CONFIG_BYTES, a metadata.json of MAX_METADATA_BYTES, and weights of MAX_WEIGHT_BYTES in all
# (every keras.applications model fits; VGG16 with its top is 0.55 GB). Sizes are checked before reading.
MAX_CONFIG_BYTES = 64 << 20
MAX_METADATA_BYTES = 1 << 20
MAX_WEIGHT_BYTES = 4 << 30
MAX_NAMES = 100_000  # layer and weight names listed in one HDF5 attribute
MAX_FILE_BYTES = MAX_WEIGHT_BYTES + MAX_CONFIG_BYTES  # the file itself, checked before it is opened
# JSON containers ({ and [) in a config: each costs ~100 bytes once parsed, so 20 million empty dicts in a
# 60 MB config would cost gigabytes. The largest keras.applications config (NASNetLarge) has ~60,000.
MAX_CONFIG_CONTAINERS = 2_000_000
# A stored value may inflate at most this much over its compressed bytes (a deflate bomb, or an HDF5
# dataset with no storage allocated that reads as its fill value) once past MAX_PLAIN_BYTES; real weights
# barely compress (random-init and trained float32: ~1.1x).
MAX_INFLATION = 64
MAX_PLAIN_BYTES = 64 << 20


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
    """One weighted layer of a file. ``path``: where it sits, as config names from the top (Keras 3:
    ``(container, ..., layer)``; legacy HDF5: ``(top-level group, layer)``)."""

    name: str
    weights: list[tuple[str | None, np.ndarray]] = field(default_factory=list)
    path: tuple[str, ...] = ()

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


def _config_layers(cfg: Any) -> list:
    """The layer list of a Sequential/Functional config (Keras 2.0 Sequentials store a bare list)."""
    if not isinstance(cfg, dict):
        return []
    inner = cfg.get("config", cfg)
    if isinstance(inner, list):
        return inner
    layers = inner.get("layers", []) if isinstance(inner, dict) else []
    return layers if isinstance(layers, list) else []


def _entry_name(layer: Any) -> str | None:
    if not isinstance(layer, dict):
        return None
    cfg = layer.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    return name if isinstance(name, str) else layer.get("name") if isinstance(layer.get("name"), str) else None


def refuse_unsafe(cfg: Any, path: str) -> None:
    """Refuse configs that would execute code (Lambda layers, custom objects, checked on ``class_name``,
    ``module`` and ``registered_name`` alike)."""
    refuse_custom(cfg, path)


def _nested_orders(cfg: dict | None) -> dict[str, list[str]]:
    """``{container_layer_name: [its layer names in order]}`` for nested models in a Keras 2 config."""
    orders: dict[str, list[str]] = {}
    for layer in _config_layers(cfg):
        if isinstance(layer, dict) and layer.get("class_name") in ("Functional", "Model", "Sequential"):
            orders[_entry_name(layer)] = [_entry_name(l) for l in _config_layers(layer)]
    return orders


# ---------------------------------------------------------------------------------------------
# HDF5 readers


class _Budget:
    """Bytes of weights still allowed (:data:`MAX_WEIGHT_BYTES`), counted as the float32 arrays they
    become (an int8 kernel costs its own bytes and its float32 copy), checked on each dataset's
    declared shape and type before it is read. A dataset whose declared size is more than
    :data:`MAX_INFLATION` times its stored bytes (a compression bomb, or unallocated storage) is refused
    before it is inflated."""

    def __init__(self, path: str):
        self.path, self.left = path, MAX_WEIGHT_BYTES

    def read(self, ds, where: str) -> np.ndarray:
        import h5py

        where = show(where)
        if not isinstance(ds, h5py.Dataset):
            raise JaxvizError(f"{self.path}: {where} is not a dataset; the file is damaged")
        if ds.dtype.kind not in "fiu" or ds.ndim > 8:
            raise JaxvizError(f"{self.path}: {where} holds {ds.dtype} data of rank {ds.ndim}, not numbers; "
                              "the file is damaged")
        check_dataset(ds, f"{self.path}: {where}")
        n = int(np.prod(ds.shape, dtype=np.int64))
        raw = n * ds.dtype.itemsize
        cost = n * 4 + (raw if ds.dtype != np.float32 else 0)
        if cost > self.left:
            raise JaxvizError(f"{self.path}: its weights exceed {MAX_WEIGHT_BYTES >> 20} MB as float32 (at {where}); "
                              "refusing to read them")
        stored = ds.id.get_storage_size()
        if raw > MAX_PLAIN_BYTES and raw > MAX_INFLATION * stored:
            raise JaxvizError(f"{self.path}: {where} declares {raw >> 20} MB stored in {stored:,} bytes (a compression "
                              "bomb or missing data); refusing it")
        self.left -= cost
        return np.asarray(ds[()])


def _strs(values: Iterable, path: str = "file") -> list[str]:
    values = list(values) if not isinstance(values, np.ndarray) else values.reshape(-1).tolist()
    if len(values) > MAX_NAMES:
        raise JaxvizError(f"{path}: lists {len(values)} names in one attribute; the file is damaged")
    return [v.decode("utf8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _parse_config(raw: Any, path: str, what: str) -> Any:
    """JSON text of at most :data:`MAX_CONFIG_BYTES` -> object, with one-line errors."""
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw.item()
    if not isinstance(raw, (bytes, str)):
        raise JaxvizError(f"{path}: {what} is not text; the file is damaged")
    if len(raw) > MAX_CONFIG_BYTES:
        raise JaxvizError(f"{path}: its {what} is {len(raw) >> 20} MB, over the {MAX_CONFIG_BYTES >> 20} MB jaxviz "
                          "reads; refusing it")
    brace, bracket = ("{", "[") if isinstance(raw, str) else (b"{", b"[")
    if raw.count(brace) + raw.count(bracket) > MAX_CONFIG_CONTAINERS:
        raise JaxvizError(f"{path}: its {what} holds more than {MAX_CONFIG_CONTAINERS:,} JSON objects and lists; "
                          "no model needs that many, refusing it")
    try:
        return json.loads(raw.decode("utf8") if isinstance(raw, bytes) else raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise JaxvizError(f"{path}: {what} is not valid JSON; the file is damaged") from None
    except RecursionError:
        raise JaxvizError(f"{path}: {what} is nested too deeply; the file is damaged") from None


def _read_legacy(f, path: str) -> KerasFile:
    """Keras 1/2 layout: ``layer_names`` on the root (weights-only) or on ``model_weights`` (full model)."""
    full = "model_weights" in f
    root = f["model_weights"] if full else f
    config = None
    if "model_config" in f.attrs:
        config = _parse_config(f.attrs["model_config"], path, "model_config")
        refuse_unsafe(config, path)
    orders = _nested_orders(config)
    budget = _Budget(path)
    layers: list[FileLayer] = []
    for lname in _strs(root.attrs["layer_names"], path):
        if lname not in root:
            raise JaxvizError(f"{path}: layer group {lname!r} listed in layer_names is missing; the file is damaged")
        group = root[lname]
        wnames = _strs(group.attrs.get("weight_names", []), path)
        sub: dict[str, FileLayer] = {}
        for wn in wnames:
            if wn not in group:
                raise JaxvizError(f"{path}: dataset {lname}/{wn} is missing; the file is damaged")
            parts = wn.split(":")[0].split("/")
            owner, pname = (parts[-2], parts[-1]) if len(parts) >= 2 else (lname, None)
            sub.setdefault(owner, FileLayer(owner, path=(lname, owner))).weights.append(
                (pname, budget.read(group[wn], f"{lname}/{wn}")))
        if len(sub) == 1:  # a plain layer: its group name is its name
            only = next(iter(sub.values()))
            layers.append(FileLayer(lname, only.weights, (lname, only.name)))
        elif sub:  # a nested model: order its layers as its config does, not as its weights are listed
            order = orders.get(lname, [])
            rank = {n: i for i, n in enumerate(order)}
            layers += sorted(sub.values(), key=lambda l: rank.get(l.name, len(rank)))
    version = f.attrs.get("keras_version")
    version = version.decode("utf8", "replace") if isinstance(version, bytes) else version
    return KerasFile(path, "keras2-h5" if full else "published-h5", layers, config,
                     version if isinstance(version, str) else None)


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
        if not isinstance(layer, dict):
            continue
        cls = layer.get("class_name", "")
        cls = cls if isinstance(cls, str) else ""
        if seq and cls == "InputLayer":
            continue
        base = _snake(cls)
        n = counters.get(base, 0)
        counters[base] = n + 1
        out.append((base if n == 0 else f"{base}_{n}", layer))
    return out


def _read_keras3(h5, path: str, config: dict | None, version: str | None) -> KerasFile:
    import h5py

    if config is not None:
        refuse_unsafe(config, path)
    layers: list[FileLayer] = []
    budget = _Budget(path)

    def vars_of(group, name: str, where: tuple[str, ...]) -> FileLayer:
        fl = FileLayer(name, path=where)
        if "vars" in group:
            keys = list(group["vars"].keys())
            if len(keys) > MAX_NAMES or not all(k.isdigit() and len(k) < 7 for k in keys):
                raise JaxvizError(f"{path}: {'/'.join(where)} has variables named {keys[:3]}...; the file is damaged")
            for k in sorted(keys, key=int):  # vars/10 after vars/9
                fl.weights.append((None, budget.read(group["vars"][k], f"{'/'.join(where)}/vars/{k}")))
        return fl

    def walk(group, cfg: dict | None, prefix: tuple[str, ...], depth: int) -> None:
        if "layers" not in group or depth > 32:
            return
        children = group["layers"]
        if not isinstance(children, h5py.Group):
            raise JaxvizError(f"{path}: 'layers' is not a group; the file is damaged")
        if cfg is not None:
            keyed = [(k, c) for k, c in _keras3_keys(cfg) if k in children]
        else:  # no config: containers first (a base model leads), then by class counter
            keys = sorted(children.keys(), key=lambda k: ("layers" not in children[k], _natural(k)))
            keyed = [(k, None) for k in keys]
        for key, child_cfg in keyed:
            child = children[key]
            if not isinstance(child, h5py.Group):
                raise JaxvizError(f"{path}: layers/{key} is not a group; the file is damaged")
            name = (child_cfg.get("config") or {}).get("name", key) if isinstance(child_cfg, dict) and \
                isinstance(child_cfg.get("config"), dict) else key
            name = name if isinstance(name, str) else key
            if "layers" in child:
                walk(child, child_cfg, prefix + (name,), depth + 1)
            fl = vars_of(child, name, prefix + (name,))
            if fl.weights:
                layers.append(fl)

    if "layers" not in h5:
        raise JaxvizError(f"{path}: no 'layers' group; not a Keras 3 weights file")
    walk(h5, config, (), 0)
    return KerasFile(path, "keras3", layers, config, version)


# ---------------------------------------------------------------------------------------------
# Entry points


def _member(z: zipfile.ZipFile, name: str, limit: int, path: str) -> bytes:
    """One archive member, refused before decompressing when its declared size is over ``limit``
    (and read with a bound, in case the declared size lies)."""
    info = z.getinfo(name)
    size = info.file_size
    if size > limit:
        raise JaxvizError(f"{path}: its {name} is {size >> 20} MB, over the {limit >> 20} MB jaxviz reads; refusing it")
    if size > MAX_PLAIN_BYTES and size > MAX_INFLATION * info.compress_size:
        raise JaxvizError(f"{path}: its {name} inflates {info.compress_size:,} bytes to {size >> 20} MB (a compression "
                          "bomb); refusing it")
    with z.open(name) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise JaxvizError(f"{path}: its {name} is over the {limit >> 20} MB jaxviz reads; refusing it")
    return data


def read_keras_file(path: "str | os.PathLike") -> KerasFile:
    """Read any supported Keras file into a :class:`KerasFile` (no code from the file is run; what is
    read is capped, see :data:`MAX_CONFIG_BYTES` and :data:`MAX_WEIGHT_BYTES`)."""
    import h5py

    path = os.fspath(path)
    label = path
    path = show(path)
    with open_regular(label, "weights file", MAX_FILE_BYTES) as fh:
        is_zip = zipfile.is_zipfile(fh)
        if is_zip:
            fh.seek(0)
            try:
                with zipfile.ZipFile(fh) as z:
                    names = set(z.namelist())
                    if "model.weights.h5" not in names:
                        raise JaxvizError(f"{path}: zip archive without model.weights.h5; not a Keras 3 .keras file")
                    config = (_parse_config(_member(z, "config.json", MAX_CONFIG_BYTES, path), path, "config.json")
                              if "config.json" in names else None)
                    meta = (_parse_config(_member(z, "metadata.json", MAX_METADATA_BYTES, path), path,
                                          "metadata.json") if "metadata.json" in names else {})
                    if config is not None:  # refused before the weights are even read
                        refuse_unsafe(config, path)
                    data = _member(z, "model.weights.h5", MAX_WEIGHT_BYTES + (64 << 20), path)  # in memory only
            except JaxvizError:  # a ValueError too: a refusal (a custom class...) keeps its own words
                raise
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as e:
                raise JaxvizError(f"cannot read {path}: damaged zip archive ({show(e, 200)})") from None
            except (OSError, RuntimeError) as e:  # zlib errors, encrypted members
                raise JaxvizError(f"cannot read {path}: damaged zip archive ({show(e, 200)})") from None
        else:
            fh.seek(0)
            magic = fh.read(8)
    if is_zip:
        version = meta.get("keras_version") if isinstance(meta, dict) else None
        probe_h5(data, f"{path} (its model.weights.h5)")  # a hang in libhdf5 could not be interrupted here
        try:
            with h5py.File(io.BytesIO(data), "r") as h5:
                check_structure(h5, f"{path} (its model.weights.h5)")
                return _read_keras3(h5, path, config if isinstance(config, dict) else None,
                                    version if isinstance(version, str) else None)
        except JaxvizError:
            raise
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise JaxvizError(f"cannot read {path}: its model.weights.h5 is damaged "
                              f"({(str(e).splitlines() or [''])[0][:200]})") from None
    if magic != b"\x89HDF\r\n\x1a\n":
        if magic[:2] == b"PK":
            raise JaxvizError(f"cannot read {path}: damaged or truncated zip archive")
        if magic[:1] == b"\x80" or path.endswith((".pkl", ".pickle", ".pt", ".pth")):
            raise JaxvizError(f"refusing {path}: pickled data is never loaded as a Keras file; a PyTorch state dict "
                              "(.pth) goes through the restricted reader jaxviz.io.torch")
        raise JaxvizError(f"cannot read {path}: not an HDF5 or .keras file")
    probe_h5(label, path)  # a hang in libhdf5 could not be interrupted here
    try:
        with h5py.File(label, "r") as f:
            check_structure(f, path)
            if "layer_names" in f.attrs or "model_weights" in f:
                if "model_weights" in f and "layer_names" not in f["model_weights"].attrs:
                    raise JaxvizError(f"{path}: model_weights has no layer_names; the file is damaged")
                return _read_legacy(f, path)
            if "layers" in f:
                return _read_keras3(f, path, None, None)
            raise JaxvizError(f"{path}: no layer_names, model_weights or layers; not a Keras weights file")
    except JaxvizError:  # a ValueError too: a refusal (a custom class...) keeps its own words
        raise
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise JaxvizError(f"cannot read {path}: damaged or truncated HDF5 file ({(str(e).splitlines() or [''])[0][:200]})"
                          ) from None


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
            require_finite(arr, f"{kf.path}: layer {fl.name!r} {p} contains NaN or Inf; the weights are unusable")
            params.setdefault(name, {})[p] = arr
    for q in leftovers:
        kind = q[0].kind
        hint = " (a with-top file? try arch='vgg16')" if model.name.endswith("_notop") and kind == "dense" else ""
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
    own = (f"; the file holds its own architecture: jaxviz.load_model(weights={kf.path!r}) reads it from the "
           "file, or map the weights onto a registered one") if kf.config else ""
    raise JaxvizError(
        f"cannot tell which architecture {kf.path} holds ({len(kf.layers)} weighted layers, first "
        f"{kf.layers[0].name if kf.layers else None!r}) among the registered ones{own}: pass arch=NAME with one "
        f"of: {', '.join(MODELS)}"
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


# ---------------------------------------------------------------------------------------------
# Any model: the architecture from the file's own config

# Variables Keras stores that jaxviz does not need (Normalization's sample count), by Keras class.
_EXTRA_VARS = {"Normalization": ("count",)}
# Keras 3 renamed DepthwiseConv2D's kernel; legacy HDF5 written by Keras 3 uses the new name.
_ALIASES = {"DepthwiseConv2D": {"kernel": "depthwise_kernel"}}


def _find(kf: KerasFile, origin: tuple[str, ...], used: set[int]) -> FileLayer | None:
    """The file layer of a step: by its full path (Keras 3), by (top-level group, layer) (legacy
    HDF5), or the only weighted layer of its top-level group."""
    keys = [origin, (origin[0], origin[-1])]
    for key in keys:
        for i, fl in enumerate(kf.layers):
            if fl.path == key and i not in used:
                used.add(i)
                return fl
    if len(origin) == 1:
        group = [i for i, fl in enumerate(kf.layers) if fl.path[:1] == origin[:1]]
        if len(group) == 1 and group[0] not in used:
            used.add(group[0])
            return kf.layers[group[0]]
    return None


def graph_params(graph: KerasGraph, kf: KerasFile) -> Params:
    """The parameters of an imported graph from its file, layer by layer (by name where the file names
    its weights, else in Keras's order), every shape and value checked; weights the config does not
    account for are an error."""
    params: dict[str, dict[str, np.ndarray]] = {}
    used: set[int] = set()
    for step, expected in graph.model.param_shapes().items():
        cls = graph.classes[step]
        fl = _find(kf, graph.origins[step], used)
        if fl is None:
            raise JaxvizError(f"{kf.path}: layer {step!r} ({cls}) has no weights in the file "
                              f"(expected {describe_shapes(expected)}); the file is damaged")
        extra = _EXTRA_VARS.get(cls, ())
        alias = _ALIASES.get(cls, {})
        names = [alias.get(p, p) if p is not None else None for p, _ in fl.weights]
        if all(n in expected or n in extra for n in names) and len(set(names)) == len(names):
            values = {n: a for n, (_, a) in zip(names, fl.weights) if n in expected}
        elif len(fl.weights) in (len(expected), len(expected) + len(extra)):
            values = {p: a for p, (_, a) in zip(expected, fl.weights)}  # Keras's variable order
        else:
            values = {}
        if len(values) != len(expected) or len(fl.weights) not in (len(expected), len(expected) + len(extra)):
            raise JaxvizError(
                f"{kf.path}: layer {step!r} ({cls}) expects {describe_shapes(expected)}, the file has "
                f"{', '.join(str(tuple(a.shape)) for _, a in fl.weights)}")
        for p, shape in expected.items():
            arr = values[p]
            if tuple(arr.shape) != tuple(shape):
                raise JaxvizError(f"{kf.path}: layer {step!r} ({cls}) {p} expected shape {tuple(shape)}, "
                                  f"found {tuple(arr.shape)}")
            arr = np.asarray(arr, np.float32)
            require_finite(arr, f"{kf.path}: layer {step!r} ({cls}) {p} contains NaN or Inf; the weights are unusable")
            params.setdefault(step, {})[p] = arr
    left = [fl for i, fl in enumerate(kf.layers) if i not in used]
    if left:
        raise JaxvizError(f"{kf.path}: the file has weights for {'/'.join(left[0].path) or left[0].name!r} "
                          f"({len(left)} layer(s) in all) that its model config does not use; the file is damaged")
    return params


def _signature(model: Sequential) -> tuple:
    """The architecture without names: layer classes, settings and which earlier steps each reads."""
    index = {n: i for i, (n, _) in enumerate(model.layers)}
    index[""] = -1
    return tuple((type(l).__name__, tuple(sorted(L.layer_fields(l).items())), tuple(index[s] for s in model.sources[n]))
                 for n, l in model.layers)


def zoo_equivalent(model: Sequential) -> Sequential | None:
    """The registered architecture that is exactly ``model`` (same layers, settings, wiring and parameter
    shapes; names may differ), at ``model``'s input size; None if there is none."""
    sig, shapes = _signature(model), list(model.param_shapes().values())
    for name in MODELS:
        zoo = get_model(name)
        if len(zoo.layers) != len(model.layers) or _signature(zoo) != sig:
            continue
        if zoo.input_shape != model.input_shape:
            try:
                zoo = dataclasses.replace(zoo, input_shape=model.input_shape)
                zoo.shapes()
            except JaxvizError:
                continue
        if list(zoo.param_shapes().values()) == shapes:
            return zoo
    return None


def load_keras_model(path: "str | os.PathLike", arch: str | None = None) -> tuple[Sequential, Params, KerasFile]:
    """``(model, params, file)`` from any Keras file.

    A file with a model config is rebuilt from it (:func:`jaxviz.nn.keras_graph.build_graph`); when that
    graph is exactly a registered architecture, the registered one is used (its name, preprocessing and
    labels). A weights-only file (published ``.h5``, ``.weights.h5``) is matched to a registered
    architecture by its weight shapes. ``arch`` maps the weights onto that registered architecture instead.
    """
    kf = read_keras_file(path)
    if arch is not None or kf.config is None:
        name, params = keras_file_params(kf, arch)
        return get_model(name), params, kf
    graph = build_graph(kf.config, kf.path)
    zoo = zoo_equivalent(graph.model)
    if zoo is not None:
        return zoo, to_params(zoo, kf), kf
    return graph.model, graph_params(graph, kf), kf
