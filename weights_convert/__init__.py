"""Import Keras weight files and PyTorch state dicts into jaxviz checkpoints, running no code from the
files. The readers live in :mod:`jaxviz.io`; this package is the converter built on them (it depends on
jaxviz, never the other way round)."""

from jaxviz.io.keras import KerasFile, detect_architecture, keras_file_params, load_keras_weights, read_keras_file
from jaxviz.io.torch import is_torch_file, load_torch_weights, read_state_dict
from jaxviz.io.weightfile import load_weights_file

__all__ = ["KerasFile", "detect_architecture", "is_torch_file", "keras_file_params", "load_keras_weights",
           "load_torch_weights", "load_weights_file", "read_keras_file", "read_state_dict"]
