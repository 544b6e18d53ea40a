"""Which explanation to trust on your model and data: attribution methods ranked by faithfulness
metrics over a whole image collection.

:func:`evaluate` streams a collection (:mod:`jaxviz.io.collection`) once. For each batch and each
method, one jitted step (the same shapes for every batch, so one compilation per method whatever the
collection's size) preprocesses the pixels, explains each image's top-1 class with the method
(:func:`jaxviz.methods.attribution.compiled_explain`), resizes the map to the input and computes every
asked metric (:func:`jaxviz.methods.metrics.scores`); the batch is split over all local devices
(:func:`jax.shard_map`). A *random map* (uniform noise on a coarse grid,
:attr:`~jaxviz.methods.metrics.Definitions.random_grid`, resized like a layer map: see there why not
per pixel; image i's from ``fold_in(key, i)``) is scored by the same metrics as the baseline every
method must beat. The ``randomization`` metric re-runs the method on one re-initialised model (the
same fresh weights for every image; :func:`jaxviz.methods.attribution.randomization_check`, outside
the jitted step); a random map does not depend on the weights, so its baseline score is 1 by construction.

Keys: from ``key`` three are split (the methods' noise, the metrics' noise, the random maps); image i
always gets ``fold_in(that key, i)``, so scores do not depend on the batch size, the devices or an
interruption.

The leaderboard: for each method (and ``random``) and metric, the mean over the images that have a
score (the pointing game counts only images with a region), the 95% interval of the mean by the
percentile bootstrap (:data:`BOOTSTRAP` = 1000 resamples of the images drawn with
``numpy.random.default_rng(0)``: the same interval for the same scores), ``n``, and ``beats_random``:
the share of images on which the method's score is strictly better than the random map's (in the
metric's direction).

The streamed loop, its checkpoints and the merge over processes are the shared engine's
(:mod:`jaxviz.methods.engine`); this module is the job: a step per batch (per-image scores kept as the
engine's rows) and the curve sums (the state).

Resumable: with ``checkpoint=DIR``, the scores so far, the curve sums, the position and a hash of the
settings (model, weights, methods, metrics, definitions, settings, key, input size, the collection's
names) are written with orbax (:mod:`jaxviz.io.jobstate`, atomic, one checkpoint per process) every
``checkpoint_every`` batches or ``checkpoint_seconds`` seconds and on an interrupt; ``resume=True``
continues from there and ends with exactly the uninterrupted result.

Every host: after ``jax.distributed.initialize()`` (the CLI's ``--coordinator HOST:PORT --process
I/N``), each process reads its own contiguous share of the collection on its local devices; the final
merge gathers every process's per-image scores, classes, curve sums and failures, so every process
returns the whole result. Per-image scores are those of one process (the same compiled step, the same
per-image keys); the mean curves are summed over the processes' shares in process order.

Why one module of ~420 lines: the streamed loop, its resumable state and the leaderboard statistics
share one settings hash and one state layout; split, a resume could pair a state with another reader.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxviz.errors import JaxvizError
from jaxviz.io.collection import Failure, open_collection
from jaxviz.methods import engine
from jaxviz.methods import metrics as M
from jaxviz.methods.attribution import METHODS, Settings, check_classifier, compiled_explain, method_record
from jaxviz.methods.sharding import AXIS, batch_mesh, replicate, shard_batch
from jaxviz.nn.preprocess import preprocess
from jaxviz.nn.protocol import Model
from jaxviz.nn.jit import jit

RANDOM = "random"
BOOTSTRAP = 1000
STATE_VERSION = 1
CPU_BATCH = 2  # images per device and step on CPUs: each image is ~230 perturbed copies through the model
ACCEL_BATCH = 16


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns.

    Attributes:
      paths: the collection's items in order.
      classes: int64 N, the explained (top-1) class of each image (-1 where it failed to decode).
      scores: ``{method: {metric: float32 N}}`` per-image scores, the random-map baseline under
        ``"random"``; NaN where an image failed to decode (or, for the pointing game, has no region).
      curves: ``{method: {"deletion" | "insertion": float64 S + 1}}``, the mean curves over the images.
      leaderboard: one record per (method, metric): ``method, metric, higher_is_better, mean, low, high,
        n, beats_random`` (None for the random map itself).
      failures: items that could not be decoded.
      definitions: the metrics' settings used.
    """

    paths: list[str]
    classes: np.ndarray
    scores: dict[str, dict[str, np.ndarray]]
    curves: dict[str, dict[str, np.ndarray]]
    leaderboard: list[dict]
    failures: list[Failure]
    definitions: M.Definitions

    def _repr_html_(self) -> str:
        from jaxviz.viz.display import html

        return html(self)


# -- the jitted steps ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _method_step(model, method, layer, settings, names, d, shape, mesh, regions) -> Callable:
    explain = compiled_explain(model, shape, method, layer, "logit", settings, top1=True)

    def local(params, pixels, mkeys, skeys, reg):
        x = preprocess(pixels, model.preprocessing)
        maps, _, cls = explain(params, x, jnp.zeros((x.shape[0], 1), jnp.int32), mkeys)
        out = M.scores(model, params, pixels, maps[:, 0], cls[:, 0], skeys, reg if regions else None, names, d)
        return out, cls[:, 0]

    return _sharded(local, mesh)


@functools.lru_cache(maxsize=16)
def _random_step(model, names, d, mesh, regions) -> Callable:
    def local(params, pixels, rkeys, skeys, reg):
        out = model.run(params, preprocess(pixels, model.preprocessing))
        cls = jnp.argmax(out.output, axis=-1).astype(jnp.int32)
        maps = jax.vmap(lambda k: jax.random.uniform(k, (d.random_grid, d.random_grid)))(rkeys)
        return M.scores(model, params, pixels, maps, cls, skeys, reg if regions else None, names, d), cls

    return _sharded(local, mesh)


def _sharded(local, mesh):
    spec = P(AXIS)
    return jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), spec, spec, spec, spec), out_specs=(spec, spec),
                                 check_vma=False))


# -- settings, checkpoints -------------------------------------------------------------------------
# -- the leaderboard ----------------------------------------------------------------------------------
def interval(values: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the mean of ``values`` (finite ones), from
    ``numpy.random.default_rng(seed)``; (nan, nan) without values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(v), (resamples, len(v)))
    means = v[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def leaderboard(scores: dict[str, dict[str, np.ndarray]], names: Sequence[str]) -> list[dict]:
    """One record per (method, metric) from per-image ``scores`` (``"random"`` holds the baseline)."""
    records = []
    for method, per in scores.items():
        for name in names:
            rec = M.metric_record(name)
            v = np.asarray(per[name], np.float64)
            ok = np.isfinite(v)
            low, high = interval(v)
            beats = None
            if method != RANDOM:
                r = np.asarray(scores[RANDOM][name], np.float64)
                both = ok & np.isfinite(r)
                better = v[both] > r[both] if rec.higher_is_better else v[both] < r[both]
                beats = float(better.mean()) if both.any() else None
            records.append(dict(method=method, metric=name, higher_is_better=rec.higher_is_better,
                                mean=float(v[ok].mean()) if ok.any() else None, low=_num(low), high=_num(high),
                                n=int(ok.sum()), beats_random=beats))
    return records


def _num(v: float):
    return None if not np.isfinite(v) else float(v)


# -- the public function ------------------------------------------------------------------------------
def _method_names(methods) -> list[str]:
    names = list(METHODS) if methods == "all" else ([methods] if isinstance(methods, str) else list(methods))
    if not names:
        raise JaxvizError("methods is empty: name at least one method, or 'all'")
    for n in names:
        method_record(n)
    if len(set(names)) != len(names):
        raise JaxvizError(f"methods names a method twice: {names}")
    return names


def evaluate(
    model: Model,
    params: Any,
    images: Any,
    methods: "str | Sequence[str]" = "all",
    metrics: "str | Sequence[str]" = "all",
    *,
    key: jax.Array | None = None,
    layer: str | None = None,
    settings: Settings = Settings(),
    definitions: M.Definitions = M.Definitions(),
    regions: np.ndarray | None = None,
    batch_size: int | None = None,
    input_shape: Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
    checkpoint: "str | os.PathLike | None" = None,
    resume: bool = False,
    checkpoint_every: int = 20,
    checkpoint_seconds: float = 60.0,
    workers: int | None = None,
    max_failures: float = 0.05,
    interpolation: str = "bilinear",
    on_batch: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score attribution ``methods`` by faithfulness ``metrics`` over a collection (see the module docstring).

    Args:
      model, params: a classifier of the model protocol and its parameters.
      images: a collection spec (a folder, glob, list of paths, text file, ``.npy``/``.npz``, ``samples``,
        an N x H x W x C array of pixels 0..255, an iterable of batches; :func:`jaxviz.io.collection.open_collection`).
      methods: ``"all"`` or names of :data:`jaxviz.methods.attribution.METHODS`.
      metrics: ``"all"`` or names of :data:`jaxviz.methods.metrics.METRIC_NAMES`. ``"all"`` leaves out the
        pointing game without ``regions``.
      key: the methods' noise, ROAD's noise and the random maps (default ``jax.random.key(0)``).
      layer, settings: the layer maps' layer and the methods' settings (:func:`jaxviz.explain`).
      definitions: the metrics' settings (:class:`jaxviz.methods.metrics.Definitions`).
      regions: object masks for the pointing game, N x H x W bool at the input size, aligned with the
        collection's items (all False: no region).
      batch_size: images per step over all devices (default 2 per device on CPUs, 16 on accelerators),
        rounded up to a multiple of the device count.
      input_shape: (H, W, C) the images are resized to (default the model's).
      devices: the local devices to use (default all).
      checkpoint, resume, checkpoint_every, checkpoint_seconds: the resumable state (module docstring).
      workers, max_failures, interpolation: for the collection reader.
      on_batch: ``on_batch(items_done, items_total)`` after each batch; an exception it raises
        interrupts the run as Ctrl-C does (the checkpoint is written first).

    Returns an :class:`Evaluation`.
    """
    method_names = _method_names(methods)
    allowed = M.METRIC_NAMES if regions is not None else tuple(n for n in M.METRIC_NAMES if n != "pointing_game")
    if metrics != "all" and regions is None and "pointing_game" in ([metrics] if isinstance(metrics, str) else metrics):
        raise JaxvizError("the pointing game needs regions: a box or mask per image")
    names = M.check_names(metrics, allowed)
    map_names = tuple(n for n in names if n in M.MAP_METRICS)
    M.check_definitions(definitions)
    shape = tuple(int(v) for v in (input_shape or model.input_shape))
    model.check_input((1,) + shape)
    shard = (jax.process_index(), jax.process_count())
    check_classifier(model, shape, method_names[0])
    for m in method_names:  # every method's arguments (layer, settings) before any work
        compiled_explain(model, shape, m, layer, "logit", settings, top1=True)
    key = jax.random.key(0) if key is None else key
    k_method, k_metric, k_random = jax.random.split(key, 3)
    devices = list(devices) if devices is not None else jax.local_devices()
    mesh = batch_mesh(devices)
    d = mesh.size
    if batch_size is not None and not 1 <= int(batch_size) <= 65536:
        raise JaxvizError(f"batch_size must be 1..65536, got {batch_size}")
    default = CPU_BATCH if all(dev.platform == "cpu" for dev in devices) else ACCEL_BATCH
    b = -(-int(batch_size or default * d) // d) * d
    coll = open_collection(images, shape, batch_size=b, shard=shard, workers=workers, max_failures=max_failures,
                           interpolation=interpolation)
    paths = coll.paths
    if regions is not None:
        regions = np.asarray(regions, bool)
        if regions.shape != (len(paths),) + shape[:2]:
            raise JaxvizError(f"regions must be {len(paths)} x {shape[0]} x {shape[1]} masks (one per image at the "
                              f"input size), got shape {regions.shape}")
    everyone = method_names + [RANDOM]
    steps = {m: _method_step(model, m, layer, settings, map_names, definitions, shape, mesh, regions is not None)
             for m in method_names}
    steps[RANDOM] = _random_step(model, map_names, definitions, mesh, regions is not None)
    rep = replicate(mesh, params)
    k_weights = jax.random.fold_in(k_method, 2**31 - 1)  # one re-initialised model for every image
    curves = [f"{i}/curve/{c}" for i in range(len(everyone)) for c in ("deletion", "insertion") if c in names]

    def init(ctx):  # every curve from the start (zeros): every process of a run holds the same keys to gather
        return {c: np.zeros(definitions.steps + 1) for c in curves}

    def update(state, batch, ctx):
        idx = np.where(batch.indices >= 0, batch.indices, 0)
        reg = regions[idx] & batch.valid[:, None, None] if regions is not None else np.zeros((b, 1, 1), bool)
        keys = [M.image_keys(k, idx) for k in (k_method, k_metric, k_random)]
        x, mk, sk, rk, rg = shard_batch(mesh, batch.pixels, *keys, reg)
        results, classes = {}, None
        for m in everyone:
            out, cls = steps[m](rep, x, rk if m == RANDOM else mk, sk, rg)
            results[m] = {k: np.asarray(v) for k, v in out.items()}
            if m == RANDOM:
                classes = np.asarray(cls)
        keep = batch.valid
        if "randomization" in names:  # the method re-run on the re-initialised model (not jitted here)
            for m in method_names:
                vals = np.full(b, np.nan, np.float32)
                if keep.any():
                    vals[keep] = M.randomization(k_weights, model, params, batch.pixels[keep], classes[keep],
                                                 method=m, layer=layer, settings=settings)
                results[m]["randomization"] = vals
            results[RANDOM]["randomization"] = np.ones(b, np.float32)  # a random map ignores the weights
        new = dict(state)
        rows = {"indices": batch.indices[keep].astype(np.int64), "classes": classes[keep].astype(np.int64)}
        for i, m in enumerate(everyone):
            res = results[m]
            for n in names:
                rows[f"{i}/{n}"] = np.asarray(res[n][keep], np.float32)
            for c in ("deletion", "insertion"):
                if f"{c}_curve" in res:
                    new[f"{i}/curve/{c}"] = state[f"{i}/curve/{c}"] + np.asarray(res[f"{c}_curve"][keep],
                                                                                 np.float64).sum(0)
        return new, rows

    job = engine.Job("evaluate", dict(model=model.name, preprocessing=model.preprocessing,
                                      params=engine.digest(params), methods=method_names, metrics=names,
                                      definitions=list(definitions), settings=list(settings), layer=layer,
                                      key=np.asarray(jax.random.key_data(key)).tolist(),
                                      regions=None if regions is None else engine.digest(regions),
                                      version=STATE_VERSION),
                     init=init, update=update, to_arrays=lambda st: {k: np.asarray(v) for k, v in st.items()},
                     from_arrays=lambda z, ctx: {c: z[c] for c in curves})
    out = engine.run_job(job, images, shape=shape, batch_size=b, devices=devices, checkpoint=checkpoint,
                         resume=resume, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                         workers=workers, max_failures=max_failures, interpolation=interpolation,
                         on_batch=on_batch, what="model, weights, methods, metrics, definitions, key, input size "
                                                 "or images")
    return _result(out.paths, everyone, out.arrays, out.rows, names, definitions, out.failures)


def _result(paths, methods, curve_sums, rows, names, definitions, failures) -> Evaluation:
    n = len(paths)
    idx = rows.get("indices", np.zeros(0, np.int64))
    classes = np.full(n, -1, np.int64)
    classes[idx] = rows.get("classes", np.zeros(0, np.int64))
    scores: dict[str, dict[str, np.ndarray]] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for i, m in enumerate(methods):
        scores[m] = {}
        for name in names:
            v = np.full(n, np.nan, np.float32)
            v[idx] = rows.get(f"{i}/{name}", np.zeros(0, np.float32))
            scores[m][name] = v
        count = max(len(idx), 1)
        curves[m] = {c: np.asarray(curve_sums[f"{i}/curve/{c}"]) / count for c in ("deletion", "insertion")
                     if f"{i}/curve/{c}" in curve_sums}
    return Evaluation(paths, classes, scores, curves, leaderboard(scores, names), sorted(failures), definitions)
