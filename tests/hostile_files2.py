"""Builders of hostile model files and inputs for the hostile-file matrix (issue 24,
``tests/test_hostile_matrix.py``): names that try to become paths or terminal commands, HDF5 features
that read other files (external links, virtual datasets, external raw storage, unusual filters),
FIFOs, devices and other non-regular files where a file is read, and size bombs.

Every builder writes into a directory it is given and returns the path of what it made. The base
files are a tiny Keras model (8x8x1 input, ``conv``, ``bn``, ``pool``, ``flat``, ``fc``) saved once
by Keras itself as ``.keras`` and as legacy ``.h5`` (:func:`templates`); the hostile variants are
those files with their config, HDF5 structure or zip members rewritten by ``zipfile``/``h5py``/``json``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import socket
import tempfile
import zipfile

import h5py
import numpy as np
from PIL import Image

TINY_KERNEL = "model_weights/conv/tiny/conv/kernel"  # the legacy .h5 path of the conv kernel (3 x 3 x 1 x 2)
KERAS_KERNEL = "layers/conv2d/vars/0"  # the same kernel inside a .keras archive's model.weights.h5


@functools.lru_cache(maxsize=None)
def templates() -> dict[str, str]:
    """``{"keras": path, "h5": path}``: the tiny model, saved once per session by Keras."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    d = tempfile.mkdtemp(prefix="jaxviz-hostile-templates-")
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    L = keras.layers
    m = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(2, 3, name="conv"), L.BatchNormalization(name="bn"),
                          L.MaxPooling2D(2, name="pool"), L.Flatten(name="flat"),
                          L.Dense(3, activation="softmax", name="fc")], name="tiny")
    out = {"keras": os.path.join(d, "tiny.keras"), "h5": os.path.join(d, "tiny.h5")}
    m.save(out["keras"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.save(out["h5"])
    return out


# --------------------------------------------------------------------------------------------- images


def write_png(path, side: int = 8, channels: int = 1, value: int = 120) -> str:
    shape = (side, side) if channels == 1 else (side, side, channels)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path, format="PNG")
    return str(path)


# --------------------------------------------------------------------------------------------- .keras


def keras_members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_keras(path, members: dict[str, bytes], deflate: bool = False) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return str(path)


def tiny_config() -> dict:
    return json.loads(keras_members(templates()["keras"])["config.json"])


def keras_with_config(path, mutate) -> str:
    """The tiny ``.keras`` with ``mutate(config)`` (in place, or returning a new config) applied."""
    members = keras_members(templates()["keras"])
    cfg = json.loads(members["config.json"])
    new = mutate(cfg)
    members["config.json"] = json.dumps(cfg if new is None else new).encode()
    return write_keras(path, members)


def layer_cfg(cfg: dict, name: str) -> dict:
    for layer in cfg["config"]["layers"]:
        if layer["config"].get("name") == name:
            return layer
    raise KeyError(name)


def keras_layer_named(path, new_name: str, layer: str = "conv") -> str:
    """The tiny ``.keras`` whose layer ``layer`` is called ``new_name`` in its config (Keras 3 finds the
    weights by class, so the file still loads)."""
    def mutate(cfg):
        layer_cfg(cfg, layer)["config"]["name"] = new_name
    return keras_with_config(path, mutate)


def keras_model_named(path, new_name: str) -> str:
    def mutate(cfg):
        cfg["config"]["name"] = new_name
    return keras_with_config(path, mutate)


def keras_insert_layer(path, index: int, layer: dict) -> str:
    """The tiny ``.keras`` with one more (weightless) layer config at ``index`` of its layer list."""
    def mutate(cfg):
        cfg["config"]["layers"].insert(index, layer)
    return keras_with_config(path, mutate)


def _conv_only(members: dict[str, bytes], side: int, extra: "dict | None" = None) -> dict[str, bytes]:
    """The tiny model cut after its pooling layer (fully convolutional: any input size fits its weights)
    at an input of ``side`` x ``side``, with the weightless layer config ``extra`` after its input."""
    members = dict(members)
    cfg = json.loads(members["config.json"])
    layers = [l for l in cfg["config"]["layers"] if l["config"].get("name") not in ("flat", "fc")]
    layers[0]["config"]["batch_shape"] = [None, side, side, 1]
    if extra is not None:
        layers.insert(1, extra)
    for layer in layers:
        layer.pop("build_config", None)
    cfg["config"]["layers"] = layers
    cfg["build_config"] = {"input_shape": [None, side, side, 1]}
    cfg["config"]["build_input_shape"] = [None, side, side, 1]
    members["config.json"] = json.dumps(cfg).encode()
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as f:
        for key in ("layers/flatten", "layers/dense"):
            if key in f:
                del f[key]
    members["model.weights.h5"] = buf.getvalue()
    return members


def upsampling_bomb(path, factor: int = 10000) -> str:
    """The fully convolutional tiny model (8x8 input) after an ``UpSampling2D((factor, factor))``: its
    first conv sees 80000 x 80000 pixels (51 GB of activations) from a 2 KB file."""
    up = {"module": "keras.layers", "class_name": "UpSampling2D", "registered_name": None,
          "config": {"name": "up", "size": [factor, factor], "data_format": "channels_last",
                     "interpolation": "nearest", "trainable": True, "dtype": "float32"}}
    return write_keras(path, _conv_only(keras_members(templates()["keras"]), 8, up))


def huge_input(path, side: int = 65536) -> str:
    """The fully convolutional tiny model at an input of ``side`` x ``side``: 34 GB of activations from a
    2 KB file."""
    return write_keras(path, _conv_only(keras_members(templates()["keras"]), side))


def bn_epsilon(path, epsilon: float = -10.0) -> str:
    def mutate(cfg):
        layer_cfg(cfg, "bn")["config"]["epsilon"] = epsilon
    return keras_with_config(path, mutate)


def many_activations(path, n: int = 200_000) -> str:
    """A Sequential of ``n`` Activation layers after the tiny model's input: a few hundred KB deflated."""
    cfg = tiny_config()
    inp = cfg["config"]["layers"][0]
    acts = [{"module": "keras.layers", "class_name": "Activation", "config": {"name": f"a{i}", "activation": "relu"},
             "registered_name": None} for i in range(n)]
    cfg["config"]["layers"] = [inp, *acts]
    members = keras_members(templates()["keras"])
    members["config.json"] = json.dumps(cfg, separators=(",", ":")).encode()
    return write_keras(path, members, deflate=True)


def empty_dicts(path, n: int = 20_000_000) -> str:
    """A config of ``n`` empty JSON objects (60 MB, under the 64 MB config cap; a few hundred KB deflated)."""
    members = keras_members(templates()["keras"])
    members["config.json"] = b'{"class_name":"Sequential","config":{"name":"x","layers":[' + b"{}," * (n - 1) + b"{}]}}"
    return write_keras(path, members, deflate=True)


def deeply_nested(path, depth: int = 200_000) -> str:
    members = keras_members(templates()["keras"])
    members["config.json"] = b"[" * depth + b"]" * depth
    return write_keras(path, members, deflate=True)


def deflate_bomb(path, size: int = 5 << 29) -> str:
    """The tiny ``.keras`` whose ``model.weights.h5`` member is ``size`` zero bytes deflated (2.5 GiB in a
    ~2.5 MB file), written in streaming so that the builder never holds it."""
    members = keras_members(templates()["keras"])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for n in ("metadata.json", "config.json"):
            z.writestr(n, members[n])
        chunk = bytes(64 << 20)
        with z.open("model.weights.h5", "w", force_zip64=True) as f:
            left = size
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
    return str(path)


def keras_weights_member(path, edit) -> str:
    """The tiny ``.keras`` whose ``model.weights.h5`` member went through ``edit(h5py.File)``."""
    members = keras_members(templates()["keras"])
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as f:
        edit(f)
    members["model.weights.h5"] = buf.getvalue()
    return write_keras(path, members)


# --------------------------------------------------------------------------------------------- legacy .h5


def h5_copy(path) -> str:
    shutil.copyfile(templates()["h5"], path)
    return str(path)


def h5_layer_named(path, new_name: str, layer: str = "conv") -> str:
    """The tiny legacy ``.h5`` whose layer ``layer`` is called ``new_name`` in its config, its
    ``layer_names`` and its weight group (a name with ``/`` becomes nested groups; ``..`` is a plain
    group name to HDF5)."""
    h5_copy(path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        layer_cfg(cfg, layer)["config"]["name"] = new_name
        f.attrs["model_config"] = json.dumps(cfg)
        mw = f["model_weights"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in mw.attrs["layer_names"]]
        mw.attrs["layer_names"] = [new_name.encode() if n == layer else n.encode() for n in names]
        g = mw.create_group(new_name)
        for k, v in mw[layer].attrs.items():
            g.attrs[k] = v
        for k in mw[layer]:
            mw.copy(mw[layer][k], g, name=k)
        del mw[layer]
    return str(path)


def _replace(f: h5py.File, where: str, make) -> None:
    """Replace dataset ``where`` by ``make(parent_group, name, old_array)``."""
    parent, _, name = where.rpartition("/")
    old = f[where][()]
    del f[where]
    make(f[parent] if parent else f, name, old)


def write_source(path, array: np.ndarray, name: str = "x") -> str:
    with h5py.File(path, "w") as f:
        f[name] = array
    return str(path)


def external_link(f: h5py.File, where: str, target_file: str, target_name: str = "x") -> None:
    _replace(f, where, lambda g, n, old: g.__setitem__(n, h5py.ExternalLink(target_file, target_name)))


def virtual(f: h5py.File, where: str, source_file: str, source_name: str = "x") -> None:
    def make(g, n, old):
        layout = h5py.VirtualLayout(shape=old.shape, dtype=old.dtype)
        layout[...] = h5py.VirtualSource(source_file, source_name, shape=old.shape, dtype=old.dtype)
        g.create_virtual_dataset(n, layout, fillvalue=0)
    _replace(f, where, make)


def external_storage(f: h5py.File, where: str, raw_file: str, offset: int = 0) -> None:
    """The dataset's bytes live in ``raw_file`` (HDF5 external raw storage), not in the HDF5 file."""
    def make(g, n, old):
        g.create_dataset(n, shape=old.shape, dtype=old.dtype, external=[(raw_file, offset, old.nbytes)])
    _replace(f, where, make)


def scaleoffset(f: h5py.File, where: str) -> None:
    _replace(f, where, lambda g, n, old: g.create_dataset(n, data=old, scaleoffset=8, chunks=old.shape))


def unknown_filter(f: h5py.File, where: str, filter_id: int = 32123) -> None:
    """A filter no HDF5 build knows, marked optional so that writing it skips it; a reader meets a
    pipeline naming a filter it cannot run."""
    def make(g, n, old):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(old.shape)
        dcpl.set_filter(filter_id, h5py.h5z.FLAG_OPTIONAL, (1, 2))
        sid = h5py.h5s.create_simple(old.shape)
        dsid = h5py.h5d.create(g.id, n.encode(), h5py.h5t.IEEE_F32LE, sid, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(old, np.float32))
    _replace(f, where, make)


def h5_edited(path, edit) -> str:
    h5_copy(path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return str(path)


def weights_only_bomb(path, shape=(3, 3, 8192, 32768), dtype=np.int8) -> str:
    """A published-layout weights-only ``.h5`` of one conv layer whose kernel is ``dtype`` zeros of
    ``shape`` (2.25 GiB as int8, inside the 4 GiB weight budget; 9 GiB as float32),
    gzip-compressed and never written: the file is a few KB, every chunk the fill value."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv"]
        g = f.create_group("conv")
        g.attrs["weight_names"] = [b"conv_W:0", b"conv_b:0"]
        g.create_dataset("conv_W:0", shape=shape, dtype=dtype, chunks=(3, 3, 256, 1024), compression="gzip")
        g.create_dataset("conv_b:0", data=np.zeros(shape[-1], np.float32))
    return str(path)


# --------------------------------------------------------------------------------------------- checkpoints


def digits_checkpoint(dest) -> str:
    """A copy of the jaxviz checkpoint that ships with the package (digits_cnn)."""
    from importlib import resources

    src = str(resources.files("jaxviz").joinpath("data", "checkpoints", "digits_cnn"))
    shutil.copytree(src, dest, symlinks=True)
    return str(dest)


def converted_checkpoint(src_file: str, dest) -> tuple[int, str]:
    """``weights_convert SRC DEST`` run in this process: ``(status, stderr text)``."""
    import contextlib

    from weights_convert.cli import main as convert_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = convert_main([str(src_file), str(dest)])
    return status, err.getvalue()


# --------------------------------------------------------------------------------------------- special files


def fifo(path) -> str:
    os.mkfifo(path)
    return str(path)


def unix_socket(path) -> tuple[str, socket.socket]:
    """A bound unix socket at ``path`` (keep the returned socket open while it is used)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return str(path), s


def sparse(path, size: int = 3 << 30, head: bytes = b'{"format": "jaxviz-checkpoint", "x": "') -> str:
    """A file of ``size`` bytes that takes no disk space: ``head`` then a hole."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return str(path)

