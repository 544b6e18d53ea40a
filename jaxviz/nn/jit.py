"""The one ``jit`` of jaxviz: :func:`jax.jit` with the XLA options that suit the machine.

On CPUs, XLA hands convolutions to YNNPACK by default. Measured on a 2-core Zen 4 (jaxlib 0.10.2,
2026-12-02, ``/tmp/ynn_probe.py`` in the closing note of that day): for networks of depthwise and
grouped convolutions YNNPACK's convolutions are the slow path — EfficientNet-Lite0's forward pass at
224 took 120 ms for 8 images with them and 73 ms with XLA's own, Xception's 285 vs 176 ms for 2,
the atlas over Lite0 went from 81 to 112 images/s — while dense convolutions gain nothing from them
(VGG16's forward 669 vs 712 ms for 4, within the noise of the run). So every jaxviz computation
compiles with YNNPACK for matrix products only (``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``), per
compilation, never through the process's ``XLA_FLAGS``. A user who sets
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` keeps exactly that; a jaxlib that does not
know the option compiles with its defaults.
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


def jit(fn: Callable | None = None, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` compiled with :func:`compiler_options` when it is called at the top
    level; called inside another trace (jaxviz's own steps, or a user's ``jax.jit``), where XLA options
    cannot be set, it is the plain ``jax.jit``. Also a decorator factory: ``jit(**kwargs)``."""
    if fn is None:
        return lambda f: jit(f, **kwargs)
    plain = jax.jit(fn, **kwargs)
    options = compiler_options()
    if options is None or "compiler_options" in kwargs:
        return plain
    tuned = jax.jit(fn, compiler_options=options, **kwargs)

    @functools.wraps(fn)
    def call(*args, **kw):
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kw)))
        return (plain if traced else tuned)(*args, **kw)

    call.lower = tuned.lower  # what jax.jit's result offers and callers use
    return call
