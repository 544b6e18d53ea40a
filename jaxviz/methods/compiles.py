"""Counting XLA compilations, so a caller (or a test) can check that a repeated call reuses its
compiled function."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax.monitoring

_EVENT = "/jax/core/compile/backend_compile_duration"


class Compilations:
    """How many XLA compilations happened inside :func:`count_compilations` (``.count``)."""

    count: int = 0


@contextlib.contextmanager
def count_compilations() -> Iterator[Compilations]:
    """``with count_compilations() as c: ...`` then ``c.count`` is the number of backend compilations
    (of any jitted function) inside the block."""
    seen = Compilations()

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _EVENT:
            seen.count += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
