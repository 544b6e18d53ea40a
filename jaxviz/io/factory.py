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
            raise JaxvizError(f"model={target!r}: no such file")
        name = "jaxviz_user_" + os.path.splitext(os.path.basename(target))[0]
        spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))  # its own sibling imports
        sys.modules[name] = module  # dataclasses (Linen, Equinox modules) look their module up while defined
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            sys.path.pop(0)
        return module
    return importlib.import_module(target)


def load_factory(spec: str, input_hw: Sequence[int] | None = None, preprocessing: str | None = None):
    """Call the factory named by ``spec`` and adapt what it returns.

    Args:
      spec: ``path/to/file.py:NAME`` or ``package.module:NAME``; ``NAME`` takes no arguments and returns
        one of (each as :func:`jaxviz.adapt` takes it):

        * what :func:`jaxviz.adapt` returns (a :class:`jaxviz.Loaded`): used as it is;
        * a model alone: an ``nnx.Module``, a Hugging Face Flax model or an ``equinox.Module``;
        * ``(module, variables)``: a Linen module and its variables (an Equinox model and its state);
        * ``(module, variables, call_kwargs)``: the same with the keyword arguments of its call, e.g.
          ``{"train": False}`` (``variables`` None for a model that carries its own).

        Mode arguments the call takes and ``call_kwargs`` leaves out get their inference values
        (``train=False``, ``deterministic=True``, ...), said on stderr with the weights' source.
      input_hw: (H, W), needed unless the factory returns an adapted model or a model that knows its
        input size (a Hugging Face model); the channels are found by trying 3, then 1.
      preprocessing: for a model the factory did not adapt (default ``none``).
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
        raise JaxvizError(f"model={spec!r}: importing {target} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise JaxvizError(f"model={spec!r}: {target} has no function {name!r}; its functions: {', '.join(found) or 'none'}")
    try:
        made = factory()
    except Exception as e:
        raise JaxvizError(f"model={spec!r}: the factory raised {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if isinstance(made, Loaded):
        return made
    args = made if isinstance(made, tuple) else (made,)
    if not 1 <= len(args) <= 3:
        raise JaxvizError(f"model={spec!r} returned a tuple of {len(args)}; return a model, (module, variables), "
                          "(module, variables, call_kwargs) or jaxviz.adapt(...)")
    module, variables, call_kwargs = (*args, None, None)[:3]
    kw = dict(preprocessing=preprocessing or "none", name=name, call_kwargs=call_kwargs)
    if not input_hw:
        try:
            return adapt(module, variables, **kw)
        except JaxvizError as e:
            if "needs input_shape" not in str(e):
                raise JaxvizError(f"model={spec!r}: {str(e).splitlines()[0]}") from e
        raise JaxvizError(f"model={spec!r} returned {type(made).__name__} without an input size; give the input size (input_hw=) "
                          "or return jaxviz.adapt(...) from the factory")
    errors = []
    for channels in (3, 1):
        try:
            return adapt(module, variables, input_shape=(*input_hw, channels), **kw)
        except JaxvizError as e:
            errors.append(e)
    raise JaxvizError(f"model={spec!r}: {str(errors[0]).splitlines()[0]}")
