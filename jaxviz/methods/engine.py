"""One engine for jobs over an image collection: stream -> jitted step -> mergeable state ->
checkpoint -> merge across processes. ``atlas``, ``evaluate`` and ``concepts`` are jobs on it.

A job is a :class:`Job`: a few pure functions over an explicit state, as an optax transform is
``init`` + ``update``; the engine (:func:`run_job`) owns the life around them, once for every job:

- the collection (:func:`jaxviz.io.collection.open_collection`): this process's contiguous share,
  decoded ahead in fixed-size batches (rows past the share or that failed to decode have
  ``valid`` False; failed items are listed and counted against ``max_failures``);
- the devices: :attr:`Context.mesh` is a one-axis mesh over the local devices; a job's jitted step
  splits the batch over it (:func:`jaxviz.methods.sharding.shard_batch`, ``jax.shard_map``);
- the checkpoint (:mod:`jaxviz.io.jobstate`): the state's arrays (:attr:`Job.to_arrays`), the
  rows kept so far, the pass, the position in the share and the failed items, written atomically every
  ``checkpoint_every`` batches or ``checkpoint_seconds`` seconds, at the end of each pass and on any
  interruption (Ctrl-C, SIGTERM, an error, a dead peer); with ``resume=True`` the job continues from
  there and ends with exactly the uninterrupted result. The checkpoint folder must be a real folder (a
  symbolic link there is refused before any work: checkpoints are written only where they are named);
  a checkpoint that cannot be written (disk full, quota) is one line and leaves the previous one whole.
  A checkpoint written with other settings (the digest of :attr:`Job.settings`, the collection's
  names, the process count) is refused in one line;
- the processes (``jax.distributed``, the CLI's ``--coordinator HOST:PORT --process I/N``): at the end
  of each pass and at the end, every process's arrays are gathered by a collective
  (:func:`jaxviz.methods.sharding.allgather_arrays`, the arrays as ``.npz`` bytes) and merged by
  :attr:`Job.merge` in process order, so every process returns the same result. A gather that fails is
  one :class:`~jaxviz.errors.JaxvizError` line; a peer that stops answering for ``--peer-timeout`` is
  caught by the CLI's watch (:mod:`jaxviz.cli.common`) with one line, except the coordinator itself,
  whose loss the runtime still ends with SIGABRT (docs/long-jobs.md).

The contract of a job (``S`` is any pytree the job likes; never mutate it in place: the engine keeps
the last state that agrees with the position, and that is what an interruption checkpoints)::

    Job(name,                       # file names: NAME-state-IofN in the checkpoint folder
        settings,                   # JSON-able dict: what makes a result (digest(params) for weights)
        init(ctx) -> S,             # the empty state
        update(S, batch, ctx) -> (S, rows | None),  # one batch (a jaxviz.io.collection.Batch)
        to_arrays(S) -> {name: np.ndarray},         # what is checkpointed and merged
        from_arrays(arrays, ctx) -> S,              # the inverse (resume, and after a pass's merge)
        merge(list_of_arrays, ctx) -> arrays,       # every process's arrays -> one (default: sum)
        passes=1,                   # passes over the collection
        end_pass(S, rows, ctx) -> S)                # after each pass (default: the state as is)

``rows`` are per-item outputs a job keeps (a dict of arrays with the same number of rows, e.g. per-
image scores, or the codes of a dictionary when they fit): the engine appends them in order,
checkpoints them, and gathers them in process order. They belong to the current pass: ``end_pass``
receives the pass's rows (this process's; ``ctx.gather`` to see every process's) and the next pass
starts with none; the last pass's are returned. A multi-pass job (streamed NMF: each pass solves the
codes per batch and sums ``Z^T Z``, ``Z^T A``; at the pass's end the sums are reduced over the
processes and the dictionary updated) reduces in ``end_pass`` with ``ctx.gather``::

    def end_pass(state, rows, ctx):
        total = sum_arrays(ctx.gather(to_arrays(state)))   # the same on every process
        return update_dictionary(state, total)

A worked example: the sum of every pixel of a collection, on every device (tests/test_engine.py
runs it; also interrupted by SIGKILL and resumed, and on two simulated devices)::

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import PartitionSpec as P
    >>> from jaxviz.methods import engine
    >>> from jaxviz.methods.sharding import AXIS, shard_batch
    >>> def pixel_sum_job(mesh):
    ...     def local(x, valid):  # per device: its slice's sum, then the sum over the devices
    ...         s = jnp.where(valid[:, None, None, None], x, 0.0).sum()
    ...         return jax.lax.psum(s, AXIS)
    ...     step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=P()))
    ...     def update(state, batch, ctx):
    ...         s = step(*shard_batch(ctx.mesh, batch.pixels, batch.valid))
    ...         return {"sum": state["sum"] + np.float64(s), "n": state["n"] + batch.valid.sum()}, None
    ...     return engine.Job("pixelsum", {"what": "sum of pixels"},
    ...                       init=lambda ctx: {"sum": np.float64(0), "n": np.int64(0)}, update=update,
    ...                       to_arrays=lambda s: {k: np.asarray(v) for k, v in s.items()},
    ...                       from_arrays=lambda a, ctx: {"sum": a["sum"][()], "n": a["n"][()]})
    >>> x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
    >>> out = engine.run_job(pixel_sum_job(engine.local_mesh()), x, shape=(4, 4, 1), batch_size=2)
    >>> float(out.arrays["sum"]), int(out.arrays["n"])
    (496.0, 2)

(each batch's sum is float32 on the devices, accumulated in float64 on the host; the order of the
batches is fixed, so the result does not depend on an interruption.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.io.collection import Batch, Collection, Failure, open_collection
from jaxviz.methods.sharding import allgather_arrays, batch_mesh

ENGINE_VERSION = 1

Arrays = dict  # {name: np.ndarray}


class Context(NamedTuple):
    """What a job's functions may read about the run.

    Attributes:
      mesh: the one-axis mesh (axis ``"batch"``) over this process's devices.
      shard: ``(index, count)``: this process and the process count.
      pass_index: the pass under way (0 ..; ``passes - 1`` in the last).
      collection: the opened collection (``paths``, ``shape``, ``share``).
      gather: ``gather(arrays) -> [arrays of process 0, 1, ...]``, every process's arrays (the same on
        every process; a bounded wait on the peers). Every process must call it the same number of
        times; on one process it returns ``[arrays]``.
    """

    mesh: Any
    shard: tuple[int, int]
    pass_index: int
    collection: Collection
    gather: Callable[[Arrays], list]


def sum_arrays(parts: Sequence[Arrays], ctx: Context | None = None) -> Arrays:
    """The default :attr:`Job.merge`: each array summed over the processes, in process order."""
    return {k: np.stack([np.asarray(p[k]) for p in parts]).sum(0) for k in parts[0]}


def keep_state(state, rows, ctx):
    return state


class Job(NamedTuple):
    """A job over a collection (see the module docstring for the contract of each function)."""

    name: str
    settings: Mapping[str, Any]
    init: Callable[[Context], Any]
    update: Callable[[Any, Batch, Context], tuple[Any, "Mapping[str, np.ndarray] | None"]]
    to_arrays: Callable[[Any], Arrays]
    from_arrays: Callable[[Arrays, Context], Any]
    merge: Callable[[list, Context], Arrays] = sum_arrays
    passes: int = 1
    end_pass: Callable[[Any, Arrays, Context], Any] = keep_state


class Outcome(NamedTuple):
    """What :func:`run_job` returns (the same on every process).

    Attributes:
      arrays: the final state's arrays, merged over the processes (:attr:`Job.merge`).
      rows: the last pass's rows of every process, concatenated in process order (``{}`` if none).
      paths: the collection's items in order.
      failures: items that could not be decoded (every process's, in index order).
      state: this process's final state (before the merge).
    """

    arrays: Arrays
    rows: Arrays
    paths: list[str]
    failures: list[Failure]
    state: Any


def local_mesh(devices: Sequence[jax.Device] | None = None):
    """The mesh over this process's devices (default all local devices)."""
    return batch_mesh(list(devices) if devices is not None else jax.local_devices())


def digest(tree: Any) -> str:
    """A short hash of a pytree's arrays (shapes, dtypes and bytes): the weights in a job's settings."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def settings_digest(job: Job, paths: Sequence[str], shard: tuple[int, int], shape: Sequence[int]) -> str:
    """The digest a checkpoint must carry to be resumed: the job's settings, its name and passes, the
    input shape, the collection's names (every byte) and the process count."""
    names = hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    doc = {"job": job.name, "settings": job.settings, "passes": job.passes, "shape": list(shape),
           "items": len(paths), "names": names, "shard": list(shard), "engine": ENGINE_VERSION}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def checkpoint_path(directory: "str | os.PathLike", job: Job, shard: tuple[int, int]) -> str:
    return os.path.join(os.fspath(directory), f"{job.name}-state-{shard[0]}of{shard[1]}")


class _Rows:
    """Rows kept so far: append-only chunks and the count that agrees with the state (an update
    interrupted after appending is undone by cutting back to it)."""

    def __init__(self, arrays: Arrays | None = None):
        self.chunks: list[Arrays] = [arrays] if arrays else []
        self.n = len(self.chunks)

    def add(self, rows: Mapping[str, np.ndarray]) -> int:
        del self.chunks[self.n:]
        self.chunks.append({k: np.asarray(v) for k, v in rows.items()})
        return len(self.chunks)

    def arrays(self, n: int) -> Arrays:
        parts = self.chunks[:n]
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def run_job(
    job: Job,
    images: Any,
    *,
    shape: Sequence[int],
    batch_size: int,
    devices: Sequence[jax.Device] | None = None,
    checkpoint: "str | os.PathLike | None" = None,
    resume: bool = False,
    checkpoint_every: int = 100,
    checkpoint_seconds: float = 60.0,
    workers: int | None = None,
    max_failures: float = 0.05,
    interpolation: str = "nearest",
    on_batch: Callable[[int, int], None] | None = None,
    what: str = "settings",
    decode_memory: int | None = None,
) -> Outcome:
    """Run ``job`` over the collection ``images`` (see the module docstring).

    Args:
      job: the :class:`Job`.
      images: a collection spec (:func:`jaxviz.io.collection.open_collection`).
      shape: (H, W, C) the images are resized to.
      batch_size: items per batch over all local devices (the job's step splits it over them).
      devices: this process's devices (default all local devices).
      checkpoint: a folder for the resumable state (one ``NAME-state-IofN`` per process);
        ``resume`` continues from it.
      checkpoint_every, checkpoint_seconds: how often the state is written.
      workers, max_failures, interpolation, decode_memory: for the collection reader (decode_memory:
        bytes the decoding threads may hold at once; default 1 GiB, whatever the number of workers).
      on_batch: ``on_batch(items_done, items_total)`` after each batch (over all passes; total -1 for
        an iterable of batches); an exception it raises interrupts the run as Ctrl-C does.
      what: the settings a refused checkpoint names in its message.

    Returns an :class:`Outcome`.
    """
    if int(job.passes) < 1:
        raise JaxvizError(f"passes must be at least 1, got {job.passes}")
    from jaxviz.io.jobstate import CheckpointWriteError, check_folder, exists, load_state, save_state

    mesh = local_mesh(devices)
    shard = (jax.process_index(), jax.process_count())
    if checkpoint is not None:  # before any work: a link there would carry the checkpoints out of --out
        check_folder(checkpoint, checkpoint_path(checkpoint, job, shard))
    opened = dict(batch_size=int(batch_size), shard=shard, workers=workers, max_failures=max_failures,
                  interpolation=interpolation)
    if decode_memory is not None:
        opened["decode_memory"] = int(decode_memory)
    coll = open_collection(images, shape, **opened)
    paths = coll.paths
    counter = [0]

    def gather(arrays: Arrays) -> list:
        counter[0] += 1
        try:
            return allgather_arrays(arrays, f"{job.name}/{counter[0]}")
        except JaxvizError:
            raise
        except Exception as e:  # noqa: BLE001  (the runtime's collectives raise XlaRuntimeError on a lost peer)
            raise JaxvizError(f"process {shard[0]} of {shard[1]}: gathering the results of every process failed "
                              f"({e.__class__.__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); a "
                              "peer was lost: rerun every process with --resume") from None

    def ctx_for(p: int, c: Collection) -> Context:
        return Context(mesh, shard, p, c, gather)

    settings = settings_digest(job, paths, shard, shape)
    ckpt = checkpoint_path(checkpoint, job, shard) if checkpoint is not None else None
    ctx = ctx_for(0, coll)
    state, rows, pass_index, position, failures = job.init(ctx), _Rows(), 0, 0, []
    if ckpt is not None and resume and exists(ckpt):
        z, failures = load_state(ckpt, settings, paths, what)
        try:
            pass_index, position = int(z.pop("engine/pass")), int(z.pop("engine/position"))
            kept = {k[5:]: z.pop(k) for k in list(z) if k.startswith("rows/")}
            state = job.from_arrays(z, ctx_for(pass_index, coll))
        except (KeyError, ValueError, TypeError) as e:
            raise JaxvizError(f"the checkpoint {ckpt} cannot be read ({e.__class__.__name__}); remove it") from None
        rows = _Rows(kept)
    share = coll.share_size
    total = share * job.passes if share >= 0 else -1

    def save(st, n_rows, p, pos, fails):
        if ckpt is not None:
            arrays = {f"engine/{k}": np.array(v) for k, v in (("pass", p), ("position", pos))}
            arrays.update(job.to_arrays(st))
            arrays.update({f"rows/{k}": v for k, v in rows.arrays(n_rows).items()})
            save_state(ckpt, settings, arrays, fails)

    while pass_index < job.passes:
        if pass_index or position:
            coll = open_collection(images, shape, start=position, **opened)
        coll.failures[:] = failures
        ctx = ctx_for(pass_index, coll)
        n_rows = rows.n
        last_save, batches = time.monotonic(), 0
        try:
            for batch in coll:
                new, kept = job.update(state, batch, ctx)
                n_new = rows.add(kept) if kept is not None else n_rows
                # the state, the rows and the position agree again: this is what an interruption saves
                state, n_rows, position = new, n_new, position + int((batch.indices >= 0).sum())
                rows.n = n_rows
                batches += 1
                if on_batch is not None:
                    on_batch(position + pass_index * max(share, 0), total)
                if ckpt is not None and (batches % max(1, checkpoint_every) == 0
                                         or time.monotonic() - last_save >= checkpoint_seconds):
                    save(state, n_rows, pass_index, position, coll.failures)
                    last_save = time.monotonic()
        except CheckpointWriteError:  # the previous checkpoint is whole; another try would fail the same way
            raise
        except BaseException:  # Ctrl-C, SIGTERM (the CLI raises it as KeyboardInterrupt), a crash, a dead peer
            if ckpt is not None:
                save(state, n_rows, pass_index, position, coll.failures)
            raise
        failures = list(coll.failures)
        save(state, n_rows, pass_index, position, failures)  # the pass is read whole
        pass_rows = rows.arrays(n_rows)
        state = job.end_pass(state, pass_rows, ctx)
        pass_index += 1
        if pass_index < job.passes:  # the next pass starts from the reduced state, with no rows
            position, rows, failures = 0, _Rows(), []
            save(state, 0, pass_index, 0, [])
    paths = coll.paths  # an iterable of batches names its items as they are read
    if not paths:
        raise JaxvizError("the collection is empty (images= gave no item): there is nothing to run on")
    arrays = job.to_arrays(state)
    kept = rows.arrays(rows.n)
    if shard[1] > 1:
        docs = gather({"failed": np.array([f.index for f in failures], np.int64),
                       "reasons": np.frombuffer(json.dumps([f.reason for f in failures]).encode(), np.uint8)})
        failures = [Failure(int(i), paths[int(i)], str(r)) for d in docs
                    for i, r in zip(d["failed"], json.loads(d["reasons"].tobytes() or b"[]"))]
        arrays = job.merge(gather(arrays), ctx)
        parts = gather(kept)
        names = sorted(set().union(*parts))
        kept = {k: np.concatenate([p[k] for p in parts if k in p]) for k in names}
    return Outcome(arrays, kept, paths, sorted(failures), state)
