"""Results that draw themselves: one HTML renderer per result type, for notebooks, scripts and pages.

Every result of the public API (:class:`~jaxviz.Patterns`, :class:`~jaxviz.Cams`, the
:class:`~jaxviz.methods.activations.Activations` mapping, :class:`~jaxviz.methods.weights.LayerWeights`,
:class:`~jaxviz.Atlas` / :class:`~jaxviz.LayerAtlas`, :class:`~jaxviz.Evaluation`, :class:`~jaxviz.Loaded`)
has a ``_repr_html_`` that calls :func:`html` here, lazily (the methods never draw, style rule 2).
The HTML is self-contained: pictures are PNG data URIs, there is no script and nothing is fetched.
Large results are bounded: a summary line plus the first :data:`LIMIT` items, saying how many more.

The pictures are made by the same functions as the CLI's writers (:mod:`jaxviz.viz.render`'s
``stitch``, ``activation_grid``, ``plain_map``; :mod:`jaxviz.viz.plotting`'s ``histograms`` and
``curves_figure``; the atlas crops of :mod:`jaxviz.cli.atlas`).

:func:`show` is the script-side entry: in IPython it displays the result, elsewhere it writes a
self-contained HTML page and returns its path.
"""

from __future__ import annotations

import base64
import html as _html
import io
import os
import tempfile
from typing import Any

import numpy as np

LIMIT = 64  # items (patterns, images, units per layer) drawn; the rest are counted
ATLAS_UNITS = 24  # atlas cards drawn per layer
ATLAS_EXEMPLARS = 4  # exemplars per atlas card
MIN_TILE = 40  # activation maps smaller than this many pixels are enlarged (nearest, an integer factor)
esc = _html.escape

STYLE = ("<style>.jaxviz{font-family:sans-serif;font-size:13px;max-width:100%;overflow-x:auto}"
         ".jaxviz img{image-rendering:pixelated;max-width:100%}.jaxviz figure{display:inline-block;margin:3px;"
         "vertical-align:top;text-align:center}.jaxviz figcaption{font-size:11px}"
         ".jaxviz table{border-collapse:collapse}.jaxviz td,.jaxviz th{padding:2px 6px;border-bottom:1px solid #ddd;"
         "text-align:right}.jaxviz .card{display:inline-block;border:1px solid #ccc;margin:3px;padding:3px;"
         "vertical-align:top}.jaxviz .title{margin:4px 0}</style>")


# -- pictures ----------------------------------------------------------------------------------------
def png_bytes(img: np.ndarray) -> bytes:
    """uint8 H x W (grey) or H x W x 3 (RGB) -> PNG bytes."""
    from PIL import Image

    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig, dpi: int = 72) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def img_tag(png: bytes, alt: str, title: str = "") -> str:
    t = f" title='{esc(title, quote=True)}'" if title else ""
    return f"<img src='{data_uri(png)}' alt='{esc(alt, quote=True)}'{t}>"


def _more(shown: int, total: int, what: str) -> str:
    return f"<p><i>first {shown} of {total} {what} shown; {total - shown} more not shown.</i></p>" if shown < total else ""


def _wrap(title: str, body: str) -> str:
    return f"{STYLE}<div class='jaxviz'><div class='title'><b>{esc(title)}</b></div>{body}</div>"


# -- one renderer per result type ---------------------------------------------------------------------
def patterns_png(res, limit: int = LIMIT) -> bytes:
    """The pattern grid the CLI's ``write_filters`` writes (same columns, 5-pixel margins), first ``limit``."""
    from jaxviz.viz.render import fit_columns, stitch

    images = res.images[:limit]
    images = images[..., 0] if images.shape[-1] == 1 else images
    per_unit = len(res.filters) // max(len(np.unique(res.filters)), 1)
    cols = per_unit if per_unit > 1 else fit_columns(len(images))
    return png_bytes(stitch(images, n_cols=cols, margin=5))


def patterns_html(res, limit: int = LIMIT) -> str:
    from jaxviz.viz.writers import index_ranges

    n = len(res.filters)
    line = f"<p>units {esc(index_ranges(np.unique(res.filters)))}; mean objective {float(res.objective.mean()):.3g}"
    dead = int(np.asarray(res.dead).sum())
    line += (f", {dead} dead" if dead else "") + "</p>"
    if res.photo_best is not None:
        line += f"<p>quality: {esc(res.summary())}</p>"
    return _wrap(f"Patterns: {n} feature visualisations", line + img_tag(patterns_png(res, limit), "patterns")
                 + _more(min(n, limit), n, "patterns"))


def cams_what(res) -> str:
    """``"gradcam at conv2d_1"``, ``"saliency at the input pixels"``, or what the :class:`~jaxviz.Cams`
    records of its method and layer (``"unknown method"`` when it records neither)."""
    from jaxviz.methods.attribution import INPUT_METHODS

    if res.layer:
        return f"{res.method or 'unknown method'} at {res.layer}"
    if res.method in INPUT_METHODS:
        return f"{res.method} at the input pixels"
    return res.method or "unknown method"


def cams_html(res, limit: int = 16, size: int = 128) -> str:
    """Each image's map in the overlay's JET colours (:func:`jaxviz.viz.render.plain_map`), with class and
    probability; the title names the method and the layer. Pixel-level maps are scaled as the CLI's
    overlays scale them (:func:`jaxviz.viz.render.display_map`). ``Cams`` records no photos; the CLI's
    ``explain`` draws the overlays on them."""
    from jaxviz.methods.attribution import INPUT_METHODS
    from jaxviz.viz.render import display_map, plain_map

    n, k = res.heatmaps.shape[:2]
    what = cams_what(res)
    pixel = res.method in INPUT_METHODS  # as the CLI's overlays: a pixel-level map from its 1st to 99th percentile
    figs = []
    for i in range(min(n, limit)):
        for j in range(k):
            c = int(res.classes[i, j])
            p = float(np.asarray(res.probs)[i, c]) if 0 <= c < np.shape(res.probs)[-1] else float("nan")
            heat = display_map(res.heatmaps[i, j]) if pixel else res.heatmaps[i, j]
            png = png_bytes(plain_map(heat, (size, size)))
            blank = "<br>blank: all zero" if not np.any(res.heatmaps[i, j]) else ""  # else it reads as "cold"
            figs.append(f"<figure>{img_tag(png, f'{what} map', what)}<figcaption>image {i}: class {c}, p={p:.2f}"
                        f"{blank}</figcaption></figure>")
    scale = ", drawn from their 1st to 99th percentile" if pixel else ""
    return _wrap(f"Cams: {cams_what(res)}; {n} images x {k} classes, maps {res.heatmaps.shape[2]}x"
                 f"{res.heatmaps.shape[3]} in [0, 1]{scale}", "".join(figs) + _more(min(n, limit), n, "images"))


def activations_html(acts, limit: int = 16, per_row: int = 16) -> str:
    """The first image's grid per layer, as the CLI's ``write_activations`` draws it (normalised channels),
    each map enlarged by the integer factor that makes it at least :data:`MIN_TILE` pixels (nearest)."""
    from jaxviz.viz.render import activation_grid

    rows, names = [], list(acts)
    for name in names[:limit]:
        a = np.asarray(acts[name])
        shape = "x".join(map(str, a.shape))
        if a.ndim == 4:
            g = activation_grid(a[0][..., :256], per_row)
            extra = f" (first 256 of {a.shape[-1]} channels)" if a.shape[-1] > 256 else ""
            zoom = max(1, -(-MIN_TILE // min(a.shape[1:3])))  # a 7x7 map drawn 42 px: visible at its own size
            img = np.repeat(np.repeat(g.image, zoom, 0), zoom, 1)
            extra += f", drawn {zoom}x" if zoom > 1 else ""
            rows.append(f"<figure>{img_tag(png_bytes(img), name)}<figcaption>{esc(name)} {shape}: {g.dead} dead"
                        f"{extra}</figcaption></figure><br>")
        else:
            rows.append(f"<p>{esc(name)} {shape} (not spatial)</p>")
    return _wrap(f"Activations of {len(names)} layers (first image)", "".join(rows) + _more(min(len(names), limit),
                                                                                          len(names), "layers"))


def weights_png(lw) -> bytes:
    from jaxviz.viz.plotting import histograms

    return figure_png(histograms({f"{lw.layer}": (lw.counts, lw.edges)}))


def weights_html(lw) -> str:
    from jaxviz.methods.weights import STAT_NAMES

    stats = ", ".join(f"{n} {float(v):.3g}" for n, v in zip(STAT_NAMES, lw.stats))
    return _wrap(f"LayerWeights {lw.layer}: kernel {'x'.join(map(str, lw.kernel.shape))}",
                 f"<p>{esc(stats)}</p>" + img_tag(weights_png(lw), "histogram"))


def _layer_atlas_html(layer: str, la, paths, input_shape, units: int, k: int) -> str:
    from jaxviz.cli.atlas import _all_zero, _crop

    shown = list(range(min(len(la.units), units)))
    head = (f"<p><b>{esc(layer)}</b>: grid {la.grid[0]}x{la.grid[1]}, {len(la.units)} units, "
            f"{int(np.sum(la.dead))} dead, median fire rate {float(np.median(la.fire_rate)):.1%}</p>")
    coll = None
    if paths is not None:
        try:
            from jaxviz.io.collection import open_collection

            coll = open_collection(list(paths), input_shape, batch_size=1)
        except Exception:  # noqa: BLE001 (a moved file: cards without exemplars, still the statistics)
            coll = None
    cards = []
    for u in shown:
        figs = []
        for j, i in enumerate(la.indices[u][:k]):
            if i < 0 or coll is None or _all_zero(la, u):  # a dead unit's top images are ties at 0
                continue
            try:
                crop = _crop(coll.read(int(i)), None, la.boxes[u, j])
            except Exception:  # noqa: BLE001
                continue
            figs.append(f"<figure>{img_tag(png_bytes(crop), 'exemplar', str(paths[int(i)]))}"
                        f"<figcaption>{la.values[u, j]:.3g}</figcaption></figure>")
        cards.append(f"<div class='card'><div>unit {int(la.units[u])} · max {la.max[u]:.3g} · mean {la.mean[u]:.3g}"
                     f" · fires {la.fire_rate[u]:.1%}{' · <b>dead</b>' if la.dead[u] else ''}</div>{''.join(figs)}</div>")
    return head + _fire_png_tag(la) + "<br>" + "".join(cards) + _more(len(shown), len(la.units), "units")


def _fire_png_tag(la) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 1.6))
    ax.bar(np.arange(len(la.units)), np.asarray(la.fire_rate), width=1.0)
    ax.set_xlabel("unit (position)", fontsize=8)
    ax.set_ylabel("fire rate", fontsize=8)
    ax.tick_params(labelsize=7)
    return img_tag(figure_png(fig), "fire rates")


def atlas_html(atlas, units: int = ATLAS_UNITS, k: int = ATLAS_EXEMPLARS) -> str:
    body = f"<p>{atlas.count} images, reduce {esc(atlas.reduce)}, input {atlas.input_shape[0]}x{atlas.input_shape[1]}"
    body += (f"; {len(atlas.failures)} unreadable" if atlas.failures else "") + "</p>"
    for layer, la in atlas.layers.items():
        body += _layer_atlas_html(layer, la, atlas.paths, atlas.input_shape, units, k)
    return _wrap(f"Atlas of {len(atlas.layers)} layers", body)


def curves_png(ev) -> bytes:
    """The mean deletion and insertion curves of an :class:`~jaxviz.Evaluation` (the random map dashed),
    at 100 dpi: the picture of its HTML and the CLI's ``curves.png``, the same bytes."""
    from jaxviz.viz.plotting import curves_figure

    return figure_png(curves_figure(ev.curves), dpi=100)


def evaluation_html(ev) -> str:
    fmt = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
    beats = lambda r: "" if r["beats_random"] is None else f"{100 * r['beats_random']:.0f}%"  # noqa: E731
    rows = "".join(f"<tr><td style='text-align:left'>{esc(r['method'])}</td><td style='text-align:left'>"
                   f"{esc(r['metric'])}{' ↑' if r['higher_is_better'] else ' ↓'}</td><td>{fmt(r['mean'])}</td>"
                   f"<td>[{fmt(r['low'])}, {fmt(r['high'])}]</td><td>{r['n']}</td><td>{beats(r)}</td></tr>"
                   for r in ev.leaderboard)
    table = ("<table><tr><th>method</th><th>metric</th><th>mean</th><th>95% interval</th><th>n</th>"
             f"<th>beats random</th></tr>{rows}</table>")
    curves = img_tag(curves_png(ev), "mean deletion and insertion curves") if ev.curves else ""
    methods = [m for m in ev.scores if m != "random"]
    against = " against the random map" if "random" in ev.scores else ""
    return _wrap(f"Evaluation of {', '.join(methods)}{against} over {len(ev.paths)} images", table + curves)


def loaded_html(loaded, limit: int = 200) -> str:
    m = loaded.model
    try:
        shapes = m.shapes()
    except Exception as e:  # noqa: BLE001 (a model without a fixed input size)
        shapes, note = [], f"<p>(shapes need an input size: {esc(str(e))[:200]})</p>"
    else:
        note = ""
    rows = "".join(f"<tr><td>{i}</td><td style='text-align:left'>{esc(str(n))}</td><td>{esc(str(tuple(s)))}</td></tr>"
                   for i, (n, s) in enumerate(shapes[:limit]))
    table = f"<table><tr><th>#</th><th>layer</th><th>output shape</th></tr>{rows}</table>" if shapes else ""
    title = f"{getattr(m, 'name', type(m).__name__)} from {loaded.source}"
    return _wrap(title + ("" if loaded.trained else " (UNTRAINED weights)"),
                 note + table + _more(min(len(shapes), limit), len(shapes), "layers"))


def html(result: Any) -> str:
    """The self-contained HTML of any jaxviz result (what its ``_repr_html_`` returns)."""
    from jaxviz.methods.activations import Activations
    from jaxviz.methods.atlas import Atlas, LayerAtlas
    from jaxviz.methods.attribution import Cams
    from jaxviz.methods.evaluate import Evaluation
    from jaxviz.methods.featurevis.quality import Patterns
    from jaxviz.methods.weights import LayerWeights
    from jaxviz.nn.protocol import Loaded

    if isinstance(result, Patterns):
        return patterns_html(result)
    if isinstance(result, Cams):
        return cams_html(result)
    if isinstance(result, Activations):
        return activations_html(result)
    if isinstance(result, LayerWeights):
        return weights_html(result)
    if isinstance(result, Atlas):
        return atlas_html(result)
    if isinstance(result, LayerAtlas):
        return _wrap("LayerAtlas", _layer_atlas_html("layer", result, None, None, ATLAS_UNITS, 0))
    if isinstance(result, Evaluation):
        return evaluation_html(result)
    if isinstance(result, Loaded):
        return loaded_html(result)
    from jaxviz.errors import JaxvizError

    raise JaxvizError(f"result: jaxviz cannot draw a {type(result).__name__}")


def png(result: Any) -> bytes | None:
    """The single picture of a result where one fits (patterns, weights), else None."""
    from jaxviz.methods.featurevis.quality import Patterns
    from jaxviz.methods.weights import LayerWeights

    if isinstance(result, Patterns):
        return patterns_png(result)
    if isinstance(result, LayerWeights):
        return weights_png(result)
    return None


def page(result: Any, title: str = "jaxviz") -> str:
    """A whole HTML page holding :func:`html` of the result."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}</style>"
            f"</head><body><h1>{esc(title)}</h1>{html(result)}</body></html>")


def show(result: Any, path: "str | os.PathLike | None" = None, open_browser: bool = False) -> str | None:
    """Show a result: inside IPython/Jupyter it is displayed in the output cell (returns None); elsewhere
    its page (:func:`page`) is written to ``path`` (default: a new file ``jaxviz-*.html`` in the
    temporary folder), opened in the web browser when ``open_browser``, and the path returned."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        ip = None
    if ip is not None and path is None:
        from IPython.display import HTML, display

        display(HTML(html(result)))
        return None
    text = page(result, f"jaxviz: {type(result).__name__}")
    if path is None:
        fd, path = tempfile.mkstemp(prefix="jaxviz-", suffix=".html")
        os.close(fd)
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    if open_browser:
        import webbrowser

        webbrowser.open("file://" + os.path.abspath(path))
    return path
