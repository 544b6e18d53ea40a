"""Networks: layers, the named-step graph (:class:`Sequential`), the model protocol, adapters for
your own Flax modules, and the zoo of registered architectures."""

from jaxviz.nn.graph import Params, Sequential
from jaxviz.nn.zoo import MODELS, get_model

__all__ = ["MODELS", "Params", "Sequential", "get_model"]
