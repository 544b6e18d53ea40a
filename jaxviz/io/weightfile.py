"""Read Keras weight files and PyTorch state dicts into jaxviz params and checkpoints, running no code
from the files."""

from __future__ import annotations

from jaxviz.io.keras import keras_file_params, read_keras_file
from jaxviz.io.torch import is_torch_file, load_torch_weights


def load_weights_file(path, arch: str | None = None) -> tuple[str, dict, str, str | None]:
    """``(architecture, params, format, keras_version)`` from any supported file: a PyTorch state dict
    or a Keras file (read once, even a 500 MB VGG16); ``arch`` overrides detection."""
    if is_torch_file(path):
        arch, params = load_torch_weights(path, arch)
        return arch, params, "pytorch-state-dict", None
    kf = read_keras_file(path)
    arch, params = keras_file_params(kf, arch)
    return arch, params, kf.format, kf.keras_version


