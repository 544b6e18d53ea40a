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


# Items per device and compiled call on CPUs when the caller names no batch size, largest first
# (benchmarks/sweep.py on a 2-core AVX-512 CPU). Filter ascent: one pattern per call is the fastest per
# pattern (its working set stays in the caches; 8 per call was 1.4x slower). Grad-CAM: 4 and more images
# per call are ~8% faster per image than 1 (fc1's 411 MB of weights are read once per call), 2 is slower
# than 1, so a batch is cut into calls of 16, then 4, then single images: no batch size costs more
# per image than one image does. Accelerators take the whole batch in one call.
CPU_CHUNKS = (1,)
CPU_IMAGE_CHUNKS = (16, 4, 1)


def _on_cpu(mesh: Mesh) -> bool:
    return all(d.platform == "cpu" for d in mesh.devices.flat)


def chunk_size(n: int, batch_size: int | None, mesh: Mesh) -> int:
    """Items per compiled call: ``batch_size``, rounded up to a multiple of the device count so every
    device gets an equal slice; without one, all ``n`` on accelerators and ``CPU_CHUNKS[0]`` per
    device on CPUs (the filter ascent's working set)."""
    d = mesh.size
    b = int(batch_size or (min(n, CPU_CHUNKS[0] * d) if _on_cpu(mesh) else n))
    return -(-b // d) * d


def chunks(n: int, batch_size: int | None, mesh: Mesh, cpu_sizes: tuple[int, ...] = CPU_IMAGE_CHUNKS
           ) -> list[tuple[int, int]]:
    """``(start, size)`` of each compiled call over ``n`` items; the call's items are
    ``start .. start + size`` (the last call may be padded past ``n``). With ``batch_size`` or on an
    accelerator, equal calls of :func:`chunk_size`; on CPUs without one, as many calls of each of
    ``cpu_sizes`` (items per device, largest first, ending with 1) as fit, so nothing is padded beyond
    the device count and only these few shapes are ever compiled."""
    if batch_size or not _on_cpu(mesh):
        b = chunk_size(n, batch_size, mesh)
        return [(s, b) for s in range(0, n, b)]
    d, out, start = mesh.size, [], 0
    for size in cpu_sizes:
        while n - start >= size * d or (size == cpu_sizes[-1] and start < n):
            out.append((start, size * d))
            start += size * d
    return out


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


def allgather_rows(a: np.ndarray) -> np.ndarray:
    """Every process's rows of ``a`` (any number each, the same trailing shape and dtype), concatenated
    in process order; the same on every process. One process: ``a`` itself. The rows travel as bytes,
    so 64-bit values stay whole (JAX without x64 would narrow them)."""
    if jax.process_count() == 1:
        return a
    from jax.experimental.multihost_utils import process_allgather

    a = np.ascontiguousarray(a)
    lens = np.asarray(process_allgather(np.array([len(a)], np.int32))).reshape(-1)
    most = max(int(lens.max()), 1)
    pad = np.zeros((most,) + a.shape[1:], a.dtype)
    pad[: len(a)] = a
    raw = np.asarray(process_allgather(pad.reshape(most, -1).view(np.uint8)))
    return np.concatenate([raw[p, : lens[p]].view(a.dtype).reshape((int(lens[p]),) + a.shape[1:])
                           for p in range(len(lens))])


def allgather_json(doc: Any) -> list:
    """Every process's JSON-able ``doc``, in process order (the same on every process)."""
    import json

    if jax.process_count() == 1:
        return [doc]
    mine = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    raw, lens = allgather_rows(mine), allgather_rows(np.array([len(mine)], np.int64))
    ends = np.cumsum(lens)
    return [json.loads(raw[e - n: e].tobytes()) for n, e in zip(lens, ends)]


def allgather_arrays(arrays: dict, tag: str = "") -> list:
    """Every process's ``{name: array}`` (any shapes, any dtypes), in process order, the same on every
    process; one process: ``[arrays]``. The arrays travel as one ``.npz`` of bytes (numpy's format,
    read back without pickles), so every bit stays. ``tag`` names the exchange (every process calls
    this the same number of times, in the same order)."""
    import io

    if jax.process_count() == 1:
        return [dict(arrays)]
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    mine = np.frombuffer(buf.getvalue(), np.uint8)
    raw, lens = allgather_rows(mine), allgather_rows(np.array([len(mine)], np.int64))
    out, end = [], 0
    for p, n in enumerate(lens):
        if p == jax.process_index():
            out.append(dict(arrays))
        else:
            with np.load(io.BytesIO(raw[end:end + int(n)].tobytes()), allow_pickle=False) as z:
                out.append({k: z[k] for k in z.files})
        end += int(n)
    return out
