"""jaxviz: what convnets learn, in JAX/Flax.

Public API (pure functions over pytrees; only :mod:`jaxviz.io`, :mod:`jaxviz.viz.plotting` and the CLI
touch disk or matplotlib).
"""

from jaxviz.errors import JaxvizError
from jaxviz.io.images import load_image, sample_image
from jaxviz.io import Loaded, load_model
from jaxviz.io.labels import decode_predictions, imagenet_classes
from jaxviz.nn import MODELS, Sequential, get_model
from jaxviz.nn.preprocess import deprocess, preprocess

__version__ = "0.1.0"

__all__ = [
    "JaxvizError", "Loaded", "MODELS", "Sequential", "decode_predictions", "deprocess", "get_model",
    "imagenet_classes", "load_image", "load_model", "preprocess", "sample_image",
]
