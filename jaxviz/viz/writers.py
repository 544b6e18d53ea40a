"""Library results turned into files (PNG, npz) inside a staging directory.

Shared by the ``jaxviz`` subcommands and ``jaxviz demo`` (which keeps their data files and shows each
result's own HTML, :mod:`jaxviz.viz.display`, whose renderers draw the writers' grids and curves: one
renderer, two outputs). Each writer returns the files it wrote as :class:`Written` (path relative to
the stage, caption) plus what the caller prints.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.errors import show
from jaxviz.io import save_npz, save_png
from jaxviz.io.outputs import file_stem, inside
from jaxviz.nn.protocol import Model


class Written(NamedTuple):
    path: str  # relative to the stage directory
    caption: str


UNTRAINED = "UNTRAINED weights"  # said in every title and caption of a model with fresh random parameters


def untrained_note(text: str, trained: bool) -> str:
    """``text`` as it is for trained weights, else ``"UNTRAINED weights: " + text`` (titles, captions)."""
    return text if trained else f"{UNTRAINED}: {text}"


def _join(stage: str, rel: str) -> str:
    path = inside(stage, rel)  # every path a writer makes is checked to lie inside the stage
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _stems(names: Sequence[str]) -> dict[str, str]:
    """``{name: file stem}`` for names from a model or a file (:func:`jaxviz.io.outputs.file_stem`)."""
    return {n: file_stem(n) for n in names}


def _write_names(stage: str, prefix: str, stems: Mapping[str, str]) -> list[Written]:
    """``<prefix>names.json``, ``{file stem: real name}``, when some name was not its own stem."""
    changed = {v: k for k, v in stems.items() if v != k}
    if not changed:
        return []
    rel = f"{prefix}names.json"
    with open(_join(stage, rel), "w", encoding="utf-8") as f:
        json.dump(changed, f, indent=1, ensure_ascii=True)
    return []


def write_activations(stage: str, model: Model, params: Any, x: np.ndarray, layers: Sequence[str],
                      per_row: int = 16, prefix: str = "", trained: bool = True) -> tuple[list[Written], list[dict]]:
    """``<prefix><layer>.png`` per conv/pool layer (seed Listing 5.31 grids) and ``<prefix>activations.npz``
    (H x W x C float32 per layer, first image). Returns the files and :func:`layer_summary` rows.
    ``trained=False``: titles and captions say the weights are untrained."""
    from jaxviz.methods.activations import activations
    from jaxviz.viz.render import layer_summary
    from jaxviz.viz.plotting import activation_figure, save_figure

    if per_row < 1:
        raise JaxvizError(f"--per-row must be at least 1, got {per_row}")
    acts = {k: np.asarray(v) for k, v in activations(model, params, x, layers).items()}
    summary = layer_summary(acts, per_row)
    files = []
    stems = _stems(acts)
    for row in summary:
        if row["grid"] is not None:
            rel = f"{prefix}{stems[row['layer']]}.png"
            save_figure(activation_figure(row["grid"], untrained_note(show(row["layer"], 60), trained),
                                          acts[row["layer"]].shape[1]), _join(stage, rel))
            files.append(Written(rel, untrained_note(f"{show(row['layer'])} {'x'.join(map(str, row['shape']))}: "
                                                     f"{row['dead']} of {row['channels']} channels dead", trained)))
    _write_names(stage, prefix, stems)
    save_npz(_join(stage, f"{prefix}activations.npz"), **{k: v[0] for k, v in acts.items()})
    return files, summary


def index_ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0..2, 5, 7..8"``: runs of consecutive indices, in the given order."""
    runs: list[list[int]] = []
    for i in map(int, indices):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def write_filters(stage: str, model: Model, params: Any, layer: str, filters: Sequence[int], recipe,
                  key: jax.Array, batch_size: int | None = None, on_chunk: Callable[[int], None] | None = None,
                  prefix: str = "", quality: bool = True, trained: bool = True):
    """``<prefix><layer>.png`` (a grid as wide as fits the count, at most 8; one row per unit when the
    recipe makes several patterns per unit; 5-pixel margins) and ``<prefix><layer>.npz`` with
    ``patterns``, ``images``, ``filters``, ``objective`` and the quality figures of
    :class:`~jaxviz.methods.features.Patterns` (``photo_best``, ``relative``, ``robustness``, ``hf_energy``,
    ``selectivity``;
    ``photos`` names the photos measured against). Returns the files and the Patterns. ``trained=False``:
    the caption says the weights are untrained (what the quality figures measure then is the architecture)."""
    from jaxviz.methods.features import PHOTOS, filter_patterns
    from jaxviz.viz.display import patterns_png

    res = filter_patterns(model, params, layer, filters, recipe, key, batch_size=batch_size, on_chunk=on_chunk,
                          quality=quality)
    stem = file_stem(layer)
    _write_names(stage, prefix, {layer: stem})
    rel = f"{prefix}{stem}.png"
    with open(_join(stage, rel), "wb") as f:  # the grid a notebook shows (Patterns._repr_png_), every pattern
        f.write(patterns_png(res, limit=len(res.images)))
    save_npz(_join(stage, f"{prefix}{stem}.npz"), patterns=res.patterns, images=res.images, filters=res.filters,
             objective=res.objective, photo_best=res.photo_best, relative=res.relative, robustness=res.robustness,
             hf_energy=res.hf_energy, selectivity=res.selectivity, photos=np.array(PHOTOS))
    dead = int(res.dead.sum())
    caption = (f"{show(layer)}: filters {index_ranges(np.unique(res.filters))}, mean objective "
               f"{res.history[:, 0].mean():.3g} -> {res.objective.mean():.3g}" + (f", {dead} dead" if dead else ""))
    if quality:
        caption += "; " + res.summary()
    return [Written(rel, untrained_note(caption, trained))], res


def write_cams(stage: str, sources: Sequence, cams, method: str, where: str, prefix: str = "",
               stems: Sequence[str] | None = None, trained: bool = True) -> list[Written]:
    """Per image ``<stem>_heatmap.png`` (matshow) and ``<stem>_overlay.png`` (JET, 0.4 alpha, clipped RGB;
    a pixel-level map is scaled to its 99th percentile first, :func:`~jaxviz.viz.render.display_map`);
    ``<prefix>gradcam.npz`` with ``heatmaps`` (N x h x w), ``classes`` and ``probs``. ``trained=False``:
    titles and captions say the weights are untrained."""
    from jaxviz.methods.attribution import LAYER_METHODS
    from jaxviz.viz.render import display_map, superimpose
    from jaxviz.io.images import image_stem, load_image
    from jaxviz.viz.plotting import heatmap_figure, save_figure

    if stems is None:
        stems = [file_stem(image_stem(src, i)) for i, src in enumerate(sources)]
        if len(set(stems)) != len(stems):
            stems = [f"{i}_{s}" for i, s in enumerate(stems)]
    stems = [file_stem(s) for s in stems]
    files = []
    for i, (src, stem) in enumerate(zip(sources, stems)):
        heat = cams.heatmaps[i, 0]
        label = f"{method} class {cams.classes[i, 0]} ({show(where)})"
        save_figure(heatmap_figure(heat, untrained_note(f"{stem}: {label}", trained)),
                    _join(stage, f"{prefix}{stem}_heatmap.png"))
        shown = heat if method in LAYER_METHODS else display_map(heat)  # pixel-level maps: 99th percentile
        save_png(_join(stage, f"{prefix}{stem}_overlay.png"), superimpose(load_image(src, channels=3), shown))
        files += [Written(f"{prefix}{stem}_overlay.png",
                          untrained_note(f"{stem}: {label}, p={cams.probs[i].max():.2f} top-1", trained)),
                  Written(f"{prefix}{stem}_heatmap.png", untrained_note(f"{stem}: raw {method} map", trained))]
    save_npz(_join(stage, f"{prefix}gradcam.npz"), heatmaps=cams.heatmaps[:, 0], classes=cams.classes[:, 0],
             probs=cams.probs)
    return files


def write_weights(stage: str, model: Model, params: Any, layers: Sequence[str], trained: bool,
                  untrained: Any | None = None, in_channel=None, bins: int = 10, prefix: str = ""):
    """``<layer>_hist.png`` (trained vs untrained side by side), ``<layer>_kernels[_untrained].png``
    (conv layers: seed 004's 2x16 mosaic) and ``weights.npz`` (``<layer>_{kernel,bias,counts,edges,stats}``,
    the same with ``untrained_``, and ``stat_names``). Returns the files and (layer, label, stats) rows."""
    from jaxviz.viz.plotting import histograms, kernel_mosaic, save_figure
    from jaxviz.methods.weights import STAT_NAMES, kernel_tiles, layer_weights

    if bins < 1:
        raise JaxvizError(f"--bins must be at least 1, got {bins}")
    for layer in layers:
        model.resolve(layer)
    arrays: dict[str, np.ndarray] = {"stat_names": np.array(STAT_NAMES)}
    files, rows = [], []
    stems = _stems(layers)
    _write_names(stage, prefix, stems)
    for layer in layers:
        stem, name = stems[layer], show(layer, 60)
        lw = layer_weights(model, params, layer, bins=bins)
        sets = {"trained" if trained else UNTRAINED: lw}
        if untrained is not None:
            sets["untrained (fresh init)"] = layer_weights(model, untrained, layer, bins=bins)
        for key, w in (("", lw), ("untrained_", sets.get("untrained (fresh init)"))):
            if w is not None:
                arrays.update({f"{layer}_{key}kernel": w.kernel, f"{layer}_{key}bias": w.bias,
                               f"{layer}_{key}counts": w.counts, f"{layer}_{key}edges": w.edges,
                               f"{layer}_{key}stats": w.stats})
        rel = f"{prefix}{stem}_hist.png"
        save_figure(histograms({f"{name}: {k}": (w.counts, w.edges) for k, w in sets.items()}), _join(stage, rel))
        files.append(Written(rel, f"{name}: histogram of kernel values, " + " vs ".join(sets)))
        if lw.kernel.ndim == 4:
            channel = in_channel
            if channel is None:
                channel = "rgb" if lw.kernel.shape[2] == 3 else 0
            elif channel != "rgb":
                try:
                    channel = int(channel)
                except ValueError:
                    raise JaxvizError(f"--in-channel takes an index or 'rgb', got {channel!r}") from None
            for k, w in sets.items():
                what = "kernel[..., :32] as colour tiles" if channel == "rgb" else f"kernel[:, :, {channel}, :32]"
                rel = f"{prefix}{stem}_kernels{'_untrained' if k.startswith('untrained (') else ''}.png"
                save_figure(kernel_mosaic(kernel_tiles(w.kernel, channel, limit=32), title=f"{name} {k}: {what}"),
                            _join(stage, rel))
                files.append(Written(rel, f"{name} {k}: {what}, vmin -0.5, vmax 0.5"))
        rows += [(layer, k, w.stats) for k, w in sets.items()]
    save_npz(_join(stage, f"{prefix}weights.npz"), **arrays)
    return files, rows


def write_evaluation(stage: str, ev, title: str = "jaxviz evaluate", prefix: str = "") -> list[Written]:
    """``<prefix>leaderboard.json``, ``leaderboard.csv``, ``scores.npz``, ``curves.png`` and ``index.html``
    of an :class:`~jaxviz.Evaluation`. The page is the result's own HTML (:func:`jaxviz.viz.display.page`:
    the leaderboard and the curves a notebook shows) and ``curves.png`` is that page's picture, byte for
    byte (:func:`jaxviz.viz.display.curves_png`). Returns ``curves.png``."""
    import csv

    from jaxviz.viz.display import curves_png, page

    with open(_join(stage, f"{prefix}leaderboard.json"), "w", encoding="utf-8") as f:
        json.dump(ev.leaderboard, f, indent=1)
    fields = ["method", "metric", "higher_is_better", "mean", "low", "high", "n", "beats_random"]
    with open(_join(stage, f"{prefix}leaderboard.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(ev.leaderboard)
    arrays = {"paths": np.array(ev.paths, dtype=str), "classes": ev.classes}
    for m, per in ev.scores.items():
        for name, v in per.items():
            arrays[f"{m}/{name}"] = v
    for m, per in ev.curves.items():
        for name, v in per.items():
            arrays[f"curves/{m}/{name}"] = v
    with open(_join(stage, f"{prefix}scores.npz"), "wb") as f:
        np.savez(f, **arrays)
    with open(_join(stage, f"{prefix}curves.png"), "wb") as f:
        f.write(curves_png(ev))
    with open(_join(stage, f"{prefix}index.html"), "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(page(ev, title))
    return [Written(f"{prefix}curves.png", "mean deletion and insertion curves per method (random map dashed)")]
