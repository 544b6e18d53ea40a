"""The kinds of layer (``Model.kind``): one vocabulary, and the groups of kinds the library reasons with.

Every model answers ``kind(name)`` with one of :data:`KINDS`; the groups below are the only places a
capability or a graph lists kinds, and :data:`NAME_PATTERNS` is how an adapted Flax module's classes
are given a kind by their name.
"""

from __future__ import annotations

import re

KINDS = {
    "conv": "a convolution (also separable, depthwise and transposed)",
    "pool": "a pooling window over H x W",
    "global_pool": "a pooling over all of H x W (no spatial map after it)",
    "dense": "a fully connected layer",
    "norm": "a normalisation (batch, layer)",
    "act": "an activation",
    "merge": "a layer that combines several inputs (add, concatenate, multiply)",
    "dropout": "a layer that is the identity at inference (dropout, noise)",
    "flatten": "flattening to one axis",
    "reshape": "a reshape",
    "pad": "padding or cropping",
    "resize": "upsampling or resizing",
    "embed": "an embedding",
    "attention": "an attention layer",
    "identity": "a layer that passes its input on unchanged",
    "input_transform": "a fixed transform of the input pixels (rescaling, normalisation, resizing at the input)",
    "block": "a module of modules (an adapted Flax module's submodule with children)",
    "other": "anything else",
}

FEATURE_KINDS = ("conv", "pool", "act", "merge")  # the layers whose spatial maps are shown by default
PASSES_MAP_ON = ("pool", "dropout", "identity")  # at the end of the body they coarsen or repeat the map before
# them: the default CAM layer is the map they read (VGG16's block5_conv3, not block5_pool)
NO_CHANNELS = ("flatten", "dropout", "reshape")  # no channels of their own: nothing to visualise there
FOLLOWS_CONV = ("norm", "act", "merge")  # inside a conv's block after it: a CAM layer reads past them
FLAT_TOP = ("dense", "dropout")  # where a graph's spatial part has ended
NEEDS_SPATIAL_INPUT = ("conv", "pool", "pad", "resize", "global_pool")  # take an H x W x C input only

# Class-name patterns of common Flax (and user) layers -> kinds, checked in order.
NAME_PATTERNS = (
    ("conv", r"conv"), ("pool", r"pool"), ("norm", r"norm"), ("dense", r"dense|linear|einsum"),
    ("dropout", r"dropout"), ("act", r"relu|gelu|silu|swish|sigmoid|tanh|activation|softmax"),
    ("embed", r"embed"), ("attention", r"attention"),
)


def kind_of_class_name(class_name: str, has_children: bool) -> str:
    """The kind of a Flax module by its class name (:data:`NAME_PATTERNS`); else ``block`` for a module
    of modules, ``other`` for a leaf."""
    name = class_name.lower()
    for kind, pattern in NAME_PATTERNS:
        if re.search(pattern, name):
            return kind
    return "block" if has_children else "other"
