"""Guided ReLUs for the traces that ask for them, and for no one else.

A user's Flax module applies its ReLUs by looking them up as it runs: ``jax.nn.relu(x)``,
``nnx.relu(x)``, ``nn.relu(x)`` (all three are the same function, and so are the ``relu6``s). To trace
such a module with guided ReLUs (guided backprop) jaxviz must change what those lookups return, but
only for the trace that asked, never for another thread (a notebook's background job, a server).

What is done: once per process, :func:`install` gives the modules ``jax.nn``, ``flax.nnx`` and
``flax.linen`` a subclass of ``types.ModuleType`` whose attribute lookup, for ``relu`` and ``relu6``
only, consults a :class:`contextvars.ContextVar`. Nothing else changes: the modules' dictionaries hold
the very same objects, and a lookup made outside :func:`guided_relus` — in any other thread, or in
this thread outside the ``with`` block — returns exactly the original function (``jax.nn.relu is``
the original is always true there). Inside ``with guided_relus():`` (which :class:`jaxviz.nn.policy.Guided`
enters around one ``run``), the lookups made by that thread return
:func:`jaxviz.nn.layers.guided_relu` / :func:`~jaxviz.nn.layers.guided_relu6`. A context variable is
per thread (and per asyncio task), so concurrent guided and plain traces do not see each other.

Limits: a name bound at import (``from jax.nn import relu``) is not a lookup and is never guided; a
``jax.jit``-compiled function inside the user's module that was traced outside a guided run keeps its
plain ReLUs (its compiled trace is reused). Graph models (:class:`jaxviz.nn.graph.Sequential`) do not
need any of this: they swap their activation layers (their ``guided_hint``).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import types
from typing import Iterator

_GUIDED: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxviz_guided_relus", default=False)
_INSTALL_LOCK = threading.Lock()
MODULES = ("jax.nn", "flax.nnx", "flax.linen")  # where a module looks its ReLUs up


def _replacements() -> dict[str, object]:
    from jaxviz.nn.layers import guided_relu, guided_relu6

    return {"relu": guided_relu, "relu6": guided_relu6}


class _GuidedLookup(types.ModuleType):
    """A module whose ``relu``/``relu6`` are the guided ones inside :func:`guided_relus`, and its own elsewhere."""

    def __getattribute__(self, name: str):
        if name in ("relu", "relu6") and _GUIDED.get():
            return _replacements()[name]
        return super().__getattribute__(name)


def install() -> None:
    """Give :data:`MODULES` the context-gated lookup (idempotent, thread-safe; see the module docstring)."""
    import flax.linen  # noqa: F401 (the modules must exist before their lookup is changed)
    import flax.nnx  # noqa: F401
    import jax.nn  # noqa: F401

    with _INSTALL_LOCK:
        for name in MODULES:
            mod = sys.modules[name]
            if not isinstance(mod, _GuidedLookup) and type(mod) is types.ModuleType:
                mod.__class__ = _GuidedLookup


@contextlib.contextmanager
def guided_relus() -> Iterator[None]:
    """Inside the block, this thread's (and this task's) lookups of ``relu``/``relu6`` in ``jax.nn``,
    ``flax.nnx`` and ``flax.linen`` give the guided versions; nowhere else do they."""
    install()
    token = _GUIDED.set(True)
    try:
        yield
    finally:
        _GUIDED.reset(token)


def active() -> bool:
    """Whether this thread is inside :func:`guided_relus`."""
    return _GUIDED.get()
