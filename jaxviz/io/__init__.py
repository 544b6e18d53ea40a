"""Disk I/O: images, checkpoints, Keras and PyTorch weight files, labels, datasets, and atomic outputs."""

from jaxviz.io.collection import Batch, Collection, Failure, open_collection
from jaxviz.io.models import BUILTIN, PRETRAINED, Loaded, builtin_weights, load_model, pretrained_weights
from jaxviz.io.outputs import output_dir, save_npz, save_png

__all__ = ["BUILTIN", "Batch", "Collection", "Failure", "Loaded", "PRETRAINED", "builtin_weights", "load_model",
           "open_collection", "output_dir", "pretrained_weights", "save_npz", "save_png"]
