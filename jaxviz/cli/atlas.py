"""`jaxviz atlas`: what drives each unit across an image collection — ``atlas.npz`` and a
self-contained ``index.html`` (one card per unit: its pattern, its top-k exemplar crops, its statistics)."""

from __future__ import annotations

import html
import os
import re
import sys
import time

import numpy as np

from jaxviz.cli.progress import Progress
from jaxviz.cli.common import (
    on_processes,
    add_model_args,
    refuse_out_in_collection,
    add_peer_timeout,
    at_least,
    input_shape,
    load,
    register,
    say_preprocessing,
)
from jaxviz.errors import JaxvizError
from jaxviz.nn.jit import jit
from jaxviz.viz.display import all_zero, png_uri
from jaxviz.viz.render import framed_crop

CHECKPOINT = ".atlas-checkpoint"  # inside --out: what --resume continues from
RARE = 0.01  # units firing on fewer than 1% of the images are listed as rarely firing


def parse_units(text: str) -> list[int] | None:
    """``all`` -> None; ``0-63`` / ``0,5,9-12`` -> the sorted indices (each at most once)."""
    if text.strip() == "all":
        return None
    out: list[int] = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d{1,7})\s*(?:-\s*(\d{1,7})\s*)?", item)
        if not m:
            raise JaxvizError(f"--units takes 'all' or ranges like 0-63 or 0,5,9-12; got {text!r}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise JaxvizError(f"--units range {lo}-{hi} runs backwards")
        out += range(lo, hi + 1)
    if len(set(out)) != len(out):
        raise JaxvizError(f"--units names a unit more than once: {text!r}")
    return out


def cmd_atlas(args) -> None:
    at_least("--k", args.k, 1, 1000)
    at_least("--batch-size", args.batch_size, 1, 65536)
    at_least("--max-failures", args.max_failures, 0, 1)
    at_least("--workers", args.workers, 1, 256)
    at_least("--max-cards", args.max_cards, 1, 100_000)
    at_least("--checkpoint-every", args.checkpoint_every, 1)
    at_least("--checkpoint-seconds", args.checkpoint_seconds, 1)
    units = parse_units(args.units)
    refuse_out_in_collection(args.out, args.images)
    on_processes(args, lambda stage: _run(args, units, stage))


def _run(args, units, stage) -> None:
    import jax

    from jaxviz.methods.atlas import top_examples

    loaded = load(args)
    model = loaded.model
    shape = input_shape(args, model)
    say_preprocessing(args, model)
    layers = list(dict.fromkeys(args.layer))
    for layer in layers:
        model.resolve(layer)
    checkpoint = os.path.join(args.out, CHECKPOINT)
    t0 = time.perf_counter()
    with Progress("jaxviz atlas", unit="image") as bar:
        atlas = top_examples(model, loaded.params, args.images, layers, args.k, reduce=args.reduce,
                             batch_size=args.batch_size, units=units, input_shape=shape, checkpoint=checkpoint,
                             resume=args.resume, checkpoint_every=args.checkpoint_every,
                             checkpoint_seconds=args.checkpoint_seconds, workers=args.workers,
                             max_failures=args.max_failures, on_batch=bar)
    dt = time.perf_counter() - t0
    for f in atlas.failures:
        print(f"jaxviz atlas: warning: skipped {f.path!r}: {f.reason}", file=sys.stderr)
    print(f"{atlas.count} images ({len(atlas.failures)} unreadable) in {dt:.1f} s ({atlas.count / max(dt, 1e-9):.1f} "
          f"img/s), {len(jax.devices())} {jax.devices()[0].platform} device(s), {jax.process_count()} process(es)")
    if stage is None:
        return
    write_npz(os.path.join(stage, "atlas.npz"), atlas)
    patterns = _patterns(args, model, loaded.params, atlas, shape)
    page = render_html(model, loaded.params, args.images, atlas, patterns, args.max_cards, loaded.trained)
    # a file name that is not UTF-8 (surrogate escapes) is written escaped, never a crash; atlas.npz keeps it exactly
    with open(os.path.join(stage, "index.html"), "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(page)
    for layer, la in atlas.layers.items():
        print(f"{layer}: {len(la.units)} units, {int(la.dead.sum())} dead, "
              f"{int(((la.fire_rate > 0) & (la.fire_rate < RARE)).sum())} firing on under {RARE:.0%} of the images")
    import shutil

    shutil.rmtree(checkpoint, ignore_errors=True)  # done: nothing left to resume


def write_npz(path: str, atlas) -> None:
    """``paths``, ``failures`` and per layer ``L/indices``, ``L/values``, ``L/peaks``, ``L/boxes``,
    ``L/mean``, ``L/max``, ``L/fire_rate``, ``L/units``, ``L/dead``."""
    arrays = {"paths": np.array(atlas.paths, dtype=str),
              "failures": np.array([f.index for f in atlas.failures], np.int64)}
    for layer, la in atlas.layers.items():
        for field in ("indices", "values", "peaks", "boxes", "mean", "max", "fire_rate", "units", "dead"):
            arrays[f"{layer}/{field}"] = getattr(la, field)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _patterns(args, model, params, atlas, shape) -> dict:
    """``{layer: {unit: uint8 image}}`` of the units shown, by ``--patterns`` (none: {})."""
    if args.patterns == "none":
        return {}
    import jax

    from jaxviz import filter_patterns, get_recipe

    name = args.patterns if args.patterns != "auto" else ("lucid" if min(shape[:2]) >= 64 else "dlwp1")
    recipe = get_recipe(name)
    recipe = get_recipe(name, size=min(recipe.size, max(shape[:2])))
    out = {}
    for layer, la in atlas.layers.items():
        shown = [int(u) for u in la.units[: args.max_cards]]
        try:
            res = filter_patterns(model, params, layer, shown, recipe, jax.random.key(args.seed), quality=False)
        except JaxvizError as e:
            print(f"jaxviz atlas: warning: no patterns for {layer}: {e}", file=sys.stderr)
            continue
        per = len(res.images) // len(shown)
        out[layer] = {u: res.images[i * per] for i, u in enumerate(shown)}
    return out


# -- html ---------------------------------------------------------------------------------------------
def _maps(model, params, pixels: np.ndarray, layer: str) -> np.ndarray:
    """The layer's activations (N x h x w x C) for exemplar pixels (N x H x W x C), 32 at a time."""
    import jax

    from jaxviz.nn.preprocess import preprocess

    f = jit(lambda x: model.run(params, preprocess(x, model.preprocessing), taps=[layer], output=False).taps[layer])
    out = []
    for s in range(0, len(pixels), 32):
        part = pixels[s:s + 32]
        pad = np.concatenate([part, np.zeros((32 - len(part),) + part.shape[1:], part.dtype)])
        out.append(np.asarray(f(pad))[: len(part)])
    return np.concatenate(out)


def _id(layer_no: int, unit: int | None = None) -> str:
    return f"l{layer_no}" + ("" if unit is None else f"-u{unit}")


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h2{margin-top:2em;border-bottom:1px solid #ccc}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;max-width:100%;box-sizing:border-box}
.card.dead{opacity:.55}
.card .none{font-size:11px;max-width:150px;margin:0 4px}
.card .head{font-size:12px;margin-bottom:4px}
.row{display:flex;flex-wrap:wrap;gap:3px;align-items:flex-end}
figure{margin:0;font-size:10px;text-align:center}
figure img,.pattern{height:72px;image-rendering:pixelated;display:block}
.pattern{border:2px solid #446}
.overview{font-size:13px}
.overview a{margin-right:4px}
"""
SCRIPT = """
function sortCards(sel){
  var box=sel.closest('section').querySelector('.cards'), key=sel.value;
  var cards=Array.prototype.slice.call(box.children);
  cards.sort(function(a,b){
    if(key==='unit'){return a.dataset.unit-b.dataset.unit;}
    return (b.dataset[key]-a.dataset[key])||(a.dataset.unit-b.dataset.unit);
  });
  cards.forEach(function(c){box.appendChild(c);});
}
"""


def render_html(model, params, images, atlas, patterns: dict, max_cards: int = 512, trained: bool = True) -> str:
    """The self-contained atlas page (inline PNGs, a few lines of JS to sort the cards). Every name that
    came from a file or a model is HTML-escaped."""
    from jaxviz.io.collection import open_collection

    esc = html.escape
    coll = open_collection(images, atlas.input_shape, batch_size=1) if not _is_iterable(images) else None
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>jaxviz atlas: {esc(model.name)}</title>"
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"),
             f"<h1>What drives each unit of {esc(model.name)}</h1>",
             (f"<p>{atlas.count} images (reduce: {esc(atlas.reduce)} over space; input {atlas.input_shape[0]}x"
             f"{atlas.input_shape[1]}){'' if trained else ' — <b>UNTRAINED weights</b>'}.</p>")]
    if atlas.failures:
        items = "".join(f"<li>{esc(f.path)}: {esc(f.reason)}</li>" for f in atlas.failures[:100])
        parts.append(f"<details><summary>{len(atlas.failures)} unreadable images skipped</summary><ul>{items}</ul>"
                     "</details>")
    for n, (layer, la) in enumerate(atlas.layers.items()):
        parts.append(_layer_html(n, layer, la, model, params, coll, atlas, patterns.get(layer, {}), max_cards))
    parts.append("</body></html>")
    return "".join(parts)


def _is_iterable(images) -> bool:
    return not isinstance(images, (str, os.PathLike, list, tuple, np.ndarray))


def _layer_html(n, layer, la, model, params, coll, atlas, pats, max_cards) -> str:
    esc = html.escape
    rf = la.field
    shown = list(range(min(len(la.units), max_cards)))
    dead = [int(u) for u, d in zip(la.units, la.dead) if d]
    rare = [int(u) for u, f in zip(la.units, la.fire_rate) if 0 < f < RARE]
    link = lambda u: f"<a href='#{_id(n, u)}'>{u}</a>"
    out = [f"<section id='{_id(n)}'><h2>{esc(layer)}</h2>",
           (f"<p class='overview'>grid {la.grid[0]}x{la.grid[1]}, receptive field {rf.size[0]}x{rf.size[1]} px, "
           f"stride {rf.stride[0]}; {len(la.units)} units, <b>{len(dead)} dead</b> (never fire)"
           f"{': ' + ' '.join(map(link, dead[:200])) if dead else ''}; <b>{len(rare)} rarely firing</b> "
           f"(under {RARE:.0%} of the images){': ' + ' '.join(map(link, rare[:200])) if rare else ''}; "
           f"median fire rate {float(np.median(la.fire_rate)):.1%}.</p>"),
           "<p>sort by <select onchange='sortCards(this)'><option value='unit'>unit</option>"
           "<option value='max'>max</option><option value='mean'>mean</option>"
           "<option value='fire'>fire rate</option></select>"
           + (f" (first {len(shown)} of {len(la.units)} units shown)" if len(shown) < len(la.units) else "")
           + "</p><div class='cards'>"]
    idx = sorted({int(i) for u in shown if not all_zero(la, u) for i in la.indices[u] if i >= 0})
    crops = {}
    if coll is not None and idx:
        pixels = np.stack([coll.read(i) for i in idx])
        maps = _maps(model, params, pixels, layer) if len(la.grid) == 2 and la.grid != (1, 1) else None
        pos = {i: j for j, i in enumerate(idx)}
        import cv2

        h, w = atlas.input_shape[:2]
        for u in (u for u in shown if not all_zero(la, u)):
            unit = int(la.units[u])
            top = max(float(la.values[u, 0]), 1e-12)
            for j, i in enumerate(la.indices[u]):
                if i < 0:
                    continue
                heat = None
                if maps is not None:
                    m = maps[pos[int(i)]][..., unit]
                    heat = cv2.resize(np.asarray(m, np.float32) / top, (w, h), interpolation=cv2.INTER_LINEAR)
                crops[(u, j)] = png_uri(framed_crop(pixels[pos[int(i)]], heat, la.boxes[u, j]))
    for u in shown:
        unit = int(la.units[u])
        cls = " dead" if la.dead[u] else ""
        stats = (f"max {la.max[u]:.3g} · mean {la.mean[u]:.3g} · fires {la.fire_rate[u]:.1%}"
                 + (" · <b>dead</b>" if la.dead[u] else ""))
        out.append(f"<div class='card{cls}' id='{_id(n, unit)}' data-unit='{unit}' data-max='{float(la.max[u]):.6g}' "
                   f"data-mean='{float(la.mean[u]):.6g}' data-fire='{float(la.fire_rate[u]):.6g}'>"
                   f"<div class='head'><b>unit {unit}</b> · {stats}</div><div class='row'>")
        if unit in pats:
            out.append(f"<figure><img class='pattern' src='{png_uri(pats[unit])}' alt='pattern'>"
                       "<figcaption>pattern</figcaption></figure>")
        if all_zero(la, u):
            out.append(f"<p class='none'>never above 0 on the {atlas.count} images: its top {len(la.indices[u])} "
                       "are ties at 0, so none is drawn</p>")
        for j, i in enumerate(la.indices[u]):
            if i < 0 or (u, j) not in crops:
                continue
            name = atlas.paths[int(i)]
            out.append(f"<figure title='{esc(name, quote=True)} (row {la.peaks[u, j, 0]}, column "
                       f"{la.peaks[u, j, 1]})'><img src='{crops[(u, j)]}' alt='exemplar'>"
                       f"<figcaption>{esc(os.path.basename(name)[:24])}<br>{la.values[u, j]:.3g}</figcaption></figure>")
        out.append("</div></div>")
    out.append("</div></section>")
    return "".join(out)


@register("atlas", "what drives each unit across an image collection: top-k exemplars, statistics, an html atlas",
          "jaxviz atlas --weights builtin:digits_cnn --images digits --layer conv2d_1 --k 9 --out out/atlas\n"
          "  jaxviz atlas --model efficientnet_lite0 --images photos/ --layer block4b_add --units 0-63 "
          "--patterns lucid --resume --out out/atlas_lite\n"
          "  # several processes (hosts): the same command on each, with --coordinator HOST:PORT --process I/N")
def _setup_atlas(p):
    add_model_args(p)
    p.add_argument("--images", "-i", required=True,
                   help="the collection: a folder (searched recursively), a glob ('photos/**/*.jpg'), a text file of "
                        "paths (.txt), an .npy/.npz array, digits, fruits, samples or sample:NAME")
    p.add_argument("--layer", "-l", action="append", required=True, help="layer name (repeatable)")
    p.add_argument("--units", default="all", help="units of every layer: all (default), 0-63, 0,5,9-12")
    p.add_argument("--k", type=int, default=9, help="exemplars per unit, 1..1000 (default 9)")
    p.add_argument("--reduce", choices=["max", "mean"], default="max",
                   help="a unit's map to one number per image: its max (default, as OpenAI Microscope) or mean")
    p.add_argument("--batch-size", type=int, help="images per step over all devices, 1..65536 (default: 64 or "
                                                  "the devices' chunks)")
    p.add_argument("--patterns", default="auto",
                   help="feature-visualisation recipe for each card's pattern (dlwp1, dlwp2, lucid), auto (lucid "
                        "for inputs of 64 pixels and more, else dlwp1) or none")
    p.add_argument("--max-cards", type=int, default=512, help="units drawn per layer in the html, 1..100000 "
                                                              "(default 512; the npz has all)")
    p.add_argument("--max-failures", type=float, default=0.05,
                   help="the share of unreadable images that stops the run, 0..1 (default 0.05)")
    p.add_argument("--workers", type=int, help="image-decoding threads, 1..256 (default: CPUs, at most 8)")
    p.add_argument("--resume", action="store_true",
                   help=f"continue an interrupted run from --out/{CHECKPOINT} (refused if the settings differ)")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                   help="write the resumable state every N batches, 1.. (default 100; also on Ctrl-C and SIGTERM)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0, metavar="S",
                   help="... and at least every S seconds, 1.. (default 60)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator (process 0's address)")
    p.add_argument("--process", metavar="I/N", help="this process's index and the process count, e.g. 0/2")
    add_peer_timeout(p)
    p.add_argument("--out", "-o", required=True, help="output directory: atlas.npz and index.html")
    p.set_defaults(func=cmd_atlas)
