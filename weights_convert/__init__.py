"""Import Keras weight files (and, later, other formats) into jaxviz params and checkpoints."""

from weights_convert.keras import KerasFile, detect_architecture, load_keras_weights, read_keras_file

__all__ = ["KerasFile", "detect_architecture", "load_keras_weights", "read_keras_file"]
