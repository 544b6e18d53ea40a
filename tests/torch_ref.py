"""An independent EfficientNet-Lite forward pass with PyTorch's semantics, in numpy.

Written from the ``efficientnet_pytorch``-style modules the published state dict comes from: NCHW
tensors, OIHW kernels, ``Conv2dStaticSamePadding`` (pad ``total // 2`` before, the rest after),
BatchNorm with eps 1e-3, ReLU6, the block strings of EfficientNet-B0, and the identity skip when
stride is 1 and channels are unchanged. It reads the state dict by its own key names, so it shares
nothing with jaxviz's model definition or converter.
"""

from __future__ import annotations

import re

import numpy as np

BLOCKS_ARGS = ["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
               "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320"]
MEAN, STD = 0.498, 0.502


def _decode(s: str) -> dict:
    d = dict(re.findall(r"([a-z])(\d+)", s))
    return {"repeats": int(d["r"]), "k": int(d["k"]), "s": int(d["s"][0]), "e": int(d["e"]), "i": int(d["i"]),
            "o": int(d["o"])}


def _same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, groups: int = 1) -> np.ndarray:
    """NCHW x OIHW, 'same' (static, TF-style) padding, like Conv2dStaticSamePadding."""
    k = w.shape[-1]
    x = _same_pad(x, k, stride)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # N C H W k k
    if groups == 1:
        return np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    return np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True)  # depthwise


def batchnorm(x: np.ndarray, sd: dict, name: str, eps: float = 1e-3) -> np.ndarray:
    g, b, m, v = (sd[f"{name}.{p}"].astype(np.float64)[None, :, None, None]
                  for p in ("weight", "bias", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + eps) * g + b


def relu6(x):
    return np.clip(x, 0, 6)


def forward(sd: dict, images_nhwc_uint8: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``(probabilities N x 1000, {block index: block output NHWC})`` in float64."""
    x = (images_nhwc_uint8.astype(np.float64) / 255.0 - MEAN) / STD
    x = x.transpose(0, 3, 1, 2)
    x = relu6(batchnorm(conv2d(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    outs, idx = {}, 0
    for args in map(_decode, BLOCKS_ARGS):
        for r in range(args["repeats"]):
            cin, stride = (args["i"], args["s"]) if r == 0 else (args["o"], 1)
            p = f"_blocks.{idx}"
            h = x
            if args["e"] != 1:
                h = relu6(batchnorm(conv2d(h, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
            h = relu6(batchnorm(conv2d(h, sd[f"{p}._depthwise_conv.weight"], stride, groups=h.shape[1]), sd, f"{p}._bn1"))
            h = batchnorm(conv2d(h, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
            if stride == 1 and cin == args["o"]:
                h = h + x
            x = h
            outs[idx] = x.transpose(0, 2, 3, 1)
            idx += 1
    x = relu6(batchnorm(conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    logits = x.mean(axis=(2, 3)) @ sd["_fc.weight"].T.astype(np.float64) + sd["_fc.bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), outs


def write_pth_zip(state_dict: dict, path: str, root: str = "archive") -> None:
    """Write ``{name: array}`` in PyTorch's zip format (as ``torch.save`` does, protocol 2) without
    torch: the pickle refers to ``torch._utils._rebuild_tensor_v2`` and ``torch.FloatStorage`` by
    name through stand-in modules that exist only while pickling."""
    import collections
    import io
    import pickle
    import sys
    import types
    import zipfile

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name, dtype in (("FloatStorage", np.float32), ("LongStorage", np.int64)):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        storage_types[np.dtype(dtype)] = cls
    torch._utils = utils

    class Storage:
        def __init__(self, cls, key, numel):
            self.cls, self.key, self.numel = cls, key, numel

    storages: dict[str, np.ndarray] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None

        def reducer_override(self, obj):
            if not isinstance(obj, np.ndarray):
                return NotImplemented
            a = np.ascontiguousarray(obj)
            key = str(len(storages))
            storages[key] = a
            stride = tuple(s // a.itemsize for s in a.strides)
            return _rebuild_tensor_v2, (Storage(storage_types[a.dtype], key, a.size), 0, a.shape, stride, False,
                                        collections.OrderedDict())

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(collections.OrderedDict(state_dict))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{root}/data.pkl", buf.getvalue())
        z.writestr(f"{root}/byteorder", "little")
        for key, a in storages.items():
            z.writestr(f"{root}/data/{key}", a.astype(a.dtype.newbyteorder("<")).tobytes())
        z.writestr(f"{root}/version", "3\n")
