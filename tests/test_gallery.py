"""The progress reporter of long commands, the gallery's drawing helpers, and the demo gallery itself:
progress visible while it runs with output to a file, pictures shown at their own size, labels never
cut, and every command the gallery prints runs."""

import html.parser
import io
import pathlib
import re
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxviz.cli.progress import Progress
from jaxviz.viz import demo as D
from jaxviz.viz.render import colour_bar, labelled_grid, plain_map, superimpose, text_cell, wrap

# ------------------------------------------------------------------------------------------ progress


def test_plain_lines_every_tenth_with_rate_and_eta():
    out = io.StringIO()
    bar = Progress("jaxviz job", total=20, unit="image", stream=out, every_s=3600)
    assert not bar.tty  # a StringIO is no terminal
    for i in range(20):
        bar.start(f"image {i}")
        bar.advance()
    bar.close()
    lines = out.getvalue().splitlines()
    tenths = [l for l in lines if re.match(r"jaxviz job: \d+/20 \(\d+%\) images - image \d+ \(done\), "
                                           r"[\d.e+-]+ images/s", l)]
    assert [int(re.search(r"(\d+)/20", l)[1]) for l in tenths] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert "images - image 1 (done)" in tenths[0]  # the line names the unit that just finished
    assert "ETA" in tenths[0] and "ETA" not in tenths[-1]  # nothing left to wait for at 100%
    assert re.fullmatch(r"jaxviz job: done, 20 images in \d+ s", lines[-1])


def test_plain_lines_while_a_long_step_runs():
    """No unit finishes, yet the log still says what runs: the timer prints every ``every_s``."""
    out = io.StringIO()
    bar = Progress("jaxviz job", total=3, stream=out, every_s=0.05)
    bar.start("compiling")
    deadline = time.monotonic() + 30
    while "compiling" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    bar.close()
    assert re.search(r"jaxviz job: 0/3 \(0%\) steps - compiling, .* elapsed", out.getvalue())


def test_weights_set_the_fraction_and_callbacks_set_the_position():
    out = io.StringIO()
    bar = Progress("jaxviz demo", stream=out, every_s=3600, weights=[1.0, 9.0])
    bar.start("cheap")
    bar.advance()  # one of two steps, a tenth of the cost
    assert "1/2 (10%) steps - cheap" in out.getvalue()
    cb = Progress("jaxviz atlas", unit="image", stream=out, every_s=3600)
    cb(5, 50)  # the library's on_batch(done, total)
    cb(50, 50)
    cb.close()
    bar.close()
    assert "jaxviz atlas: 5/50 (10%) images" in out.getvalue()
    assert "jaxviz atlas: done, 50 images in" in out.getvalue()


def test_warnings_go_above_the_bar_and_the_last_line_gives_the_time():
    out = io.StringIO()
    with Progress("jaxviz demo", total=2, stream=out, tty=True) as bar:
        bar.start("gradcam maps")
        bar.warn("efficientnet_lite0, image chelsea, gradcam: blank map")
        bar.advance(2)
    text = out.getvalue()
    # the warning is a line of its own (tqdm clears the bar, writes the line, redraws the bar)
    lines = text.replace("\r", "\n").split("\n")
    assert "jaxviz demo: warning: efficientnet_lite0, image chelsea, gradcam: blank map" in lines
    assert "gradcam maps" in text and "100%" in text
    assert re.search(r"jaxviz demo: done, 2 steps in \d+ s\n$", text)


# ------------------------------------------------------------------------------------------- drawing


@pytest.mark.parametrize("text,width", [("drilling_platform", 60), ("top-1: drilling_platform", 146),
                                         ("class: Egyptian_cat\np = 0.63", 40), ("x", 1)])
def test_wrap_keeps_every_character_and_fits(text, width):
    from PIL import Image, ImageDraw, ImageFont

    out = wrap(text, width)
    assert "".join(out.split()) == "".join(text.split())  # nothing cut
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default(size=13)
    assert all(draw.textlength(l, font=font) <= width or len(l) == 1 for l in out.split("\n"))


def test_labelled_grid_grows_to_hold_long_labels():
    pic = np.full((8, 8, 3), 200, np.uint8)
    short = labelled_grid([[pic, pic]], ["a", "b"], ["row"], cell=64)
    long = labelled_grid([[pic, pic]], ["a", "gradcam++ at block6a_expand_activation"],
                         ["chelsea\nclass: drilling_platform_of_the_north_sea\np = 0.50"], cell=64)
    assert long.shape[1] == short.shape[1]  # as wide as before: the labels wrap, the columns keep their size
    assert long.shape[0] > short.shape[0]


def test_map_views_share_one_colour_map():
    ramp = np.linspace(0, 1, 16, dtype=np.float32)[None, :].repeat(4, 0)
    plain = plain_map(ramp)
    over = superimpose(np.zeros((4, 16, 3), np.uint8), ramp, alpha=1.0)  # over black: the colours alone
    np.testing.assert_array_equal(plain, over)
    bar = colour_bar(300)
    assert bar.shape[1] == 300 and bar.dtype == np.uint8
    assert plain[0, 0, 2] > plain[0, 0, 0] and plain[0, -1, 0] > plain[0, -1, 2]  # JET: blue at 0, red at 1
    cell = text_cell("blank gradcam map: every weighted channel is negative", 96)
    assert cell.shape == (96, 96, 3) and (cell < 128).any()  # the words are drawn


def test_png_size_and_the_page_shows_pictures_at_their_size(tmp_path):
    from jaxviz.io import save_png
    from jaxviz.viz.display import Predictions

    save_png(str(tmp_path / "a.png"), np.zeros((105, 303, 3), np.uint8))
    assert D.png_size(str(tmp_path / "a.png")) == (303, 105)
    pr = Predictions(np.zeros((2, 64, 64, 3), np.uint8), np.eye(2, 3, dtype=np.float32), [0, 1], ["a", "b"], ["x", "y"])
    page = D.render_index([D.Section("t", "s", (D.Shown(pr, "p/"),), command="jaxviz layers --model x")],
                          "title", "f", str(tmp_path))
    w, h = D.png_size(str(tmp_path / "p" / "predictions.png"))
    assert f"src='p/predictions.png' width='{w}' height='{h}'" in page and "min-height" not in page
    assert "<pre class='cmd'>jaxviz layers --model x</pre>" in page


SRC = re.compile(r"src='([^']*)'")


def test_gallery_sections_are_the_results_own_html(tmp_path):
    """A section of the page is its title, settings and command, then each result's ``_repr_html_``
    with only the ``src`` of its pictures changed: files beside the page holding the data URIs' bytes
    (one renderer, two outputs), named where the gallery promises them."""
    import base64

    import jax

    import jaxviz
    from jaxviz.viz.display import Comparison, ImageFiles

    L = jaxviz.load_model(weights="builtin:digits_cnn")
    from jaxviz.io import datasets

    digits = datasets.load("digits")[0][:3]
    x = jaxviz.preprocess(digits.astype(np.float32), L.model.preprocessing)
    pats = jaxviz.filter_patterns(L.model, L.params, "conv2d_1", [0, 1], jaxviz.get_recipe("dlwp1", size=28, steps=2),
                                  jax.random.key(0), quality=False)
    cams = {m: jaxviz.explain(L.model, L.params, x, method=m) for m in ("gradcam", "saliency")}
    results = [D.Shown(pats, "digits/filters/", {"patterns": "conv2d_1"}, "conv2d_1 caption"),
               D.Shown(Comparison(digits, cams, ["a", "b", "c"], ["0", "1", "2"]), "digits/"),
               D.Shown(jaxviz.layer_weights(L.model, L.params, "conv2d"), "digits/weights/"),
               D.Shown(jaxviz.activations(L.model, L.params, x), "digits/activations/")]
    section = D.Section("digits", "settings", tuple(results), command="jaxviz filters")
    fragment = D.section_html(section, ImageFiles(tmp_path))
    page = D.render_index([section], "title", "FIGURES figures", str(tmp_path))
    assert fragment in page
    files = SRC.findall(fragment)
    assert files[:2] == ["digits/filters/conv2d_1.png", "digits/compare.png"]
    assert "digits/weights/conv2d_hist.png" in files and "digits/activations/conv2d_1.png" in files
    rest = fragment
    for shown in results:
        own = shown.result._repr_html_()
        uris = SRC.findall(own)
        assert uris and all(u.startswith("data:image/png;base64,") for u in uris)
        mine = [files.pop(0) for _ in uris]
        for uri, rel in zip(uris, mine):
            assert (tmp_path / rel).read_bytes() == base64.b64decode(uri.split(",", 1)[1]), rel
            own = own.replace(f"src='{uri}'", f"src='{rel}'", 1)
        assert own in rest  # the result's own HTML, verbatim but for the src
        rest = rest[rest.index(own) + len(own):]
    assert not files
    assert len(SRC.findall(page)) == int(re.search(r"(\d+) figures", page)[1])


def test_every_registry_method_is_in_the_full_grids():
    from jaxviz.methods.attribution import REGISTRY

    plan = D.demo_plan(quick=False)
    labels = {j.label for j in plan.jobs}
    for m in REGISTRY:
        assert f"digits_cnn: {m.name} maps" in labels
        assert (f"efficientnet_lite0: {m.name} maps" in labels) != m.per_channel or not any(
            l.startswith("efficientnet_lite0: load") for l in labels)


# --------------------------------------------------------------------------------------------- the demo


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.cmds, self._in_cmd = [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        self._in_cmd = tag == "pre" and a.get("class") == "cmd"

    def handle_data(self, data):
        if self._in_cmd:
            self.cmds.append(data)
            self._in_cmd = False


@pytest.mark.slow
def test_demo_quick_logs_progress_while_it_runs(tmp_path):
    """``jaxviz demo --quick > log 2>&1``: progress lines reach the log before the process ends; the page
    shows each picture at its pixel size and the reproduce commands of the plan, without backticks."""
    log = tmp_path / "log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "jaxviz.cli", "demo", "--quick", "--out", str(tmp_path / "g")],
                                stdout=f, stderr=subprocess.STDOUT)
    seen = ""
    try:
        while proc.poll() is None and not re.search(r"jaxviz demo: \d+/\d+ \(\d+%\) steps - ", seen):
            time.sleep(0.5)
            seen = log.read_text()
        running = proc.poll() is None
        proc.wait(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert running, "the demo finished before any progress line reached the log:\n" + log.read_text()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert re.search(r"jaxviz demo: done, \d+ steps in \d+", text)
    page_text = (tmp_path / "g" / "index.html").read_text()
    assert "`" not in page_text
    page = _Page()
    page.feed(page_text)
    for img in page.imgs:
        w, h = D.png_size(str(tmp_path / "g" / img["src"]))
        assert (int(img["width"]), int(img["height"])) == (w, h), img["src"]
    assert page.cmds and set(page.cmds) <= set(D.reproduce_commands(D.demo_plan(quick=True), str(tmp_path / "g")))
    assert (tmp_path / "g" / D.PHOTO_LIST).read_text().split() == D.evaluate_photos(quick=True)
    # the page is complete and self-contained: every picture a valid PNG, nothing fetched from elsewhere
    assert "figures; open" in text and "UNTRAINED" in page_text
    assert len(page.imgs) >= 15
    assert not re.search(r'(src|href)="(https?:|//)', page_text)
    assert "lite0/compare.png" in {img["src"] for img in page.imgs} or "efficientnet_lite0: not shown" in page_text
    for img in page.imgs:
        data = (tmp_path / "g" / img["src"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", img["src"]
    for section in ("activations", "filter patterns", "gradcam", "weights", "predictions"):
        assert section in page_text


SMALL = {"--steps": "2", "--count": "2", "--k": "2", "--units": "0-1", "--size": "32"}
SUBSET = 24  # images of a built-in set (digits: 1,797; fruits: 300) a command reads here


def _small(command: str, out: pathlib.Path, subsets: dict[str, str] | None = None) -> list[str]:
    """The command's words after ``jaxviz`` with ``--out`` in ``out`` and fewer steps, units, exemplars,
    pattern pixels (never more than the command asked); ``--images digits``/``fruits`` read ``subsets``
    (some of the set's images as an ``.npy``, the same pixels) when given."""
    words = shlex.split(command)
    assert words[0] == "jaxviz"
    words = words[1:]
    for i, w in enumerate(words[:-1]):
        if w == "--out":
            words[i + 1] = str(out)
        elif w == "--images" and subsets and words[i + 1] in subsets:
            words[i + 1] = subsets[words[i + 1]]
        elif w == "--size":
            words[i + 1] = str(min(int(words[i + 1]), int(SMALL[w])))
        elif w in SMALL:
            words[i + 1] = SMALL[w]
    return words


@pytest.mark.slow
def test_every_reproduce_command_runs(tmp_path):
    """Each command the gallery prints (quick and full plans), with a small --out, --steps, --count, --k."""
    from jaxviz.cli import main

    commands = []
    for quick in (True, False):  # each plan's commands read the photo list of a gallery of its own
        gallery = tmp_path / f"gallery{int(quick)}"
        (gallery / D.PHOTO_LIST).parent.mkdir(parents=True)
        (gallery / D.PHOTO_LIST).write_text("\n".join(D.evaluate_photos(quick)))
        commands += D.reproduce_commands(D.demo_plan(quick=quick), str(gallery))
    commands = list(dict.fromkeys(commands))
    assert commands and not any("`" in c or "IMAGE" in c or " M " in c for c in commands)
    from jaxviz.io import datasets

    subsets = {}
    for name in ("digits", "fruits"):
        if any(f"--images {name} " in c for c in commands):
            subsets[name] = str(tmp_path / f"{name}{SUBSET}.npy")
            x = datasets.load(name)[0]
            np.save(subsets[name], x[:: len(x) // SUBSET][:SUBSET])  # spread over the classes
    for n, command in enumerate(commands):
        out = tmp_path / f"c{n}"
        words = _small(command, out, subsets)
        assert main(words) == 0, command
        if "--out" in words:  # predict prints and writes nothing
            assert out.is_dir() and any(out.iterdir()), command
