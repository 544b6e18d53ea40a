"""jaxviz: what convnets learn, in JAX/Flax.

Public API: pure functions over pytrees that take any model of the model protocol
(:class:`jaxviz.Model`): a zoo architecture (:func:`get_model`, :func:`load_model`), a Keras file
(:func:`load_model`), or your own JAX model — Flax NNX or Linen, a Hugging Face Flax model,
Equinox (:func:`adapt`). Only :mod:`jaxviz.io`,
:mod:`jaxviz.viz` and the CLI touch disk or matplotlib.

Layout: ``jaxviz.nn`` (layers, the graph, the protocol, adapters, the zoo), ``jaxviz.methods``
(activations, feature visualisation, attribution, weight statistics), ``jaxviz.io`` (images,
checkpoints, weight files), ``jaxviz.viz`` (everything that draws), ``jaxviz.cli`` (one module per
subcommand).
"""

from jaxviz.errors import JaxvizError
from jaxviz.io.images import load_image, sample_image
from jaxviz.io.labels import decode_predictions, imagenet_classes
from jaxviz.io.models import Loaded, load_model
from jaxviz.methods.activations import activations
from jaxviz.methods.atlas import Atlas, LayerAtlas, top_examples
from jaxviz.methods.attribution import Cams, explain
from jaxviz.methods.compiles import count_compilations
from jaxviz.methods.evaluate import Evaluation, evaluate
from jaxviz.methods.features import Patterns, Recipe, filter_patterns, get_recipe
from jaxviz.methods.metrics import Definitions, faithfulness
from jaxviz.methods.weights import layer_weights
from jaxviz.nn import MODELS, Sequential, get_model
from jaxviz.nn.adapters import adapt
from jaxviz.nn.preprocess import deprocess, preprocess
from jaxviz.nn.protocol import Forward, Model
from jaxviz.nn.receptive import RF, field_box, field_boxes, receptive_field
from jaxviz.viz.display import show

__version__ = "0.1.0"

__all__ = [
    "Atlas", "Cams", "Definitions", "Evaluation", "Forward", "JaxvizError", "LayerAtlas", "Loaded", "MODELS", "Model", "Patterns", "RF", "Recipe",
    "Sequential", "activations", "adapt", "count_compilations", "decode_predictions", "deprocess", "evaluate", "explain", "faithfulness",
    "field_box", "field_boxes", "filter_patterns", "get_model", "get_recipe", "imagenet_classes", "layer_weights",
    "load_image", "load_model", "preprocess", "receptive_field", "sample_image", "show", "top_examples",
]
