"""Intermediate activations: every requested layer of a batch in one jitted forward pass."""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from jaxviz.nn import Sequential
from jaxviz.viz.render import activation_grid


def default_layers(model: Sequential) -> list[str]:
    """Every conv and pool layer, in order (the seeds' ``model.layers[:8]`` for the small CNNs)."""
    return model.names_of_kind("conv", "pool")


def activations(
    model: Sequential, params: Mapping, x: jax.Array, layers: Sequence[str] | None = None
) -> dict[str, jax.Array]:
    """``{layer: activation (N, H, W, C)}`` for ``layers`` (default: every conv and pool layer).

    One jitted pass that stops at the deepest requested layer; the compiled function is cached on
    the model, so a second call with the same shapes does not recompile.
    """
    names = tuple(layers) if layers is not None else tuple(default_layers(model))
    for n in names:
        model.index(n)  # unknown names fail here, listing the valid ones
    model.check_input(np.shape(x))
    out = model.jit_tap(params, x, names)
    return {n: out[n] for n in names}  # jit returns dicts with sorted keys; keep the layer order


def layer_summary(acts: Mapping[str, np.ndarray], images_per_row: int = 16) -> list[dict]:
    """Per layer of the first image: shape, dead channels (zero variance) and the rendered grid."""
    out = []
    for name, a in acts.items():
        a = np.asarray(a)[0]
        if a.ndim != 3:
            out.append({"layer": name, "shape": a.shape, "dead": 0, "channels": int(a.shape[-1]), "grid": None})
            continue
        grid = activation_grid(a, images_per_row)
        out.append({"layer": name, "shape": a.shape, "dead": grid.dead, "channels": int(a.shape[-1]), "grid": grid.image})
    return out
