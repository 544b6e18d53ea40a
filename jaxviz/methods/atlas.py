"""What drives each unit across a whole image collection: streamed top-k exemplars per unit.

:func:`top_examples` streams a collection (:mod:`jaxviz.io.collection`) through the model once. One
jitted step per batch taps every requested layer in one :meth:`Model.run`, reduces each unit's map
over space (``max`` as OpenAI Microscope, or ``mean``), and merges the batch into a running top-k per
unit on the devices: the state is ``units x k`` whatever the collection's size. Ties break by the
lower image index (the merge sorts on (value descending, index ascending)), so the result does not
depend on the batch size, the number of devices or processes, or on an interruption.

Every device: the batch is split over all local devices (:func:`jax.shard_map`); each device runs
the model on fixed-size chunks of its slice (``chunk`` images per call, so every image is computed
with the same shapes, and bit for bit the same, whatever the device count), takes its slice's top-k,
and the devices' candidates are gathered and merged inside the jit.

Every host: after ``jax.distributed.initialize()``, each process reads its own contiguous share of
the collection and keeps its own state; the final merge gathers the states of all processes
(:func:`jax.experimental.multihost_utils.process_allgather`). Launch one process per host (or per
group of devices) with the same command, e.g. on one machine::

    jaxviz atlas ... --coordinator localhost:1234 --process 0/2 &
    jaxviz atlas ... --coordinator localhost:1234 --process 1/2

(on several hosts, HOST:PORT is process 0's address; every process names the same ``--out``, and
process 0 writes the files).

The stream, the checkpoints and the merge over processes are the shared engine's
(:mod:`jaxviz.methods.engine`); this module is the job (its step, state and merge).

Resumable: with ``checkpoint=DIR``, the running state, the position in the share and a hash of the
settings (model, weights, layers, units, k, reduce, input size, the collection's names) are written
with orbax (:mod:`jaxviz.io.jobstate`: atomic, one checkpoint per process) every ``checkpoint_every``
batches or ``checkpoint_seconds`` seconds and on an interrupt;
``resume=True`` continues from there and ends with exactly the uninterrupted result.

Per-unit statistics (``mean``, ``fire_rate``) are accumulated on the host in float64 from each batch's
reduced responses (``units`` numbers per image); ``max`` is the top value.

Why one module of ~470 lines: the compiled merge step, the running state, its checkpoint and the
process merge are one data structure's life; the collection reader and receptive fields live apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxviz.errors import JaxvizError
from jaxviz.io.collection import Failure
from jaxviz.methods import engine
from jaxviz.methods.sharding import AXIS, batch_mesh, replicate, shard_batch
from jaxviz.nn.preprocess import preprocess
from jaxviz.nn.protocol import Model, is_spatial, layer_shape
from jaxviz.nn.receptive import RF, field_boxes, receptive_field
from jaxviz.nn.jit import jit

REDUCTIONS = ("max", "mean")
MAX_K = 1000
NO_INDEX = np.iinfo(np.int32).max  # the index of an empty slot: sorts after every image
CPU_CHUNK = 8  # images per model call per device on CPUs (their working set stays in the caches)
ACCEL_CHUNK = 64
STATE_VERSION = 1


class LayerAtlas(NamedTuple):
    """One layer's result (``U`` units, ``k`` exemplars).

    Attributes:
      units: int U, the units (channels) described.
      indices: int64 U x k, the strongest images as indices into :attr:`Atlas.paths`, strongest first
        (ties: the lower index first); -1 where the collection has fewer than k images.
      values: float32 U x k, the unit's reduced response to each (-inf where empty).
      peaks: int32 U x k x 2, (row, column) of the unit's maximum in the layer's grid.
      boxes: int32 U x k x 4, the peak's receptive field in input pixels (top, left, bottom, right;
        bottom/right exclusive, clipped to the image).
      mean: float32 U, the mean reduced response over the collection.
      max: float32 U, the largest reduced response.
      fire_rate: float32 U, the share of images whose reduced response is above 0.
      dead: bool U, units that never fire.
      grid: (rows, columns) of the layer's map ((1, 1) for a non-spatial layer).
      field: the layer's receptive field (:class:`jaxviz.nn.receptive.RF`).
    """

    units: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    peaks: np.ndarray
    boxes: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    fire_rate: np.ndarray
    dead: np.ndarray
    grid: tuple[int, int]
    field: RF

    def _repr_html_(self) -> str:
        from jaxviz.viz.display import html

        return html(self)


class Atlas(NamedTuple):
    """What :func:`top_examples` returns.

    Attributes:
      layers: ``{layer: LayerAtlas}`` in the order asked.
      paths: the collection's items in order (``indices`` point into it).
      failures: items that could not be decoded (they enter no statistic).
      count: images that entered the statistics (all processes).
      input_shape: (H, W, C) the images were resized to.
      reduce: ``max`` or ``mean``.
    """

    layers: dict[str, LayerAtlas]
    paths: list[str]
    failures: list[Failure]
    count: int
    input_shape: tuple[int, int, int]
    reduce: str

    def _repr_html_(self) -> str:
        from jaxviz.viz.display import html

        return html(self)


# -- the merge ---------------------------------------------------------------------------------------
def _best(values: jax.Array, index: jax.Array, peak: jax.Array, k: int):
    """The first ``k`` along the last axis in the order (value descending, index ascending)."""
    _, _, v, i, p = jax.lax.sort((-values, index, values, index, peak), dimension=values.ndim - 1, num_keys=2)
    return v[..., :k], i[..., :k], p[..., :k]


def _candidates(values: jax.Array, index: jax.Array, peak: jax.Array, k: int):
    """A batch's ``k`` best per row, as :func:`_best` orders them, through ``lax.top_k`` (a partial
    selection, several times cheaper than sorting every row): within a batch the index grows with the
    position, and top_k breaks ties by the lower position. NaN counts as -inf here, as in the sort."""
    key = jnp.where(jnp.isnan(values), -jnp.inf, values)
    _, at = jax.lax.top_k(key, k)
    take = lambda a: jnp.take_along_axis(a, at, axis=-1)
    return take(values), take(index), take(peak)


def _first_max(a: jax.Array) -> jax.Array:
    """``argmax`` over axis 1 (the first position of the maximum), as two plain reductions: XLA:CPU
    runs a variadic (value, index) reduction element by element, several times slower than a max and a
    min that it vectorises. A map with NaN reports position 0."""
    top = a.max(1, keepdims=True)
    pos = jax.lax.broadcasted_iota(jnp.int32, a.shape, 1)
    first = jnp.where(a == top, pos, a.shape[1]).min(1)
    return jnp.where(first < a.shape[1], first, 0).astype(jnp.int32)


def merge_states(states: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int):
    """Several ``(values, indices, peaks)`` states (U x k each) merged into one on the host, in the
    same order as on the devices (value descending, index ascending)."""
    v = np.concatenate([s[0] for s in states], -1)
    i = np.concatenate([s[1] for s in states], -1)
    p = np.concatenate([s[2] for s in states], -1)
    order = np.lexsort((i, -v.astype(np.float64)), axis=-1)[..., :k]
    take = lambda a: np.take_along_axis(a, order, -1)
    return take(v), take(i), take(p)


class _Plan(NamedTuple):
    layers: tuple[str, ...]
    units: tuple[tuple[int, ...], ...]
    grids: tuple[tuple[int, int], ...]
    spatial: tuple[bool, ...]


_STEPS: dict = {}  # compiled steps by (model, plan, k, reduce, chunk, devices): a second run does not recompile


def _step_fn(model: Model, plan: _Plan, k: int, reduce: str, chunk: int, mesh) -> Callable:
    """The jitted step: ``(params, state, pixels, indices, valid) -> (state, reduced)`` (cached)."""
    key = (model, plan, k, reduce, chunk, tuple(mesh.devices.flat))
    try:
        return _STEPS[key]
    except TypeError:  # a model that is not hashable: a fresh step
        return _make_step(model, plan, k, reduce, chunk, mesh)
    except KeyError:
        if len(_STEPS) > 16:
            _STEPS.clear()
        _STEPS[key] = step = _make_step(model, plan, k, reduce, chunk, mesh)
        return step


def _make_step(model: Model, plan: _Plan, k: int, reduce: str, chunk: int, mesh) -> Callable:
    mode = model.preprocessing

    def responses(params, x):
        taps = model.run(params, x, taps=plan.layers, output=False).taps
        out = []
        for name, units, spatial in zip(plan.layers, plan.units, plan.spatial):
            a = taps[name]
            a = a.reshape(a.shape[0], -1, a.shape[-1]) if spatial else a[:, None, :]
            if units != tuple(range(a.shape[-1])):
                a = jnp.take(a, jnp.asarray(units), axis=-1)
            a = a.astype(jnp.float32)  # N x positions x U
            out.append((a.max(1) if reduce == "max" else a.mean(1), _first_max(a)))
        return out

    def local(params, state, x, idx, valid):
        b = x.shape[0]
        xs = preprocess(x, mode).reshape((b // chunk, chunk) + x.shape[1:])
        per = jax.lax.map(lambda xc: responses(params, xc), xs)  # fixed-size calls: same bits on any split
        new_state, reduced = [], []
        for (red, pos), (sv, si, sp) in zip(per, state):
            red, pos = red.reshape(b, -1), pos.reshape(b, -1)
            v = jnp.where(valid[:, None], red, -jnp.inf).T  # U x b
            i = jnp.broadcast_to(jnp.where(valid, idx, NO_INDEX)[None], v.shape)
            cv, ci, cp = _candidates(v, i, pos.T, min(k, b))
            # every device's candidates, then the merge with the running state (same on every device)
            gv, gi, gp = (jax.lax.all_gather(a, AXIS, axis=1, tiled=True) for a in (cv, ci, cp))
            new_state.append(_best(jnp.concatenate([sv, gv], 1), jnp.concatenate([si, gi], 1),
                                   jnp.concatenate([sp, gp], 1), k))
            reduced.append(jnp.where(valid[:, None], red, 0.0))
        return new_state, reduced

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS)),
                            out_specs=(P(), P(AXIS)), check_vma=False)
    return jit(sharded)


class _State(NamedTuple):
    """The job's running state: the devices' top-k per layer, the host's statistics (float64 sums,
    int64 fire counts, images counted) and the last batch's reduced responses not yet counted."""

    top: Any
    sums: list
    fires: list
    count: int
    pending: Any


# -- the public function -----------------------------------------------------------------------------
def _plan(model: Model, layers: Sequence[str], units, shape) -> _Plan:
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise JaxvizError("layers is empty: name at least one layer")
    names = tuple(model.resolve(l) for l in layers)
    if len(set(names)) != len(names):
        raise JaxvizError(f"layers names a layer twice: {list(layers)}")
    us, grids, spatial = [], [], []
    for asked, name in zip(layers, names):
        s = layer_shape(model, name, shape)
        if not (is_spatial(s) or len(s) == 1):
            raise JaxvizError(f"layer {asked!r} has output shape {s}; top_examples reads H x W x C or C layers")
        c = s[-1]
        u = units.get(asked, units.get(name)) if isinstance(units, Mapping) else units
        u = tuple(range(c)) if u is None else tuple(int(v) for v in u)
        if not u:
            raise JaxvizError(f"units for {asked!r} is empty")
        bad = [v for v in u if not 0 <= v < c]
        if bad:
            raise JaxvizError(f"unit {bad[0]} out of range for {asked!r}: it has {c} units (0..{c - 1})")
        us.append(u)
        grids.append((s[0], s[1]) if is_spatial(s) else (1, 1))
        spatial.append(is_spatial(s))
    return _Plan(names, tuple(us), tuple(grids), tuple(spatial))


def _default_chunk(devices) -> int:
    return CPU_CHUNK if all(d.platform == "cpu" for d in devices) else ACCEL_CHUNK


def top_examples(
    model: Model,
    params: Any,
    images: Any,
    layers: str | Sequence[str],
    k: int = 9,
    *,
    reduce: str = "max",
    batch_size: int | None = None,
    units: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    input_shape: Sequence[int] | None = None,
    chunk: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = 100,
    checkpoint_seconds: float = 60.0,
    workers: int | None = None,
    max_failures: float = 0.05,
    interpolation: str = "nearest",
    on_batch: Callable[[int, int], None] | None = None,
) -> Atlas:
    """The ``k`` images of a collection that drive each unit of ``layers`` most, and per-unit statistics.

    Args:
      model, params: any model of the protocol and its parameters.
      images: a collection spec (a folder, glob, list of paths, text file of paths, ``.npy``/``.npz``,
        ``digits``, ``fruits``, ``samples``, an N x H x W x C array of pixels 0..255, or an iterable of
        such batches; see :func:`jaxviz.io.collection.open_collection`).
      layers: a layer name or several; each is tapped in the same forward pass.
      k: exemplars per unit, 1..1000.
      reduce: how a unit's map becomes one number per image: ``max`` (the strongest position) or ``mean``.
      batch_size: images per step over all local devices (default: ``chunk`` per device, times
        enough calls to make about 64); rounded up to fill every device's chunks.
      units: the units (channels) to describe: a list for every layer, ``{layer: list}``, or None (all).
      input_shape: (H, W, C) the images are resized to (default: the model's).
      chunk: images per model call per device (default 8 on CPUs, 64 on accelerators); results are
        bit-identical for the same ``chunk`` whatever the device count and batch size.
      devices: this process's devices to use (default all local devices).
      checkpoint: a directory for the resumable state (see the module docstring); ``resume`` continues
        from it (a checkpoint of other settings is refused).
      workers, max_failures, interpolation: for the collection reader.
      on_batch: called as ``on_batch(items_done, items_in_share)`` after each batch (progress;
        ``items_in_share`` is -1 for an iterable of batches). An exception it raises interrupts the
        run as Ctrl-C does (the checkpoint is written first).

    Returns an :class:`Atlas`. Several processes (``jax.distributed``) each read their share and
    return the same merged result.
    """
    if reduce not in REDUCTIONS:
        raise JaxvizError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    if not 1 <= int(k) <= MAX_K:
        raise JaxvizError(f"k must be 1..{MAX_K}, got {k}")
    k = int(k)
    shape = tuple(int(v) for v in (input_shape or model.input_shape))
    model.check_input((1,) + shape)
    plan = _plan(model, layers, units, shape)
    devices = list(devices) if devices is not None else jax.local_devices()
    mesh = batch_mesh(devices)
    d = mesh.size
    chunk = int(chunk or _default_chunk(devices))
    if not 1 <= chunk <= 65536:
        raise JaxvizError(f"chunk must be 1..65536, got {chunk}")
    per_device = -(-int(batch_size) // d) if batch_size else max(1, 64 // (chunk * d)) * chunk
    if batch_size is not None and not 1 <= int(batch_size) <= 65536:
        raise JaxvizError(f"batch_size must be 1..65536, got {batch_size}")
    per_device = -(-per_device // chunk) * chunk
    shard = (jax.process_index(), jax.process_count())
    step = _step_fn(model, plan, k, reduce, chunk, mesh)
    rep_params = replicate(mesh, params)

    def account(st: _State) -> _State:
        """The pending batch's reduced responses added to the statistics (on the host, float64)."""
        if st.pending is None:
            return st
        reduced, valid = st.pending
        sums, fires = list(st.sums), list(st.fires)
        for n, r in enumerate(reduced):
            r = np.asarray(r)[valid]
            sums[n] = sums[n] + r.astype(np.float64).sum(0)
            fires[n] = fires[n] + (r > 0).sum(0)
        return _State(st.top, sums, fires, st.count + int(valid.sum()), None)

    def init(ctx) -> _State:
        top = [(np.full((len(u), k), -np.inf, np.float32), np.full((len(u), k), NO_INDEX, np.int32),
                np.zeros((len(u), k), np.int32)) for u in plan.units]
        return _State(replicate(mesh, [tuple(jnp.asarray(a) for a in s) for s in top]),
                      [np.zeros(len(u), np.float64) for u in plan.units],
                      [np.zeros(len(u), np.int64) for u in plan.units], 0, None)

    def update(st: _State, batch, ctx):
        idx = np.where(batch.valid, batch.indices, NO_INDEX).astype(np.int32)
        x, i, v = shard_batch(mesh, batch.pixels, idx, batch.valid)
        top, reduced = step(rep_params, st.top, x, i, v)
        # the previous batch's responses are read after this step is queued: the device stays busy
        st = account(st)
        return _State(top, st.sums, st.fires, st.count, (reduced, batch.valid)), None

    def to_arrays(st: _State) -> dict:
        st = account(st)
        arrays = {"count": np.array(st.count)}
        for n, (v, i, p) in enumerate(st.top):
            arrays[f"{n}/values"], arrays[f"{n}/indices"], arrays[f"{n}/peaks"] = (np.asarray(a) for a in (v, i, p))
            arrays[f"{n}/sums"], arrays[f"{n}/fires"] = st.sums[n], st.fires[n]
        return arrays

    def from_arrays(z, ctx) -> _State:
        top = [tuple(z[f"{n}/{a}"] for a in ("values", "indices", "peaks")) for n in range(len(plan.layers))]
        return _State(replicate(mesh, [tuple(jnp.asarray(a) for a in s) for s in top]),
                      [z[f"{n}/sums"] for n in range(len(plan.layers))],
                      [z[f"{n}/fires"] for n in range(len(plan.layers))], int(z["count"]), None)

    def merge(parts, ctx) -> dict:
        """Every process's state: the top-k merged, the statistics summed in process order."""
        out = {"count": np.array(sum(int(p["count"]) for p in parts))}
        for n in range(len(plan.layers)):
            get = lambda name: [p[f"{n}/{name}"] for p in parts]  # noqa: B023
            (out[f"{n}/values"], out[f"{n}/indices"], out[f"{n}/peaks"]) = merge_states(
                list(zip(get("values"), get("indices"), get("peaks"))), k)
            out[f"{n}/sums"] = np.stack(get("sums")).sum(0)
            out[f"{n}/fires"] = np.stack(get("fires")).sum(0)
        return out

    job = engine.Job("atlas", {"model": model.name, "preprocessing": model.preprocessing,
                               "params": engine.digest(params), "layers": plan.layers, "units": plan.units, "k": k,
                               "reduce": reduce, "chunk": chunk, "version": STATE_VERSION},
                     init=init, update=update, to_arrays=to_arrays, from_arrays=from_arrays, merge=merge)
    res = engine.run_job(job, images, shape=shape, batch_size=per_device * d, devices=devices, checkpoint=checkpoint,
                         resume=resume, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                         workers=workers, max_failures=max_failures, interpolation=interpolation, on_batch=on_batch,
                         what="model, weights, layers, units, k, reduce, input size, images or processes")
    z, paths, failures = res.arrays, res.paths, res.failures
    count = int(z["count"])
    state = [tuple(z[f"{n}/{a}"] for a in ("values", "indices", "peaks")) for n in range(len(plan.layers))]
    sums = [z[f"{n}/sums"] for n in range(len(plan.layers))]
    fires = [z[f"{n}/fires"] for n in range(len(plan.layers))]
    out = {}
    asked_names = [layers] if isinstance(layers, str) else layers
    for (name, shown, grid), (v, i, p), s, f, asked in zip(zip(plan.layers, plan.units, plan.grids), state, sums,
                                                           fires, asked_names):
        rf = receptive_field(model, name, shape, params=params)
        peaks = np.stack([p // grid[1], p % grid[1]], -1).astype(np.int32)
        empty = i == NO_INDEX
        peaks[empty] = 0
        boxes = field_boxes(rf, peaks, shape[:2])
        boxes[empty] = 0
        n = max(count, 1)
        out[asked] = LayerAtlas(
            units=np.asarray(shown, np.int64), indices=np.where(empty, -1, i).astype(np.int64), values=v,
            peaks=peaks, boxes=boxes, mean=(s / n).astype(np.float32),
            max=(v[:, 0] if count else np.zeros(len(shown), np.float32)).astype(np.float32),
            fire_rate=(f / n).astype(np.float32), dead=f == 0, grid=grid, field=rf)
    return Atlas(out, paths, sorted(failures), count, shape, reduce)

