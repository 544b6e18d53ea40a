"""The shared forward pass of the ascent and the quality measures: the taps an objective reads, from
one run of the model protocol (:meth:`jaxviz.nn.protocol.Model.run`) that stops at the deepest layer
needed, and :func:`model_input`, the pixels the model is fed."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxviz.methods.featurevis.objectives import DIVERSITY, LOGITS, Objective
from jaxviz.nn.preprocess import preprocess
from jaxviz.nn.protocol import Model


def model_input(model: Model, img: jax.Array, input_scale: str | None) -> jax.Array:
    """``input_scale='unit'``: pixels in [0, 1] go through the model's own preprocessing; else as they are."""
    return preprocess(img * 255.0, model.preprocessing) if input_scale == "unit" else img


def taps_runner(model: Model, layer: str, objective: Objective, extra: str | None, single: bool, logits: bool):
    """``run(params, x, index, passthrough) -> taps`` for ``objective`` (and the ``extra`` layer): one
    forward pass that stops at the deepest layer needed. ``single``: the target's tap holds only
    channel ``index``. ``passthrough``: where an image's target tap is blocked (flat and saturated, so
    no gradient gets through its activation), the tap keeps its value but takes its gradient as if the
    activation were the identity (its ``logits=True`` tap is the activation's input; XLA shares the
    common part of the two passes)."""
    names = [layer if n is None else n for n in objective.layers]
    need_out = LOGITS in names
    taps = tuple(dict.fromkeys([n for n in names if n != LOGITS]))

    def run(params, x, index, passthrough=False):
        ch = (layer, index) if single else None
        out = model.run(params, x, taps=taps + ((extra,) if extra and not logits else ()), output=need_out,
                        logits=logits, channel=ch)
        t: dict[Any, jax.Array] = {n: v.astype(jnp.float32) for n, v in out.taps.items()}
        if extra:  # the diversity layer's output, after its activation as lucid's (a pre-activation target
            # reads it in a second pass; XLA computes the common part once)
            t[DIVERSITY] = (out.taps[extra] if not logits else
                            model.run(params, x, taps=(extra,), output=False).taps[extra]).astype(jnp.float32)
        if passthrough and not logits and layer in t:
            pre = model.run(params, x, taps=(layer,), output=False, logits=True, channel=ch).taps[layer]
            post, pre = t[layer], pre.astype(jnp.float32)
            # lucid redirects only where nothing gets through: an image whose tap is flat (every position
            # saturated: ReLU off, ReLU6 at 6) but is not its input (no identity activation) is blocked
            flat = post.reshape(post.shape[0], -1)
            blocked = jnp.all(flat == flat[:, :1], axis=1) & jnp.any(flat != pre.reshape(flat.shape), axis=1)
            through = jax.lax.stop_gradient(post) + pre - jax.lax.stop_gradient(pre)
            t[layer] = jnp.where(jax.lax.stop_gradient(blocked).reshape((-1,) + (1,) * (post.ndim - 1)), through, post)
        if need_out:
            t[LOGITS] = out.logits.astype(jnp.float32)
        if layer in t:
            t[None] = t[layer]
        return t

    return run
