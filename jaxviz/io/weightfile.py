"""Read Keras weight files and PyTorch state dicts into jaxviz models and params, running no code
from the files."""

from __future__ import annotations

import os

from jaxviz.errors import JaxvizError, show
from jaxviz.io.files import check_regular
from jaxviz.io.keras import load_keras_model
from jaxviz.io.onnx import is_onnx_file, load_onnx_model
from jaxviz.io.torch import is_torch_file, load_torch_weights
from jaxviz.nn import Params, Sequential, get_model


def load_model_file(path, arch: str | None = None) -> tuple[Sequential, Params, str, str | None]:
    """``(model, params, format, keras_version)`` from any supported file: a PyTorch state dict (mapped
    onto a registered architecture) or a Keras file (its own architecture from its config, or the
    registered one its weights fit; read once, even a 500 MB VGG16); ``arch`` forces a registered
    architecture."""
    check_regular(path, "weights file")  # a FIFO or /dev/zero is refused before anything reads it
    if is_onnx_file(path):  # its own graph: arch= does not apply
        model, params = load_onnx_model(path)
        return model, params, "onnx", None
    if is_torch_file(path):
        name, params = load_torch_weights(path, arch)
        return get_model(name), params, "pytorch-state-dict", None
    try:
        model, params, kf = load_keras_model(path, arch)
    except JaxvizError:
        raise
    except Exception as e:  # h5py raises RuntimeError, KeyError, ... on damaged files; --debug shows the cause
        raise JaxvizError(f"cannot read {show(os.fspath(path))}: damaged Keras file ({type(e).__name__}: "
                          f"{show(e, 200)})") from e
    return model, params, kf.format, kf.keras_version


def load_weights_file(path, arch: str | None = None) -> tuple[str, dict, str, str | None]:
    """``(architecture, params, format, keras_version)`` as :func:`load_model_file`, for callers that
    rebuild the model with ``get_model(architecture)`` (registered architectures only; a file with
    its own architecture needs :func:`load_model_file`)."""
    model, params, fmt, version = load_model_file(path, arch)
    return model.name, params, fmt, version
