"""The one ``jit`` of jaxviz: :func:`jax.jit` with the XLA options that suit the computation.

On CPUs, XLA hands convolutions to YNNPACK by default. Measured on this 2-core Zen 4 (jaxlib 0.10.2,
2026-12-02, the best of 5 calls; forward / input gradient), default vs XLA's own convolutions with
YNNPACK kept for matrix products (``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``):

=====================  ===========================  ===========================
model (batch)          forward, ms                  gradient, ms
=====================  ===========================  ===========================
VGG16 (4)              723 -> 582                   1,401 -> 1,232
EfficientNet-Lite0 (8) 113 -> 67                    422 -> 380
Xception (2)           290 -> 190                   797 -> 605
cats_dogs_small (16)   67 -> 64                     222 -> 151
digits_cnn (256)       **14 -> 20**                 81 -> 57
=====================  ===========================  ===========================

So a computation compiles with ``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`` unless every convolution in it
has at most 64 output channels (the small CNNs, where YNNPACK's convolutions win the forward pass that
``top_examples`` streams): decided from the traced program on the first call, set per compilation,
never through the process's ``XLA_FLAGS``. A user who sets ``--xla_cpu_experimental_ynn_fusion_type``
in ``XLA_FLAGS`` keeps exactly that; a jaxlib that does not know the option compiles with its defaults.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax

_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


@functools.cache
def compiler_options() -> dict[str, Any] | None:
    """The per-compilation XLA options jaxviz uses (None: the defaults)."""
    if _OPTION in os.environ.get("XLA_FLAGS", ""):
        return None  # the user chose
    options = {_OPTION: _VALUE}
    try:  # a jaxlib without the option (or without YNNPACK) refuses it at compile time: find out once
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # noqa: BLE001 - any refusal means: compile with the defaults
        return None
    return options


SMALL_CONV = 64  # output channels: programs whose convolutions are all this small keep XLA's defaults


def _convolution_widths(jaxpr) -> list[int]:
    """The output channels of every convolution in a (closed) jaxpr and the jaxprs nested in it (jit,
    scan, cond, shard_map, custom rules)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    widths = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out = eqn.params["dimension_numbers"].out_spec[1]  # the feature axis of the output
            widths.append(int(eqn.outvars[0].aval.shape[out]))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    widths += _convolution_widths(sub)
    return widths


def _wants_options(jaxpr) -> bool:
    widths = _convolution_widths(jaxpr)
    return not widths or max(widths) > SMALL_CONV


def jit(fn: Callable | None = None, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)``, compiled with :func:`compiler_options` unless its program's
    convolutions are all small (see the module docstring; decided once, on the first top-level call).
    Called inside another trace (jaxviz's own steps, or a user's ``jax.jit``), where XLA options cannot
    be set, it is the plain ``jax.jit``. Also a decorator factory: ``jit(**kwargs)``."""
    if fn is None:
        return lambda f: jit(f, **kwargs)
    plain = jax.jit(fn, **kwargs)
    options = compiler_options()
    if options is None or "compiler_options" in kwargs:
        return plain
    tuned = jax.jit(fn, compiler_options=options, **kwargs)
    chosen: list = []

    def pick(args, kw):
        if not chosen:
            chosen.append(tuned if _wants_options(plain.trace(*args, **kw).jaxpr) else plain)
        return chosen[0]

    @functools.wraps(fn)
    def call(*args, **kw):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kw))):
            return plain(*args, **kw)
        return pick(args, kw)(*args, **kw)

    call.lower = lambda *args, **kw: pick(args, kw).lower(*args, **kw)  # as jax.jit's result offers
    return call
