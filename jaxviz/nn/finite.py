"""The one finite check (NaN and Inf) of jaxviz: weights, images, settings and measures all use it."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from jaxviz.errors import JaxvizError


def all_finite(a: Any) -> bool:
    """Whether every entry of the array ``a`` is finite (no NaN, no +-Inf); True for an empty array."""
    return bool(np.all(np.isfinite(np.asarray(a))))


def finite_entries(a: Any) -> np.ndarray:
    """The boolean mask of ``a``'s finite entries."""
    return np.isfinite(np.asarray(a))


def is_finite_number(v: Any) -> bool:
    """Whether ``v`` is a finite real number (``bool`` is not a number here)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def require_finite(a: Any, message: str) -> None:
    """Raise :class:`~jaxviz.errors.JaxvizError` with ``message`` unless every entry of ``a`` is finite."""
    if not all_finite(a):
        raise JaxvizError(message)
