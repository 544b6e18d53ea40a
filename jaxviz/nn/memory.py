"""Size before work: what a forward (and backward) pass will hold, estimated from the shape walk
before anything is compiled or allocated.

A 1.5 KB model file can declare ``UpSampling2D((10000, 10000))`` or a 65536 x 65536 input; run as
is, XLA would try to allocate terabytes and die with a traceback. :func:`check_memory` walks the
model's layer shapes (pure arithmetic, :meth:`Model.shapes`) and refuses, naming the layer, a pass
whose largest activation or whose activations together cannot fit in this machine's memory.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jaxviz.errors import JaxvizError, show
from jaxviz.nn.protocol import Model


def physical_memory() -> int:
    """Bytes of RAM of this machine (16 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(model: Model, input_shape: Sequence[int] | None = None, batch: int = 1, *,
                 limit: int | None = None) -> int:
    """The bytes of float32 activations of one pass of ``batch`` images of ``input_shape`` (default: the
    model's), all layers together (what a gradient keeps); a :class:`JaxvizError` naming the largest
    layer when that exceeds ``limit`` (default: 3/4 of :func:`physical_memory`) or one layer alone
    exceeds half of it."""
    limit = int(0.75 * physical_memory()) if limit is None else int(limit)
    shape = tuple(int(d) for d in (input_shape or model.input_shape))
    sizes = [(name, int(np.prod(s, dtype=np.float64)) * 4.0 * batch) for name, s in model.shapes(shape)]
    sizes.append(("the input", float(np.prod(shape, dtype=np.float64)) * 4.0 * batch))
    name, largest = max(sizes, key=lambda t: t[1])
    total = sum(b for _, b in sizes)
    if largest > limit / 2 or total > limit:
        where = "the input" if name == "the input" else f"layer {show(repr(name), 80)}"
        raise JaxvizError(
            f"{show(model.name)} at {'x'.join(map(str, shape))} with {batch} image(s) needs {_gib(total)} of activations "
            f"({where} alone {_gib(largest)}), more than this machine's {_gib(limit)}; use a smaller input or batch")
    return int(total)
