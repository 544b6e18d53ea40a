"""`jaxviz evaluate`: attribution methods ranked by faithfulness metrics over an image collection —
``leaderboard.json``, ``leaderboard.csv``, ``scores.npz``, ``curves.png`` (mean deletion and
insertion curves) and ``index.html`` (the leaderboard and the curves, self-contained)."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from jaxviz.cli.common import add_peer_timeout, refuse_out_in_collection, on_processes, add_model_args, at_least, input_shape, load, register, say_preprocessing
from jaxviz.errors import JaxvizError

CHECKPOINT = ".evaluate-checkpoint"  # inside --out: what --resume continues from
BOUNDS = {
    "--steps": (1, 10_000),
    "--batch-size": (1, 65_536),
    "--max-failures": (0, 1),
    "--workers": (1, 256),
    "--tolerance": (0, 1_000_000),
}


def _names(text: str, valid: tuple[str, ...], flag: str) -> "list[str] | str":
    if text.strip() == "all":
        return "all"
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise JaxvizError(f"{flag} takes 'all' or comma-separated names like {','.join(valid[:2])}; got {text!r}")
    bad = [v for v in items if v not in valid]
    if bad:
        raise JaxvizError(f"{flag}: unknown name {bad[0]!r}; valid: {', '.join(valid)}")
    if len(set(items)) != len(items):
        raise JaxvizError(f"{flag} names {sorted({v for v in items if items.count(v) > 1})[0]!r} more than once")
    return items


def _regions(path: str, paths: list[str], shape) -> np.ndarray:
    """``--boxes FILE.json``: ``{"file name": [top, left, bottom, right], ...}`` in input pixels -> masks."""
    from jaxviz.methods.metrics import boxes_to_masks

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise JaxvizError(f"--boxes {path}: cannot read it as JSON ({e.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise JaxvizError(f"--boxes {path} must hold an object {{\"file name\": [top, left, bottom, right]}}")
    boxes = np.full((len(paths), 4), -1.0)
    for i, p in enumerate(paths):
        box = doc.get(p, doc.get(os.path.basename(p)))
        if box is None:
            continue
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise JaxvizError(f"--boxes {path}: the box of {os.path.basename(p)!r} must be [top, left, bottom, right]")
        boxes[i] = box
    return boxes_to_masks(boxes, shape)


def cmd_evaluate(args) -> None:
    from jaxviz.methods.attribution import METHODS
    from jaxviz.methods.metrics import METRIC_NAMES

    for flag, (low, high) in BOUNDS.items():
        at_least(flag, getattr(args, flag[2:].replace("-", "_")), low, high)
    methods = _names(args.methods, METHODS, "--methods")
    metrics = _names(args.metrics, METRIC_NAMES, "--metrics")
    refuse_out_in_collection(args.out, args.images)
    on_processes(args, lambda stage: _run(args, methods, metrics, stage))


def _run(args, methods, metrics, stage) -> None:
    import jax

    from jaxviz.io.collection import open_collection
    from jaxviz.methods.evaluate import evaluate
    from jaxviz.methods.metrics import Definitions

    loaded = load(args)
    model = loaded.model
    shape = input_shape(args, model)
    say_preprocessing(args, model)
    d = Definitions()
    d = d._replace(steps=args.steps or d.steps, tolerance=d.tolerance if args.tolerance is None else args.tolerance)
    regions = None
    if args.boxes:
        regions = _regions(args.boxes, open_collection(args.images, shape).paths, shape)
    from jaxviz.cli.progress import Progress

    t0 = time.perf_counter()
    with Progress("jaxviz evaluate", unit="image") as bar:
        ev = evaluate(model, loaded.params, args.images, methods, metrics, key=jax.random.key(args.seed),
                      definitions=d, regions=regions, batch_size=args.batch_size, input_shape=shape,
                      checkpoint=os.path.join(args.out, CHECKPOINT), resume=args.resume, workers=args.workers,
                      max_failures=args.max_failures, on_batch=bar)
    dt = time.perf_counter() - t0
    for f in ev.failures:
        print(f"jaxviz evaluate: warning: skipped {f.path!r}: {f.reason}", file=sys.stderr)
    n = int((ev.classes >= 0).sum())
    if stage is not None:
        write(stage, ev, f"jaxviz evaluate: {model.name}")
        print(_table(ev.leaderboard))
    print(f"{n} images ({len(ev.failures)} unreadable) in {dt:.1f} s ({dt / max(n, 1):.2f} s/image), "
          f"{len(jax.devices())} {jax.devices()[0].platform} device(s), {jax.process_count()} process(es)")
    if stage is None:
        return
    import shutil

    shutil.rmtree(os.path.join(args.out, CHECKPOINT), ignore_errors=True)  # done: nothing left to resume


def write(stage: str, ev, title: str = "jaxviz evaluate") -> None:
    """``leaderboard.json``, ``leaderboard.csv``, ``scores.npz``, ``curves.png`` and ``index.html`` into
    ``stage`` (:func:`jaxviz.viz.writers.write_evaluation`, which the demo gallery calls too)."""
    from jaxviz.viz.writers import write_evaluation

    write_evaluation(stage, ev, title)


def _table(board: list[dict]) -> str:
    lines = [f"{'method':12s} {'metric':24s} {'mean':>10s} {'95% interval':>23s} {'n':>6s} {'beats random':>12s}"]
    for r in board:
        fmt = lambda v: "nan" if v is None else f"{v:.4g}"  # noqa: E731
        beats = "" if r["beats_random"] is None else f"{100 * r['beats_random']:.0f}%"
        lines.append(f"{r['method']:12s} {r['metric']:24s} {fmt(r['mean']):>10s} "
                     f"{'[' + fmt(r['low']) + ', ' + fmt(r['high']) + ']':>23s} {r['n']:6d} {beats:>12s}")
    return "\n".join(lines)


@register("evaluate", "rank attribution methods by faithfulness metrics (deletion, insertion, ROAD, ...) over a "
                      "collection",
          "jaxviz evaluate --model efficientnet_lite0 --images photos/ --methods gradcam,saliency,ig "
          "--metrics all --out eval\n"
          "  jaxviz evaluate --weights builtin:digits_cnn --images digits --methods all --metrics deletion,insertion "
          "--steps 20 --out ev   # then --resume after an interruption\n"
          "  # several processes (hosts): the same command on each, with --coordinator HOST:PORT --process I/N")
def _setup_evaluate(p):
    from jaxviz.methods.attribution import METHODS
    from jaxviz.methods.metrics import METRIC_NAMES

    add_model_args(p)
    p.add_argument("--images", required=True, help="the collection: a folder (recursive), a glob, a text file of "
                                                   "paths, an .npy/.npz array, digits, fruits, samples or sample:NAME")
    p.add_argument("--methods", default="all", help=f"'all' or comma-separated: {', '.join(METHODS)} (default all)")
    p.add_argument("--metrics", default="all", help=f"'all' or comma-separated: {', '.join(METRIC_NAMES)} (default "
                                                    "all; the pointing game needs --boxes)")
    p.add_argument("--steps", type=int, help="deletion/insertion steps S, {}..{} (default 100)".format(*BOUNDS["--steps"]))
    p.add_argument("--boxes", help="JSON {\"file name\": [top, left, bottom, right]} in input pixels, for the "
                                   "pointing game")
    p.add_argument("--tolerance", type=float, help="the pointing game's tolerance in pixels (default 15)")
    p.add_argument("--batch-size", type=int, help="images per step over all devices, {}..{} (default 2 per device on "
                                                  "CPUs)".format(*BOUNDS["--batch-size"]))
    p.add_argument("--workers", type=int, help="decoding threads (default: CPU count, at most 8)")
    p.add_argument("--max-failures", type=float, default=0.05,
                   help="share of unreadable images above which the run stops, 0..1 (default 0.05)")
    p.add_argument("--resume", action="store_true", help=f"continue an interrupted run from {CHECKPOINT} in --out")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator (process 0's address)")
    p.add_argument("--process", metavar="I/N", help="this process's index and the process count, e.g. 0/2; each "
                                                    "process reads its share, process 0 writes the files")
    add_peer_timeout(p)
    p.add_argument("--out", "-o", required=True,
                   help="output directory: leaderboard.json, leaderboard.csv, scores.npz, curves.png, index.html")
    p.set_defaults(func=cmd_evaluate)
