"""The pages jaxviz writes, opened in a real browser (Debian's Chromium, driven by Playwright with that
executable; ``playwright install`` is never needed): the atlas, evaluate, concepts and demo-gallery pages,
and the pages of results that draw themselves (``jaxviz.show``).

One checker, :func:`page_problems`, returns every problem of a page:

* a console error or an uncaught script error;
* an ``<img>`` that did not load (``naturalWidth == 0``);
* an ``<img>`` not shown at its own size. The rule: the drawn picture (its box less border and padding)
  is ``naturalWidth`` x ``naturalHeight`` (within half a pixel, at device pixel ratio 1), except images matching a selector the
  page deliberately scales (the atlas's ``img.pattern``: a 28-pixel feature visualisation drawn 72 pixels
  tall beside the exemplar crops, pixelated): those keep their aspect ratio (within one pixel) and are
  drawn no smaller than their natural size;
* horizontal overflow at a 1280-pixel-wide window (``document.documentElement.scrollWidth > 1280``).

The checker is shown to fail on broken copies of the atlas page (an image with a wrong path, a card wider
than the page, a script error, an image stretched by a style). On the atlas page the sort control must
reorder the cards by the statistic in ``atlas.npz``. A full-page screenshot of every page goes into the
test's temporary folder (and, with ``JAXVIZ_SCREENS=DIR``, is copied into DIR to look at).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the pages' jobs (the demo gallery alone ~70 s on 2 cores) and a browser

CHROMIUM = "/usr/bin/chromium"
WIDTH = 1280
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian package 'chromium'; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright; "
                                                             "the browser is Debian's chromium, no playwright install)")

IMAGES = """() => Array.from(document.images).map((im, i) => {
  const r = im.getBoundingClientRect(), cs = getComputedStyle(im), px = k => parseFloat(cs[k]) || 0;
  const w = r.width - px('borderLeftWidth') - px('borderRightWidth') - px('paddingLeft') - px('paddingRight');
  const h = r.height - px('borderTopWidth') - px('borderBottomWidth') - px('paddingTop') - px('paddingBottom');
  return {i, src: (im.getAttribute('src') || '').slice(0, 60), complete: im.complete, nw: im.naturalWidth,
          nh: im.naturalHeight, w, h, scaled: SCALED.some(s => im.matches(s))};
})"""


def page_problems(browser, path: "str | os.PathLike", scaled: tuple[str, ...] = (),
                  screenshot: "str | os.PathLike | None" = None, actions=None) -> list[str]:
    """Every problem of the page at ``path`` in a fresh 1280-pixel-wide tab (see the module docstring);
    ``scaled``: CSS selectors of images the page draws larger on purpose. ``actions(page)`` runs after
    loading (its problems are appended). ``screenshot``: where to save a full-page PNG."""
    tab = browser.new_page(viewport={"width": WIDTH, "height": 900}, device_scale_factor=1)
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text[:200]}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(f"script error: {str(e)[:200]}"))
    try:
        tab.goto(pathlib.Path(path).resolve().as_uri(), wait_until="load")
        for im in tab.evaluate(IMAGES.replace("SCALED", repr(list(scaled)))):
            where = f"<img> {im['i']} ({im['src']!r})"
            if not im["complete"] or im["nw"] == 0:
                problems.append(f"{where} did not load")
            elif im["scaled"]:
                if abs(im["w"] * im["nh"] / im["nw"] - im["h"]) > 1 or im["w"] < im["nw"] - 0.5:
                    problems.append(f"{where} scaled out of shape: {im['w']:.1f}x{im['h']:.1f} px, natural "
                                    f"{im['nw']}x{im['nh']}")
            elif abs(im["w"] - im["nw"]) > 0.5 or abs(im["h"] - im["nh"]) > 0.5:
                problems.append(f"{where} shown at {im['w']:.1f}x{im['h']:.1f} px, natural {im['nw']}x{im['nh']}")
        width = tab.evaluate("document.documentElement.scrollWidth")
        if width > WIDTH:
            problems.append(f"horizontal overflow: the page is {width} px wide at a {WIDTH} px window")
        if actions is not None:
            problems += actions(tab)
        if screenshot is not None:
            tab.screenshot(path=str(screenshot), full_page=True)
            shared = os.environ.get("JAXVIZ_SCREENS")
            if shared:
                os.makedirs(shared, exist_ok=True)
                shutil.copy(screenshot, shared)
    finally:
        tab.close()
    return problems


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def digits48(tmp_path_factory) -> str:
    """48 digits spread over the classes, as an .npy collection."""
    from jaxviz.io import datasets

    x = datasets.load("digits")[0]
    path = tmp_path_factory.mktemp("digits") / "digits48.npy"
    np.save(path, x[:: len(x) // 48][:48])
    return str(path)


def _cli(*argv: str) -> None:
    import jaxviz.cli.atlas  # noqa: F401 (register the commands)
    import jaxviz.cli.evaluate  # noqa: F401
    from jaxviz.cli import main

    assert main(list(argv)) == 0, argv


ATLAS_UNITS = 24


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory, digits48) -> pathlib.Path:
    out = tmp_path_factory.mktemp("atlas") / "out"
    _cli("atlas", "--weights", "builtin:digits_cnn", "--images", digits48, "--layer", "conv2d_1", "--layer", "dense",
         "--units", f"0-{ATLAS_UNITS - 1}", "--k", "4", "--patterns", "dlwp1", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("gallery") / "g"
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# ------------------------------------------------------------------------------------------- pages
def _sort_problems(npz_path: pathlib.Path, layer: str, section: int):
    """The atlas section's sort control: each option orders the cards by ``atlas.npz``'s statistic
    (largest first, ties by unit; at the 6 significant digits the cards carry) and ``unit`` restores
    the unit order."""
    z = np.load(npz_path)
    units = [int(u) for u in z[f"{layer}/units"]]
    stats = {"max": z[f"{layer}/max"], "mean": z[f"{layer}/mean"], "fire": z[f"{layer}/fire_rate"]}

    def run(tab) -> list[str]:
        problems = []
        sel = tab.locator(f"section#l{section} select")
        order = lambda: [int(u) for u in tab.eval_on_selector_all(  # noqa: E731
            f"section#l{section} .card", "cs => cs.map(c => c.dataset.unit)")]
        if order() != units:
            problems.append(f"{layer}: cards not in unit order at first: {order()[:8]}...")
        for key, values in stats.items():
            rounded = {u: float(f"{float(v):.6g}") for u, v in zip(units, values)}
            want = sorted(units, key=lambda u: (-rounded[u], u))
            sel.select_option(key)
            got = order()
            if got != want:
                problems.append(f"{layer}: sort by {key} gave {got[:8]}..., want {want[:8]}...")
            if want != units and got == units:
                problems.append(f"{layer}: sort by {key} left the cards in unit order")
        sel.select_option("unit")
        if order() != units:
            problems.append(f"{layer}: sort by unit did not restore the unit order")
        return problems

    return run


def test_atlas_page(browser, atlas_dir, tmp_path):
    z = np.load(atlas_dir / "atlas.npz")
    assert len(set(np.round(z["conv2d_1/max"], 4))) > 1  # the sort has something to reorder
    sorts = [_sort_problems(atlas_dir / "atlas.npz", layer, n) for n, layer in enumerate(("conv2d_1", "dense"))]
    problems = page_problems(browser, atlas_dir / "index.html", scaled=("img.pattern",),
                             screenshot=tmp_path / "atlas.png", actions=lambda t: sorts[0](t) + sorts[1](t))
    assert problems == []
    # a dead unit (0 on every image) shows no exemplars (its top images are ties at 0); the others show k
    page = (atlas_dir / "index.html").read_text()
    dead = [int(u) for u, m in zip(z["dense/units"], z["dense/max"]) if m == 0]
    assert dead and page.count("never above 0 on the 48 images") == len(dead)
    for layer_no, layer in enumerate(("conv2d_1", "dense")):
        for u, m in zip(z[f"{layer}/units"], z[f"{layer}/max"]):
            card = page[page.index(f"id='l{layer_no}-u{u}'"):]
            card = card[:card.index("</div></div>")]
            assert card.count("alt='exemplar'") == (0 if m == 0 else 4), (layer, u)


def test_evaluate_page(browser, digits48, tmp_path):
    x = np.load(digits48)[:6]
    np.save(tmp_path / "six.npy", x)
    out = tmp_path / "ev"
    _cli("evaluate", "--weights", "builtin:digits_cnn", "--images", str(tmp_path / "six.npy"), "--methods",
         "gradcam,saliency", "--metrics", "deletion,insertion", "--steps", "10", "--out", str(out))
    text = (out / "index.html").read_text()
    assert text.count("<tr>") == 1 + 3 * 2  # the header, (2 methods + random) x 2 metrics
    # one renderer, two outputs: the page's only picture is curves.png, byte for byte
    import base64
    import re

    srcs = re.findall(r"<img src='data:image/png;base64,([^']+)'", text)
    assert [base64.b64decode(s) for s in srcs] == [(out / "curves.png").read_bytes()]
    assert page_problems(browser, out / "index.html", screenshot=tmp_path / "evaluate.png") == []


def test_concepts_page(browser, digits48, tmp_path):
    import jaxviz.cli.concepts  # noqa: F401 (registers the command)

    out = tmp_path / "concepts"
    _cli("concepts", "--weights", "builtin:digits_cnn", "--images", digits48, "--layer", "conv2d_1", "--concepts", "4",
         "--class", "3", "--iterations", "2", "--importance-images", "48", "--importance", "gradient", "--out", str(out))
    assert (out / "index.html").read_text().count("class='card'") == 4
    assert page_problems(browser, out / "index.html", screenshot=tmp_path / "concepts.png") == []


def test_result_pages(browser, tmp_path):
    """Pages of results that draw themselves (``jaxviz.show``): maps with their method and layer, patterns."""
    import jaxviz

    L = jaxviz.load_model(weights="builtin:digits_cnn")
    from jaxviz.io import datasets

    x = jaxviz.preprocess(datasets.load("digits")[0][:3].astype(np.float32), L.model.preprocessing)
    for name, result in (("cams", jaxviz.explain(L.model, L.params, x)),
                         ("saliency", jaxviz.explain(L.model, L.params, x, method="saliency")),
                         ("activations", jaxviz.activations(L.model, L.params, x)),
                         ("weights", jaxviz.layer_weights(L.model, L.params, "conv2d")), ("model", L)):
        path = jaxviz.show(result, tmp_path / f"result_{name}.html")
        assert page_problems(browser, path, screenshot=tmp_path / f"result_{name}.png") == [], name


def test_demo_gallery_page(browser, gallery_dir, tmp_path):
    problems = page_problems(browser, gallery_dir / "index.html", screenshot=tmp_path / "gallery.png")
    assert problems == []
    leaderboard = gallery_dir / "lite0" / "evaluate" / "index.html"  # the Evaluation's own page, as the CLI's
    if leaderboard.exists():  # efficientnet_lite0's weights are there
        assert "<a href='lite0/evaluate/index.html'>" in (gallery_dir / "index.html").read_text()
        assert page_problems(browser, leaderboard, screenshot=tmp_path / "gallery_evaluate.png") == []


# -------------------------------------------------------------------------------- the checker fails
def _broken(page: str, how: str) -> str:
    if how == "missing image":
        i = page.index("src='data:image/png;base64,")
        j = page.index("'", i + 5)
        return page[:i] + "src='no_such_picture.png" + page[j:]
    if how == "wide card":
        return page.replace("class='card'", "style='min-width:1500px' class='card'", 1)
    if how == "script error":
        return page.replace("</body>", "<script>notAFunction();</script></body>")
    if how == "stretched image":
        return page.replace("</head>", "<style>figure img{width:150px}</style></head>")
    raise ValueError(how)


@pytest.mark.parametrize("how, expect", [("missing image", "did not load"), ("wide card", "horizontal overflow"),
                                         ("script error", "script error"), ("stretched image", "shown at")])
def test_checker_fails_on_a_broken_page(browser, atlas_dir, tmp_path, how, expect):
    page = (atlas_dir / "index.html").read_text()
    broken = tmp_path / "index.html"
    broken.write_text(_broken(page, how))
    assert broken.read_text() != page
    problems = page_problems(browser, broken, scaled=("img.pattern",))
    assert any(expect in p for p in problems), problems
    if how == "missing image":  # the browser reports the failed fetch too
        assert any(p.startswith("console error") for p in problems), problems
