"""``--model FILE.py:FACTORY`` / ``package.module:FACTORY``: your own Flax model from your own code.

Importing the file runs it — it is the user's own code, named on the command line, so this is
expected (unlike weight files, which never run code).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Sequence

from jaxviz.errors import JaxvizError


def is_factory_spec(spec: str | None) -> bool:
    """``FILE.py:NAME`` or ``package.module:NAME`` (a zoo name has no colon)."""
    return bool(spec) and ":" in spec and not spec.startswith(("builtin:", "sample:"))


def _import(target: str) -> Any:
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise JaxvizError(f"--model {target}: no such file")
        name = "jaxviz_user_" + os.path.splitext(os.path.basename(target))[0]
        spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))  # its own sibling imports
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
        return module
    return importlib.import_module(target)


def load_factory(spec: str, input_hw: Sequence[int] | None = None, preprocessing: str | None = None):
    """Call the factory named by ``spec`` and adapt what it returns.

    Args:
      spec: ``path/to/file.py:NAME`` or ``package.module:NAME``; ``NAME`` takes no arguments and
        returns an ``nnx.Module``, a ``(linen_module, variables)`` pair, or what :func:`jaxviz.adapt`
        returns.
      input_hw: (H, W), needed when the factory returns a bare module (the channels are found by trying
        3, then 1).
      preprocessing: for a bare module (default ``none``).
    Returns:
      A :class:`jaxviz.Loaded`.
    """
    from jaxviz.nn.protocol import Loaded
    from jaxviz.nn.adapters import adapt

    target, _, name = spec.rpartition(":")
    try:
        module = _import(target)
    except JaxvizError:
        raise
    except Exception as e:
        raise JaxvizError(f"--model {spec}: importing {target} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise JaxvizError(f"--model {spec}: {target} has no function {name!r}; its functions: {', '.join(found) or 'none'}")
    try:
        made = factory()
    except Exception as e:
        raise JaxvizError(f"--model {spec}: the factory raised {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if isinstance(made, Loaded):
        return made
    args = made if isinstance(made, tuple) else (made,)  # (linen_module, variables) or a module
    if not input_hw:
        raise JaxvizError(f"--model {spec} returned {type(made).__name__} without an input size; pass --input HxW "
                          "(or return jaxviz.adapt(...) from the factory)")
    errors = []
    for channels in (3, 1):
        try:
            return adapt(*args, input_shape=(*input_hw, channels), preprocessing=preprocessing or "none", name=name)
        except (JaxvizError, TypeError) as e:
            errors.append(e)
    raise JaxvizError(f"--model {spec}: {str(errors[0]).splitlines()[0]}")
