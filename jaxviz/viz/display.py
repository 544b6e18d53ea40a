"""Results that draw themselves: one HTML renderer per result type, for notebooks, scripts and pages.

Every result of the public API (:class:`~jaxviz.Patterns`, :class:`~jaxviz.Cams`, the
:class:`~jaxviz.methods.activations.Activations` mapping, :class:`~jaxviz.methods.weights.LayerWeights`,
:class:`~jaxviz.Atlas` / :class:`~jaxviz.LayerAtlas`, :class:`~jaxviz.Evaluation`, :class:`~jaxviz.Loaded`)
has a ``_repr_html_`` that calls :func:`html` here, lazily (the methods never draw, style rule 2).
The HTML is self-contained: pictures are PNG data URIs, there is no script and nothing is fetched.
Large results are bounded: a summary line plus the first :data:`LIMIT` items, saying how many more,
and no picture is wider than :data:`MAX_WIDTH` pixels, so a page shows each at its own size.

Where a picture goes is the renderer's *image sink* (``images=``): :func:`inline` (the default) makes it
a data URI; :class:`ImageFiles` writes it as a PNG file beside the page and returns its relative path
(the gallery of ``jaxviz demo``). One renderer, two outputs: the HTML is the same but for the ``src``.

Besides the results of the public API, three results of the display layer put several together:
:class:`CamsOnPhotos` (maps superimposed on the photos they explain, as the CLI draws them),
:class:`Comparison` (several methods' maps on the same photos, one grid) and :class:`Predictions`
(pictures with the model's class and probability).

The pictures are made by the same functions as the CLI's writers (:mod:`jaxviz.viz.render`'s
``stitch``, ``activation_grid``, ``plain_map``; :mod:`jaxviz.viz.plotting`'s ``histograms`` and
``curves_figure``; the atlas's framed crops, ``framed_crop``).

:func:`show` is the script-side entry: in IPython it displays the result, elsewhere it writes a
self-contained HTML page and returns its path.
"""

from __future__ import annotations

import base64
import html as _html
import io
import os
import struct
import tempfile
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

LIMIT = 64  # items (patterns, images, units per layer) drawn; the rest are counted
ATLAS_UNITS = 24  # atlas cards drawn per layer
ATLAS_EXEMPLARS = 4  # exemplars per atlas card
MIN_TILE = 40  # activation maps smaller than this many pixels are enlarged (nearest, an integer factor)
MAX_WIDTH = 1152  # the widest picture drawn: a 1280-pixel window less a page's margins shows it at its size
esc = _html.escape

ImageSink = Callable[[bytes, str], str]
"""Where a picture goes: ``sink(png, name) -> src``. ``name``: what the picture is (a layer, ``"patterns"``,
``"compare"``), a file stem for sinks that write files."""

STYLE = ("<style>.jaxviz{font-family:sans-serif;font-size:13px;max-width:100%;overflow-x:auto}"
         ".jaxviz img{image-rendering:pixelated;max-width:100%;height:auto}"
         ".jaxviz figure{display:inline-block;margin:3px;"
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


def png_uri(img: np.ndarray) -> str:
    """uint8 H x W or H x W x 3 (RGB) -> a PNG data URI (the pictures of the CLI's self-contained pages)."""
    return data_uri(png_bytes(img))


def inline(png: bytes, name: str) -> str:
    """The default image sink: the picture as a PNG data URI (a cell or page that needs no other file)."""
    return data_uri(png)


class ImageFiles:
    """An image sink factory for a page in the folder ``root``: :meth:`at` gives the sink of one result,
    which writes picture ``name`` as ``root/<prefix><names.get(name, name)>.png`` and returns that path
    relative to ``root`` (the ``src`` of the page's ``<img>``). A path this page already wrote gets
    ``_2``, ``_3``, ...; ``written`` lists every path, in order."""

    def __init__(self, root: "str | os.PathLike"):
        self.root = os.fspath(root)
        self.written: list[str] = []

    def at(self, prefix: str = "", names: Mapping[str, str] | None = None) -> ImageSink:
        from jaxviz.io.outputs import file_stem, inside

        names = dict(names or {})

        def sink(png: bytes, name: str) -> str:
            stem = prefix + file_stem(names.get(name, name))
            rel, k = f"{stem}.png", 1
            while rel in self.written:
                k += 1
                rel = f"{stem}_{k}.png"
            path = inside(self.root, rel)  # a prefix or name cannot lead out of the page's folder
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(png)
            self.written.append(rel)
            return rel

        return sink


def figure_png(fig, dpi: int = 72) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes, read from the header."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def img_tag(png: bytes, alt: str, title: str = "", name: str = "image", images: ImageSink = inline) -> str:
    """``<img>`` of the picture ``png`` (its ``src`` from the sink ``images``, under ``name``) with its pixel
    size, so a page shows it at the size it was drawn."""
    t = f" title='{esc(title, quote=True)}'" if title else ""
    w, h = png_size(png)
    return f"<img src='{esc(images(png, name), quote=True)}' width='{w}' height='{h}' alt='{esc(alt, quote=True)}'{t}>"


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


def patterns_html(res, limit: int = LIMIT, images: ImageSink = inline) -> str:
    from jaxviz.viz.writers import index_ranges

    n = len(res.filters)
    line = f"<p>units {esc(index_ranges(np.unique(res.filters)))}; mean objective {float(res.objective.mean()):.3g}"
    dead = int(np.asarray(res.dead).sum())
    line += (f", {dead} dead" if dead else "") + "</p>"
    if res.photo_best is not None:
        line += f"<p>quality: {esc(res.summary())}</p>"
    return _wrap(f"Patterns: {n} feature visualisations", line + img_tag(patterns_png(res, limit), "patterns",
                                                                        name="patterns", images=images)
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


def _shown_map(res, i: int, j: int) -> np.ndarray:
    """Map ``j`` of image ``i`` as the CLI's overlays draw it: a pixel-level map scaled from its 1st to its
    99th percentile (:func:`jaxviz.viz.render.display_map`), a layer map as it is."""
    from jaxviz.methods.attribution import INPUT_METHODS
    from jaxviz.viz.render import display_map

    return display_map(res.heatmaps[i, j]) if res.method in INPUT_METHODS else res.heatmaps[i, j]


def _cams_figures(res, photos, limit: int, size: int, images: ImageSink) -> str:
    from jaxviz.viz.render import plain_map, superimpose

    n, k = res.heatmaps.shape[:2]
    what = cams_what(res)
    figs = []
    for i in range(min(n, limit)):
        for j in range(k):
            c = int(res.classes[i, j])
            p = float(np.asarray(res.probs)[i, c]) if 0 <= c < np.shape(res.probs)[-1] else float("nan")
            if photos is None:
                pic = plain_map(_shown_map(res, i, j), (size, size))
            else:  # a small photo (a 28-pixel digit) is enlarged after blending: nearest, an integer factor
                pic = superimpose(photos[i], _shown_map(res, i, j))
                zoom = max(1, -(-size // max(pic.shape[:2])))
                pic = np.repeat(np.repeat(pic, zoom, 0), zoom, 1)
            blank = "<br>blank: all zero" if not np.any(res.heatmaps[i, j]) else ""  # else it reads as "cold"
            figs.append(f"<figure>{img_tag(png_bytes(pic), f'{what} map', what, f'image{i}_class{c}', images)}"
                        f"<figcaption>image {i}: class {c}, p={p:.2f}{blank}</figcaption></figure>")
    return "".join(figs) + _more(min(n, limit), n, "images")


def cams_html(res, limit: int = 16, size: int = 128, images: ImageSink = inline) -> str:
    """Each image's map in the overlay's JET colours (:func:`jaxviz.viz.render.plain_map`), with class and
    probability; the title names the method and the layer. Pixel-level maps are scaled as the CLI's
    overlays scale them (:func:`jaxviz.viz.render.display_map`). ``Cams`` records no photos: with them,
    :class:`CamsOnPhotos` draws the maps over the photos."""
    from jaxviz.methods.attribution import INPUT_METHODS

    n, k = res.heatmaps.shape[:2]
    scale = ", drawn from their 1st to 99th percentile" if res.method in INPUT_METHODS else ""
    return _wrap(f"Cams: {cams_what(res)}; {n} images x {k} classes, maps {res.heatmaps.shape[2]}x"
                 f"{res.heatmaps.shape[3]} in [0, 1]{scale}", _cams_figures(res, None, limit, size, images))


class CamsOnPhotos(NamedTuple):
    """A :class:`~jaxviz.Cams` with the photos it explains (uint8 RGB or grey, N x H x W x C, as loaded,
    before preprocessing): its HTML draws each map over its photo as ``jaxviz gradcam`` writes its
    overlays (:func:`jaxviz.viz.render.superimpose`: the map resized to the photo by OpenCV, JET, alpha 0.4
    added to the photo, clipped; a pixel-level map scaled to its 99th percentile first)."""

    cams: Any
    photos: np.ndarray

    def _repr_html_(self) -> str:
        return html(self)


def cams_on_photos_html(res: CamsOnPhotos, limit: int = 16, size: int = 128, images: ImageSink = inline) -> str:
    cams = res.cams
    n, k = cams.heatmaps.shape[:2]
    if len(res.photos) != n:
        from jaxviz.errors import JaxvizError

        raise JaxvizError(f"CamsOnPhotos: {len(res.photos)} photos for {n} maps")
    return _wrap(f"Cams: {cams_what(cams)} over the photos (JET, alpha 0.4); {n} images x {k} classes",
                 _cams_figures(cams, np.asarray(res.photos), limit, size, images))


class Comparison(NamedTuple):
    """Several attribution methods on the same photos: ``photos`` uint8 N x H x W x C, ``cams`` ``{method:
    Cams}`` (each with N maps, the first class of each image drawn), ``names`` of the photos and the
    ``labels`` of the classes explained (one each). Its picture is one grid: a column per photo, a row per
    method; layer maps over the photo (JET, alpha 0.4), pixel maps alone (over a photo they read as
    speckle) scaled from their 1st to 99th percentile, a blank map a grey cell that says why; a colour
    bar under it. Many methods: the layer maps and the pixel maps side by side where both fit
    :data:`MAX_WIDTH`."""

    photos: np.ndarray
    cams: Mapping[str, Any]
    names: Sequence[str]
    labels: Sequence[str]

    def _repr_html_(self) -> str:
        return html(self)

    def blank(self) -> dict[tuple[int, str], str]:
        """``{(image, method): why}`` for each all-zero map (why: the method's recorded cause)."""
        from jaxviz.methods.attribution import method_record

        return {(i, m): method_record(m).zero_cause for m, c in self.cams.items()
                for i, h in enumerate(np.asarray(c.heatmaps)[:, 0]) if not np.any(h > 0)}


def comparison_png(cmp: Comparison, label_width: int = 150) -> bytes:
    from jaxviz.methods.attribution import method_record
    from jaxviz.viz.render import (colour_bar, display_map, labelled_grid, plain_map, side_by_side, stack_rows,
                                   superimpose, text_cell)

    photos, methods, blank = np.asarray(cmp.photos), list(cmp.cams), cmp.blank()
    at_layer = [m for m in methods if method_record(m).family == "layer"]
    cell = 128 if min(photos.shape[1:3]) >= 64 else 84  # small digits: 3x, nearest, still crisp
    first = cmp.cams[methods[0]]
    probs = [float(np.asarray(first.probs)[i, int(first.classes[i, 0])]) for i in range(len(photos))]

    def block(group: list[str]) -> np.ndarray:
        cells, rows = [list(photos)], ["photo"]
        for m in group:
            c = cmp.cams[m]
            rows.append(f"{m}\nat {c.layer}" if m in at_layer else f"{m}\nplain map at the input")
            row = []
            for i, p in enumerate(photos):
                h = np.asarray(c.heatmaps)[i, 0]
                if (i, m) in blank:
                    row.append(text_cell(f"blank {m} map: {blank[(i, m)]}", cell))
                elif m in at_layer:
                    row.append(superimpose(p, h))
                else:
                    row.append(plain_map(display_map(h), (cell, cell)))
            cells.append(row)
        cols = [f"{n}\nclass: {name}\np = {p:.2f}" for n, name, p in zip(cmp.names, cmp.labels, probs)]
        return labelled_grid(cells, cols, rows, cell=cell, label_width=label_width)

    groups = [g for g in (at_layer, [m for m in methods if m not in at_layer]) if g]
    fits = 2 * (label_width + len(photos) * (cell + 4)) + 16 <= MAX_WIDTH  # two blocks side by side
    groups = groups if len(methods) > 6 and fits else [methods]
    grid = side_by_side(*[block(g) for g in groups])
    grid = stack_rows(grid, colour_bar(max(grid.shape[1], 340), "JET: layer maps over the photo at alpha 0.4; "
                                                                 "pixel maps alone, scaled from their 1st to their "
                                                                 "99th percentile"))
    return png_bytes(grid)


def comparison_html(cmp: Comparison, images: ImageSink = inline) -> str:
    blank = "".join(f"<p>blank: {esc(cmp.names[i])}, {esc(m)}: {esc(why)}</p>" for (i, m), why in
                    sorted(cmp.blank().items()))
    return _wrap(f"Comparison of {len(cmp.cams)} attribution methods on {len(cmp.photos)} photos",
                 img_tag(comparison_png(cmp), "every method's maps on the photos", name="compare", images=images)
                 + blank)


class Predictions(NamedTuple):
    """A model's output on pictures: ``images`` uint8 N x H x W x C (as shown), ``probs`` N x classes,
    ``classes`` the class each picture is labelled with (its top-1, or the class it was drawn for),
    ``labels`` the names of those classes, ``names`` of the pictures; ``what``: the word before the
    class name (``"top-1"``; ``""``: the label alone)."""

    images: np.ndarray
    probs: np.ndarray
    classes: Sequence[int]
    labels: Sequence[str]
    names: Sequence[str]
    what: str = "top-1"

    def _repr_html_(self) -> str:
        return html(self)


def predictions_png(pr: Predictions) -> bytes:
    """One row: each picture (160 pixels, small ones 84, nearest) under its name, class and probability."""
    from jaxviz.viz.render import labelled_grid

    cell = 160 if min(np.shape(pr.images)[1:3]) >= 64 else 84
    cols = ["\n".join(t for t in (n, f"{pr.what}: {lab}" if pr.what else lab, f"p = {float(pr.probs[i][c]):.2f}") if t)
            for i, (n, c, lab) in enumerate(zip(pr.names, pr.classes, pr.labels))]
    per_row = max(1, MAX_WIDTH // (cell + 4))
    rows = [list(pr.images[k:k + per_row]) for k in range(0, len(pr.images), per_row)]
    heads = [cols[k:k + per_row] for k in range(0, len(cols), per_row)]
    from jaxviz.viz.render import stack_rows

    return png_bytes(stack_rows(*[labelled_grid([r], h, [""], cell=cell) for r, h in zip(rows, heads)]))


def predictions_html(pr: Predictions, images: ImageSink = inline) -> str:
    return _wrap(f"Predictions on {len(pr.images)} pictures",
                 img_tag(predictions_png(pr), "pictures with class and probability", name="predictions",
                         images=images))


def activations_html(acts, limit: int = 16, per_row: int = 16, images: ImageSink = inline) -> str:
    """The first image's grid per layer, as the CLI's ``write_activations`` draws it (normalised channels),
    each map enlarged by the integer factor that makes it at least :data:`MIN_TILE` pixels (nearest);
    at most ``per_row`` maps a row, fewer where the row would be wider than :data:`MAX_WIDTH`."""
    from jaxviz.viz.render import activation_grid

    rows, names = [], list(acts)
    for name in names[:limit]:
        a = np.asarray(acts[name])
        shape = "x".join(map(str, a.shape))
        if a.ndim == 4:
            zoom = max(1, -(-MIN_TILE // min(a.shape[1:3])))  # a 7x7 map drawn 42 px: visible at its own size
            g = activation_grid(a[0][..., :256], max(1, min(per_row, MAX_WIDTH // (a.shape[2] * zoom))))
            extra = f" (first 256 of {a.shape[-1]} channels)" if a.shape[-1] > 256 else ""
            img = np.repeat(np.repeat(g.image, zoom, 0), zoom, 1)
            extra += f", drawn {zoom}x" if zoom > 1 else ""
            rows.append(f"<figure>{img_tag(png_bytes(img), name, name=name, images=images)}<figcaption>{esc(name)} "
                        f"{shape}: {g.dead} dead{extra}</figcaption></figure><br>")
        else:
            rows.append(f"<p>{esc(name)} {shape} (not spatial)</p>")
    return _wrap(f"Activations of {len(names)} layers (first image)", "".join(rows) + _more(min(len(names), limit),
                                                                                          len(names), "layers"))


def weights_png(lw) -> bytes:
    from jaxviz.viz.plotting import histograms

    return figure_png(histograms({f"{lw.layer}": (lw.counts, lw.edges)}))


def kernels_png(lw) -> bytes | None:
    """A conv kernel's first 32 filters as the CLI's ``write_weights`` draws them (seed 004's 2x16 mosaic,
    input channel 0, vmin -0.5, vmax 0.5; colour tiles for 3 input channels); None for other kernels."""
    from jaxviz.methods.weights import kernel_tiles
    from jaxviz.viz.plotting import kernel_mosaic

    if np.ndim(lw.kernel) != 4:
        return None
    channel = "rgb" if lw.kernel.shape[2] == 3 else 0
    what = "kernel[..., :32] as colour tiles" if channel == "rgb" else "kernel[:, :, 0, :32]"
    return figure_png(kernel_mosaic(kernel_tiles(lw.kernel, channel, limit=32), title=f"{lw.layer}: {what}"))


def weights_html(lw, images: ImageSink = inline) -> str:
    from jaxviz.methods.weights import STAT_NAMES

    stats = ", ".join(f"{n} {float(v):.3g}" for n, v in zip(STAT_NAMES, lw.stats))
    kernels = kernels_png(lw)
    mosaic = "" if kernels is None else "<br>" + img_tag(kernels, "kernels", name=f"{lw.layer}_kernels", images=images)
    return _wrap(f"LayerWeights {lw.layer}: kernel {'x'.join(map(str, lw.kernel.shape))}",
                 f"<p>{esc(stats)}</p>" + img_tag(weights_png(lw), "histogram", name=f"{lw.layer}_hist", images=images)
                 + mosaic)


def all_zero(la, u: int) -> bool:
    """Unit ``u`` of a :class:`~jaxviz.LayerAtlas` is dead and its top values are all 0 (after a ReLU): its
    exemplars are ties, arbitrary images, so none is drawn. A dead unit of a layer read before its
    activation (all values negative) keeps its ranked exemplars."""
    return bool(la.dead[u]) and not np.any(la.values[u][la.indices[u] >= 0])


def _layer_atlas_html(layer: str, la, paths, input_shape, units: int, k: int, images: ImageSink = inline) -> str:
    from jaxviz.viz.render import framed_crop

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
            if i < 0 or coll is None or all_zero(la, u):  # a dead unit's top images are ties at 0
                continue
            try:
                crop = framed_crop(coll.read(int(i)), None, la.boxes[u, j])
            except Exception:  # noqa: BLE001
                continue
            tag = img_tag(png_bytes(crop), "exemplar", str(paths[int(i)]), f"{layer}_unit{int(la.units[u])}_{j}",
                          images)
            figs.append(f"<figure>{tag}<figcaption>{la.values[u, j]:.3g}</figcaption></figure>")
        cards.append(f"<div class='card'><div>unit {int(la.units[u])} · max {la.max[u]:.3g} · mean {la.mean[u]:.3g}"
                     f" · fires {la.fire_rate[u]:.1%}{' · <b>dead</b>' if la.dead[u] else ''}</div>{''.join(figs)}</div>")
    return (head + _fire_png_tag(la, f"{layer}_fire_rates", images) + "<br>" + "".join(cards)
            + _more(len(shown), len(la.units), "units"))


def _fire_png_tag(la, name: str = "fire_rates", images: ImageSink = inline) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 1.6))
    ax.bar(np.arange(len(la.units)), np.asarray(la.fire_rate), width=1.0)
    ax.set_xlabel("unit (position)", fontsize=8)
    ax.set_ylabel("fire rate", fontsize=8)
    ax.tick_params(labelsize=7)
    return img_tag(figure_png(fig), "fire rates", name=name, images=images)


def atlas_html(atlas, units: int = ATLAS_UNITS, k: int = ATLAS_EXEMPLARS, images: ImageSink = inline) -> str:
    body = f"<p>{atlas.count} images, reduce {esc(atlas.reduce)}, input {atlas.input_shape[0]}x{atlas.input_shape[1]}"
    body += (f"; {len(atlas.failures)} unreadable" if atlas.failures else "") + "</p>"
    for layer, la in atlas.layers.items():
        body += _layer_atlas_html(layer, la, atlas.paths, atlas.input_shape, units, k, images)
    return _wrap(f"Atlas of {len(atlas.layers)} layers", body)


def curves_png(ev) -> bytes:
    """The mean deletion and insertion curves of an :class:`~jaxviz.Evaluation` (the random map dashed),
    at 100 dpi: the picture of its HTML and the CLI's ``curves.png``, the same bytes."""
    from jaxviz.viz.plotting import curves_figure

    return figure_png(curves_figure(ev.curves), dpi=100)


def evaluation_html(ev, images: ImageSink = inline) -> str:
    fmt = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
    beats = lambda r: "" if r["beats_random"] is None else f"{100 * r['beats_random']:.0f}%"  # noqa: E731
    rows = "".join(f"<tr><td style='text-align:left'>{esc(r['method'])}</td><td style='text-align:left'>"
                   f"{esc(r['metric'])}{' ↑' if r['higher_is_better'] else ' ↓'}</td><td>{fmt(r['mean'])}</td>"
                   f"<td>[{fmt(r['low'])}, {fmt(r['high'])}]</td><td>{r['n']}</td><td>{beats(r)}</td></tr>"
                   for r in ev.leaderboard)
    table = ("<table><tr><th>method</th><th>metric</th><th>mean</th><th>95% interval</th><th>n</th>"
             f"<th>beats random</th></tr>{rows}</table>")
    curves = img_tag(curves_png(ev), "mean deletion and insertion curves", name="curves",
                     images=images) if ev.curves else ""
    methods = [m for m in ev.scores if m != "random"]
    against = " against the random map" if "random" in ev.scores else ""
    return _wrap(f"Evaluation of {', '.join(methods)}{against} over {len(ev.paths)} images", table + curves)


def loaded_html(loaded, limit: int = 200, images: ImageSink = inline) -> str:
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


def html(result: Any, images: ImageSink = inline) -> str:
    """The self-contained HTML of any jaxviz result (what its ``_repr_html_`` returns). ``images``: where
    its pictures go (:func:`inline` data URIs; :class:`ImageFiles` for a page with files beside it)."""
    from jaxviz.methods.activations import Activations
    from jaxviz.methods.atlas import Atlas, LayerAtlas
    from jaxviz.methods.attribution import Cams
    from jaxviz.methods.evaluate import Evaluation
    from jaxviz.methods.featurevis.quality import Patterns
    from jaxviz.methods.weights import LayerWeights
    from jaxviz.nn.protocol import Loaded

    draw: dict[type, Callable[..., str]] = {
        Patterns: patterns_html, Cams: cams_html, CamsOnPhotos: cams_on_photos_html, Comparison: comparison_html,
        Predictions: predictions_html, Activations: activations_html, LayerWeights: weights_html,
        Atlas: atlas_html, Evaluation: evaluation_html, Loaded: loaded_html,
        LayerAtlas: lambda r, images: _wrap("LayerAtlas", _layer_atlas_html("layer", r, None, None, ATLAS_UNITS, 0,
                                                                           images))}
    for kind, fn in draw.items():
        if isinstance(result, kind):
            return fn(result, images=images)
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
