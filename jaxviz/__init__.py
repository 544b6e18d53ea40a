"""jaxviz: what convnets learn, in JAX/Flax.

Public API (pure functions over pytrees; only :mod:`jaxviz.io`, :mod:`jaxviz.plotting` and the CLI
touch disk or matplotlib).
"""

from jaxviz.errors import JaxvizError
from jaxviz.images import load_image, sample_image
from jaxviz.io import Loaded, load_model
from jaxviz.labels import decode_predictions, imagenet_classes
from jaxviz.models import MODELS, Sequential, get_model
from jaxviz.preprocess import deprocess, preprocess

__version__ = "0.1.0"

__all__ = [
    "JaxvizError", "Loaded", "MODELS", "Sequential", "decode_predictions", "deprocess", "get_model",
    "imagenet_classes", "load_image", "load_model", "preprocess", "sample_image",
]
