"""Spreading a batch axis (filters, images, classes) over devices with ``jax.sharding``.

jaxviz's batched computations are ``jax.jit(jax.vmap(...))`` over one leading axis; given inputs laid
out by :func:`shard_batch` on a one-axis :class:`~jax.sharding.Mesh`, XLA's SPMD partitioner runs each
device's slice of the batch on that device, with the parameters replicated. Nothing else changes: the
same compiled function, the same per-item keys, so results equal the single-device run.

On several hosts, call ``jax.distributed.initialize()`` first (see the README); ``jax.devices()`` then
lists every host's devices and the same code spreads the batch over all of them.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (axis ``"batch"``) over ``devices`` (default: all of ``jax.devices()``)."""
    return Mesh(np.asarray(list(devices) if devices is not None else jax.devices()), (AXIS,))


def chunk_size(n: int, batch_size: int | None, mesh: Mesh) -> int:
    """Items per compiled call: ``batch_size`` (default all ``n``) rounded up to a multiple of the
    device count, so every device gets an equal slice."""
    d = mesh.size
    b = int(batch_size or n)
    return -(-b // d) * d


def shard_batch(mesh: Mesh, *arrays: Any) -> tuple:
    """Place each array (or key array) with its leading axis split over the mesh."""
    s = NamedSharding(mesh, P(AXIS))
    return tuple(jax.device_put(a, s) for a in arrays)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place a pytree (the parameters) whole on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def pad_to(a: Any, size: int) -> Any:
    """``a`` (numpy, jax or key array) padded along axis 0 to ``size`` by repeating its last item; the
    results of the padding are dropped by the caller."""
    if len(a) == size:
        return a
    xp = jnp if isinstance(a, jax.Array) else np
    return xp.concatenate([a, xp.repeat(a[-1:], size - len(a), axis=0)])


def gather(a: jax.Array) -> np.ndarray:
    """A sharded result as one numpy array on this host (on several hosts, gathered from all of them)."""
    if getattr(a, "is_fully_addressable", True):
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
