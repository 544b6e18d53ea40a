"""Import Keras weight files and PyTorch state dicts into jaxviz params and checkpoints, running no code
from the files."""

from weights_convert.keras import KerasFile, detect_architecture, load_keras_weights, read_keras_file
from weights_convert.torch import load_torch_weights, read_state_dict

__all__ = ["KerasFile", "detect_architecture", "load_keras_weights", "load_torch_weights", "read_keras_file",
           "read_state_dict"]
