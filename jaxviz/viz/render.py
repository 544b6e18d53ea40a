"""Turning arrays into uint8 pictures: activation grids, stitched pattern grids, heatmap overlays, the
framed receptive-field crops of the atlas and concept pages."""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from jaxviz.nn.finite import all_finite, finite_entries

CROP_PX = 72  # exemplar crops (atlas and concept cards) are drawn this tall


class Grid(NamedTuple):
    image: np.ndarray  # uint8 (rows*H, per_row*W)
    dead: int  # channels with zero variance (rendered mid-grey)


def normalize_channels(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seeds' display recipe for every channel at once.

    ``act``: H x W x C float. Per channel: subtract the mean, divide by the std, x64, +128, clip to
    [0, 255], truncate to uint8. Returns (H x W x C uint8, dead mask of C). A channel with zero
    variance (or no finite value) renders 128 instead of NaN. Statistics are taken in float64, so
    huge float32 values cannot overflow them.
    """
    act = np.asarray(act, np.float32)
    if act.ndim != 3:
        raise ValueError(f"expected an H x W x C activation, got shape {act.shape}")
    if not all_finite(act):
        big = np.finfo(np.float32).max
        act = np.nan_to_num(act, nan=0.0, posinf=big, neginf=-big)
    mean = act.mean(axis=(0, 1), dtype=np.float64)
    std = np.sqrt(np.square(act - mean.astype(np.float32), dtype=np.float64).mean(axis=(0, 1)))
    dead = ~(std > 0) | ~finite_entries(std)
    gain = np.where(dead, 0.0, 64.0 / np.where(dead, 1.0, std))
    # float64 for the affine step: float32 (x - mean) could overflow for |x| near float32's max
    scaled = (act - mean) * gain + 128.0
    return np.clip(scaled, 0, 255).astype(np.uint8), dead


def activation_grid(act: np.ndarray, images_per_row: int = 16) -> Grid:
    """Tile every channel of an H x W x C activation into one uint8 grid, ``images_per_row`` wide.

    Unlike the seed (``n_features // images_per_row`` rows), every channel is kept; the partial last
    row is padded with black (0), as the seed's empty grid is.
    """
    if images_per_row < 1:
        raise ValueError(f"images_per_row must be >= 1, got {images_per_row}")
    tiles, dead = normalize_channels(act)
    h, w, n = tiles.shape
    rows = -(-n // images_per_row)
    padded = np.zeros((h, w, rows * images_per_row), np.uint8)
    padded[..., :n] = tiles
    grid = padded.reshape(h, w, rows, images_per_row).transpose(2, 0, 3, 1).reshape(rows * h, images_per_row * w)
    return Grid(grid, int(dead.sum()))


def layer_summary(acts: Mapping[str, np.ndarray], images_per_row: int = 16) -> list[dict]:
    """Per layer of the first image: shape, dead channels (zero variance) and the rendered grid."""
    out = []
    for name, a in acts.items():
        a = np.asarray(a)[0]
        if a.ndim != 3:
            out.append({"layer": name, "shape": a.shape, "dead": 0, "channels": int(a.shape[-1]), "grid": None})
            continue
        grid = activation_grid(a, images_per_row)
        out.append({"layer": name, "shape": a.shape, "dead": grid.dead, "channels": int(a.shape[-1]), "grid": grid.image})
    return out


def fit_columns(n: int, widest: int = 8) -> int:
    """Columns for a grid of ``n`` pictures, at most ``widest``: all in one row when they fit, else the
    width from ``widest`` down to half of it that leaves the fewest empty cells (the widest of equals),
    so 4 patterns are a 4-wide row and 12 are two rows of 6, not an 8-wide grid with black cells."""
    if n <= widest:
        return max(n, 1)
    return min(range(widest, (widest + 1) // 2 - 1, -1), key=lambda c: (-n) % c)


def stitch(images: np.ndarray, n_cols: int = 8, margin: int = 5, n_rows: int | None = None) -> np.ndarray:
    """Stitch N x H x W x C uint8 images into a grid with black ``margin`` pixels between them.

    Image ``k`` goes to row ``k // n_cols``, column ``k % n_cols`` (row-major; the seed's Listing 5.39
    fills column-major, ``i + j*8``, which is the transpose of the same layout). Missing cells are black.
    """
    images = np.asarray(images)
    n, h, w = images.shape[:3]
    rest = images.shape[3:]
    n_rows = n_rows or -(-n // n_cols)
    out = np.zeros((n_rows * h + (n_rows - 1) * margin, n_cols * w + (n_cols - 1) * margin) + rest, images.dtype)
    for k in range(min(n, n_rows * n_cols)):  # at most a few hundred block copies
        r, c = divmod(k, n_cols)
        out[r * (h + margin): r * (h + margin) + h, c * (w + margin): c * (w + margin) + w] = images[k]
    return out


def display_map(heatmap: np.ndarray, percentile: float | None = 99.0) -> np.ndarray:
    """A pixel-level attribution map (saliency, SmoothGrad, IG, guided, RISE) scaled for display: from its
    ``100 - percentile``-th to its ``percentile``-th value onto [0, 1], clipped, as Smilkov et al. (2017)
    show SmoothGrad. A few extreme pixels otherwise set the scale and the rest of the map stays dark
    (blue under JET); a map with a high floor (RISE's, every pixel kept by some masks) otherwise reads
    as one flat red. Gradient maps have a floor near 0, so for them this is the division by the
    ``percentile``-th value. ``None``: as is."""
    m = np.asarray(heatmap, np.float32)
    if percentile is None:
        return m
    lo, top = (float(v) for v in np.percentile(m, [100.0 - percentile, percentile]))
    return np.clip((m - lo) / (top - lo), 0, 1) if top > lo else m


def superimpose(photo: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Listing 5.44 done right: heatmap resized to the photo with OpenCV, JET colours, ``alpha`` x heatmap
    + photo, clipped to uint8, RGB in and RGB out (the seed wrote an unclipped BGR float)."""
    import cv2

    photo = np.asarray(photo)
    if photo.ndim == 3 and photo.shape[-1] == 1:
        photo = np.repeat(photo, 3, axis=-1)
    h, w = photo.shape[:2]
    jet = _jet(cv2.resize(np.asarray(heatmap, np.float32), (w, h)))
    return np.clip(jet.astype(np.float32) * alpha + photo.astype(np.float32), 0, 255).astype(np.uint8)


def _jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB in OpenCV's JET, the colours of every map jaxviz draws."""
    import cv2

    v = np.uint8(255 * np.clip(np.asarray(values, np.float32), 0, 1))
    return cv2.applyColorMap(v.reshape(v.shape[0], -1), cv2.COLORMAP_JET)[..., ::-1].reshape(v.shape + (3,))


def framed_crop(pixels: np.ndarray, heat: np.ndarray | None, box, height: int = CROP_PX) -> np.ndarray:
    """An exemplar around its receptive-field ``box`` (top, left, bottom, right in input pixels), with
    half the box's size of context on each side, the box drawn in yellow and ``heat`` (0..1 at the
    input size, or None) overlaid in JET where it is strong (each pixel blended by half its heat),
    scaled to ``height`` pixels tall (nearest); RGB uint8. ``pixels``: H x W x 1 or x 3."""
    import cv2

    rgb = np.repeat(pixels, 3, -1) if pixels.shape[-1] == 1 else pixels
    rgb = np.clip(rgb, 0, 255).astype(np.float32)
    if heat is not None:
        a = np.clip(heat, 0, 1)[..., None]
        rgb = rgb * (1 - 0.5 * a) + _jet(a[..., 0]).astype(np.float32) * 0.5 * a
    h, w = rgb.shape[:2]
    t, l, b, r = (int(v) for v in box)
    mh, mw = max(1, (b - t) // 2), max(1, (r - l) // 2)
    ct, cl, cb, cr = max(0, t - mh), max(0, l - mw), min(h, max(b, t + 1) + mh), min(w, max(r, l + 1) + mw)
    crop = rgb[ct:cb, cl:cr]
    scale = height / crop.shape[0]
    size = (max(1, round(crop.shape[1] * scale)), height)
    big = cv2.resize(np.uint8(crop), size, interpolation=cv2.INTER_NEAREST)
    p0 = (round((l - cl) * scale), round((t - ct) * scale))
    p1 = (max(p0[0], round((r - cl) * scale) - 1), max(p0[1], round((b - ct) * scale) - 1))
    return cv2.rectangle(np.ascontiguousarray(big), p0, p1, (255, 220, 0), 1)


def plain_map(heatmap: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A map in [0, 1] alone (no photo under it) in the overlay's JET colours, resized to ``size`` (H, W)
    bilinearly: the view in which a pixel-level attribution reads as a picture and not as speckle."""
    import cv2

    m = np.asarray(heatmap, np.float32)
    if size is not None:
        m = cv2.resize(m, (size[1], size[0]))
    return np.ascontiguousarray(_jet(m))


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def wrap(text: str, width_px: int, font_size: int = 13) -> str:
    """``text`` with line breaks so that each line fits ``width_px`` pixels in the default font: at spaces
    (and after ``_``, ``-``, ``/`` inside a long word), a word longer than a line cut into pieces. Nothing
    is dropped: a label is never cut short."""
    from PIL import Image, ImageDraw

    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font(font_size)
    fits = lambda s: draw.textlength(s, font=font) <= width_px  # noqa: E731
    out = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if fits(cand):
                line = cand
                continue
            if line:
                out.append(line)
            line = ""
            while word and not fits(word):  # a long word: break after _ - / where it can, else anywhere
                cut = max(k for k in range(1, len(word) + 1) if k == 1 or fits(word[:k]))
                soft = max((k + 1 for k in range(cut - 1) if word[k] in "_-/."), default=0)
                cut = soft if soft > cut // 2 else cut
                out.append(word[:cut])
                word = word[cut:]
            line = word
        out.append(line)
    return "\n".join(out)


def text_cell(text: str, cell: int = 128, font_size: int = 12) -> np.ndarray:
    """A ``cell`` x ``cell`` light grey RGB picture carrying ``text`` (wrapped to fit): what a grid shows
    in place of a map that is blank, with why."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (cell, cell), (236, 236, 236))
    lines = wrap(text, cell - 8, font_size)
    while font_size > 7 and (lines.count("\n") + 1) * (font_size + 3) > cell - 8:  # smaller until it fits
        font_size -= 1
        lines = wrap(text, cell - 8, font_size)
    ImageDraw.Draw(im).multiline_text((4, 4), lines, fill=(60, 60, 60), font=_font(font_size), spacing=2)
    return np.asarray(im)


def colour_bar(width: int, label: str = "attribution, scaled to 0..1", font_size: int = 12) -> np.ndarray:
    """A horizontal JET colour bar ``width`` pixels wide with 0, 0.5 and 1 marked and ``label`` beneath;
    RGB uint8 on white, to put under a grid of maps."""
    from PIL import Image, ImageDraw

    bar_w, bar_h, pad = max(60, min(width - 20, 320)), 12, 10
    label = wrap(label, width - 2 * pad, font_size)
    lines = label.count("\n") + 1
    im = Image.new("RGB", (width, bar_h + (1 + lines) * (font_size + 3) + 3 * pad), "white")
    im.paste(Image.fromarray(_jet(np.tile(np.linspace(0, 1, bar_w), (bar_h, 1)))), (pad, pad))
    draw, font = ImageDraw.Draw(im), _font(font_size)
    for v in (0.0, 0.5, 1.0):
        x = pad + round(v * (bar_w - 1))
        t = f"{v:g}"
        draw.text((x - draw.textlength(t, font=font) / 2, pad + bar_h + 2), t, fill="black", font=font)
    draw.multiline_text((pad, pad + bar_h + font_size + 8), label, fill="black", font=font, spacing=3)
    return np.asarray(im)


def side_by_side(*images: np.ndarray, gap: int = 16) -> np.ndarray:
    """RGB uint8 pictures left to right, ``gap`` white pixels apart, top-aligned on white."""
    h = max(im.shape[0] for im in images)
    parts = []
    for k, im in enumerate(images):
        parts.append(np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=255))
        if k < len(images) - 1:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def stack_rows(*images: np.ndarray) -> np.ndarray:
    """RGB uint8 pictures one above the other, left-aligned on white."""
    w = max(im.shape[1] for im in images)
    rows = [np.pad(im, ((0, 0), (0, w - im.shape[1]), (0, 0)), constant_values=255) for im in images]
    return np.concatenate(rows, axis=0)


def labelled_grid(cells: list[list[np.ndarray]], col_labels: list[str], row_labels: list[str], cell: int = 128,
                  gap: int = 4, label_width: int = 150, font_size: int = 13) -> np.ndarray:
    """Rows x columns of pictures in one RGB uint8 image: each picture (H x W, H x W x 1 or x 3, uint8)
    resized to ``cell`` x ``cell`` (nearest when it is enlarged 2x or more, so digits stay crisp), a header
    with ``col_labels`` above the columns and ``row_labels`` (``\\n`` for several lines) at the left of
    the rows, on white. Labels are wrapped to their column's or the label column's width (:func:`wrap`),
    never cut; the header and the rows grow to hold them. A comparison of methods across photos, or a
    labelled row of patterns."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    line = font_size + 3
    rows, cols = len(cells), max(len(r) for r in cells)
    col_labels = [wrap(lab, cell - 2, font_size) for lab in col_labels]
    left = label_width if any(row_labels) else 0
    row_labels = [wrap(lab, left - 4, font_size) if left else "" for lab in row_labels]
    head = line * max((lab.count("\n") + 1 for lab in col_labels), default=1) + gap
    heights = [max(cell, line * (lab.count("\n") + 1) + 4) for lab in row_labels] or [cell] * rows
    tops = np.concatenate([[0], np.cumsum([h + gap for h in heights])]).astype(int)
    canvas = Image.new("RGB", (left + cols * (cell + gap), head + int(tops[-1])), "white")
    draw = ImageDraw.Draw(canvas)
    for j, lab in enumerate(col_labels):
        draw.multiline_text((left + j * (cell + gap) + 2, 1), lab, fill="black", font=font, spacing=3)
    for i, row in enumerate(cells):
        y = head + int(tops[i])
        if left:
            draw.multiline_text((2, y + 2), row_labels[i], fill="black", font=font, spacing=3)
        for j, pic in enumerate(row):
            pic = np.asarray(pic)
            if pic.ndim == 3 and pic.shape[-1] == 1:
                pic = pic[..., 0]
            im = Image.fromarray(pic).convert("RGB")
            if im.size != (cell, cell):
                big = cell >= 2 * max(im.size)
                im = im.resize((cell, cell), Image.NEAREST if big else Image.BILINEAR)
            canvas.paste(im, (left + j * (cell + gap), y))
    return np.asarray(canvas)
