"""Every command shown to a user runs: each code block of the README and of the documentation pages
(``docs/*.md``, the MkDocs site; issue 35) and each `--help` example (issue 28).

How blocks run (the same rules for the README and every docs page, :data:`PAGES`):

* **python** blocks run in a fresh interpreter, those of one ``## `` section together and in order (as a
  reader pastes them into one session: the API section's later blocks use the ``m`` and ``x`` of its
  first). Heavy settings are made small by :data:`PY_SMALL` (plain text replacements, listed there).
* **bash** blocks: each ``jaxviz``/``weights_convert`` command (``\\``-continued lines joined, ``#`` comments
  dropped, ``&&`` chains split) runs in this process through the CLI's ``main`` with :func:`small`
  settings; the chain's other steps (``python3 -m venv``, ``pip install``) are the environment this suite
  already runs in and are not repeated. ``jaxviz demo`` is only parsed here: it runs in
  ``tests/test_gallery.py::test_demo_quick_logs_progress_while_it_runs`` (``--quick``).
* **Not runnable blocks** are marked in the page itself, one of two ways, and the reason is shown to the
  reader or kept in the source: a ``<!-- skip: REASON -->`` line right above the fence (an HTML comment,
  invisible on the site), or ``skip="REASON"`` in the fence's info string (```` ```bash skip="needs torch" ````).
  REASON says why (the test suite itself; the full VGG16 atlas, which needs a download and hours). Blocks
  in another language (``text``, ``json``, none) are shown, not run.
* Sections are the page's ``#``/``##`` headings: the python blocks of one section of one page run together.
* The files the commands name are made in the working directory by :func:`workdir`: ``cat.png`` and
  ``photo.jpg`` (scikit-image's chelsea), ``photos/`` (four bundled photos), ``model.h5``/``model.keras`` (a
  small Keras CNN of an architecture jaxviz does not know) and ``my_net.py`` (the README's ``Net`` with a
  ``build`` factory, taken from the README itself).
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import NamedTuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages whose code blocks run: the README and the documentation site's pages (not the generated API pages).
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))

# (text, replacement) in python blocks: the same calls with fewer units and steps at a smaller size.
PY_SMALL = [
    ('range(16), "lucid")', 'range(2), jaxviz.get_recipe("lucid", size=64, steps=4))'),
    ('[285, 967], "lucid_class")', '[285], jaxviz.get_recipe("lucid_class", size=64, steps=4), quality=False)'),
    ('[5], mixed)', '[5], mixed, quality=False)'),  # the quality measures compile once, in the first call
    ('jaxviz.get_recipe("lucid", objective=', 'jaxviz.get_recipe("lucid", size=64, steps=4, objective='),
    ('"conv2d_1", range(64),', '"conv2d_1", range(8),'),
    ('"blocks.0.conv1", range(16))', '"blocks.0.conv1", range(2), jaxviz.get_recipe("lucid", size=32, steps=4))'),
]


class Block(NamedTuple):
    lang: str
    code: str
    line: int  # of the opening fence
    section: str  # "PAGE: heading"
    skip: str | None
    page: str = "README.md"


def page_blocks(path: pathlib.Path) -> list[Block]:
    """The fenced code blocks of one Markdown page, with the skip rule of the module docstring."""
    text = path.read_text(encoding="utf-8")
    page = str(path.relative_to(ROOT))
    out, section = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        h = re.match(r"^#{1,2} (.+)", lines[i])
        if h:
            section = h[1]
        m = re.match(r"^```(\w*)(.*)$", lines[i])
        if m:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            prev = lines[i - 1].strip() if i else ""
            skip = re.fullmatch(r"<!-- skip: (.+) -->", prev) or re.search(r'skip="([^"]+)"', m[2])
            label = section if path == README else f"{page}: {section}"
            out.append(Block(m[1], "\n".join(lines[i + 1:j]) + "\n", i + 1, label, skip[1] if skip else None, page))
            i = j
        i += 1
    return out


def readme_blocks() -> list[Block]:
    """The blocks of every page of :data:`PAGES`, the README first."""
    return [b for p in PAGES for b in page_blocks(p)]


def python_groups() -> dict[str, list[Block]]:
    groups: dict[str, list[Block]] = {}
    for b in readme_blocks():
        if b.lang == "python" and b.skip is None:
            groups.setdefault(b.section, []).append(b)
    return groups


def commands(script: str) -> list[list[str]]:
    """The ``jaxviz``/``weights_convert`` commands of a shell snippet, as argument lists."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            argv = shlex.split(part, comments=True)
            if argv and argv[0] in ("jaxviz", "weights_convert"):
                out.append(argv)
    return out


def bash_commands() -> list[tuple[str, list[str]]]:
    return [(f"{b.page}:{b.line}", argv) for b in readme_blocks() if b.lang == "bash" and b.skip is None
            for argv in commands(b.code)]


def help_commands() -> list[tuple[str, list[str]]]:
    from jaxviz.cli import COMMANDS

    return [(f"jaxviz {name} --help", argv) for name, (_, _, example) in COMMANDS.items()
            for argv in commands(example)]


def _set(argv: list[str], flag: str, value: str | None, add: bool = True) -> list[str]:
    """``argv`` with ``flag``'s value replaced (``value=None``: the flag and its value dropped); added
    at the end when absent and ``add``."""
    if flag in argv:
        i = argv.index(flag)
        return argv[:i] + ([flag, value] if value is not None else []) + argv[i + 2:]
    return argv + [flag, value] if add and value is not None else argv


def small(argv: list[str]) -> list[str]:
    """The small settings a command runs with here (the documented substitutions):

    * ``filters``: 2 filters (``--count 2``), 2 steps, 64 pixels unless ``--size`` is given, no quality measures;
    * ``atlas``: units 0-1, no patterns (``--patterns none``; rendering is what ``filters`` runs);
    * ``evaluate``: the four photos of ``photos/`` as the collection, 4 deletion/insertion steps, methods
      ``gradcam,saliency`` in place of ``all``, no ``road`` (its imputation is the slow part: 15 bundled
      samples took 190 s here; tests/test_metrics.py tests it);
    * every other command as written."""
    cmd = argv[1] if argv[0] == "jaxviz" else None
    if cmd == "filters":
        argv = _set(argv, "--count", "2", add=False)
        argv = _set(argv, "--steps", "2")
        if "--size" not in argv:
            argv = _set(argv, "--size", "64")
        argv = argv + ["--no-quality"]
    elif cmd == "atlas":
        argv = _set(_set(argv, "--units", "0-1"), "--patterns", "none")
    elif cmd == "evaluate":
        argv = _set(_set(argv, "--steps", "4"), "--images", "photos")
        if "--metrics" in argv:
            i = argv.index("--metrics") + 1
            metrics = [m for m in argv[i].split(",") if m != "road"]
            argv = _set(argv, "--metrics", ",".join(metrics) if argv[i] != "all" else "deletion,insertion")
        if "--methods" in argv and argv[argv.index("--methods") + 1] == "all":
            argv = _set(argv, "--methods", "gradcam,saliency")
    return argv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The files the README's commands name (module docstring)."""
    import cv2
    import keras
    import numpy as np

    from jaxviz.io.images import load_image

    d = tmp_path_factory.mktemp("readme")
    cat = load_image("sample:chelsea")
    cv2.imwrite(str(d / "cat.png"), cat[..., ::-1])
    cv2.imwrite(str(d / "photo.jpg"), cat[..., ::-1])
    (d / "photos").mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        cv2.imwrite(str(d / "photos" / f"{name}.jpg"), load_image(f"sample:{name}")[..., ::-1])
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    L = keras.layers
    km = keras.Sequential([keras.Input((32, 32, 3)), L.Rescaling(1 / 255), L.Conv2D(8, 3, activation="relu"),
                           L.MaxPooling2D(), L.Conv2D(8, 3, activation="relu"), L.GlobalAveragePooling2D(),
                           L.Dense(3, activation="softmax")], name="readme_cnn")
    km.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)
    km.save(d / "model.h5")
    km.save(d / "model.keras")
    net = next(b.code for b in readme_blocks() if b.lang == "python" and "class Net(nnx.Module)" in b.code)
    net = net[: net.index("\nnet = jaxviz.adapt")]
    (d / "my_net.py").write_text(net + "\n\ndef build():\n    return Net(nnx.Rngs(0))\n")
    return d


def test_readme_parsing_finds_the_blocks():
    """The parser sees the README as it is: python and bash blocks, the skipped ones with their reason,
    and the `&&` chains and continuation lines split into commands."""
    blocks = readme_blocks()
    assert sum(b.lang == "python" for b in blocks) >= 10 and sum(b.lang == "bash" for b in blocks) >= 5
    skipped = [b for b in blocks if b.skip]
    assert skipped and all(len(b.skip) > 20 for b in skipped)
    assert commands("python3 -m venv .venv && . .venv/bin/activate && jaxviz demo --out g  # x") == \
        [["jaxviz", "demo", "--out", "g"]]
    assert commands("jaxviz atlas --images 'a/**/*.jpg' \\\n    --units 0-63 --out a") == \
        [["jaxviz", "atlas", "--images", "a/**/*.jpg", "--units", "0-63", "--out", "a"]]
    assert small(["jaxviz", "filters", "--count", "64", "--out", "o"]) == \
        ["jaxviz", "filters", "--count", "2", "--out", "o", "--steps", "2", "--size", "64", "--no-quality"]


@pytest.mark.slow
@pytest.mark.parametrize("section", sorted(python_groups()))
def test_python_blocks_run(section, workdir):
    code = "\n".join(b.code for b in python_groups()[section])
    for old, new in PY_SMALL:
        code = code.replace(old, new)
    env = dict(os.environ, KERAS_BACKEND="jax")
    r = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, env=env,
                       timeout=600)
    lines = ", ".join(f"{b.page}:{b.line}" for b in python_groups()[section])
    assert r.returncode == 0, f"python blocks at {lines} ({section}):\n{r.stderr[-3000:]}"


def _run(argv: list[str], capsys) -> tuple[int, str]:
    if argv[0] == "weights_convert":
        from weights_convert.cli import main
    else:
        from jaxviz.cli import main
    capsys.readouterr()
    rc = main(argv[1:])
    out, err = capsys.readouterr()
    return rc, out + err


def _check(cases, workdir, capsys, monkeypatch):
    from jaxviz.cli import build_parser

    monkeypatch.chdir(workdir)
    # the fixtures (fruits, seed 004's file) are found from the repository, as a user's checkout finds them
    monkeypatch.setenv("JAXVIZ_FIXTURES", str(ROOT.parent / "shared" / "fixtures"))
    failed = []
    for where, argv in cases:
        if argv[:2] == ["jaxviz", "demo"]:  # parsed only; it runs in tests/test_gallery.py (module docstring)
            args = build_parser().parse_args(argv[1:])
            assert args.command == "demo" and args.out, argv
            continue
        rc, text = _run(small(argv), capsys)
        if rc != 0:
            failed.append(f"{where}: {shlex.join(argv)} -> {rc}: {text.strip().splitlines()[-1:]}")
    assert not failed, "\n".join(failed)


@pytest.mark.slow
def test_readme_commands_run(workdir, capsys, monkeypatch):
    cases = bash_commands()
    assert len(cases) >= 5
    _check(cases, workdir, capsys, monkeypatch)


@pytest.mark.slow
def test_help_examples_run(workdir, capsys, monkeypatch):
    cases = help_commands()
    assert len(cases) >= 15
    _check(cases, workdir, capsys, monkeypatch)


def test_the_methods_table_is_the_registry():
    """The docs' table of attribution methods (docs/attribution.md) lists exactly the registry's methods,
    in its order."""
    from jaxviz.methods.attribution import REGISTRY

    text = (ROOT / "docs" / "attribution.md").read_text(encoding="utf-8")
    section = text.split("\n\n|", 1)[1].split("\n\n", 1)[0]
    names = [line.split("`")[1] for line in ("|" + section).splitlines()[2:]]
    assert names == [m.name for m in REGISTRY]


def test_skip_markers_and_pages():
    """Both skip forms are read, with their reason; the docs pages are among the pages run; the README stays
    a short front page (issue 35: at most about 200 lines) whose links into docs/ name existing pages."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=ROOT) as d:
        p = pathlib.Path(d) / "page.md"
        p.write_text('# T\n\n<!-- skip: needs a download -->\n```bash\njaxviz x\n```\n\n'
                     '```bash skip="needs torch"\njaxviz y\n```\n\n```python\nprint(1)\n```\n')
        blocks = page_blocks(p)
    assert [(b.lang, b.skip) for b in blocks] == [("bash", "needs a download"), ("bash", "needs torch"),
                                                   ("python", None)]
    assert ROOT / "docs" / "attribution.md" in PAGES
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(links) >= 10 and all((ROOT / link).is_file() for link in links), links


def test_the_api_reference_lists_every_public_name(tmp_path):
    """`mkdocs build --strict` passes (no broken link, no missing reference) and the API page has an entry
    with its signature for every name of ``jaxviz.__all__``."""
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install -e '.[docs]'")
    import jaxviz

    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    missing = [n for n in jaxviz.__all__ if f'id="jaxviz.{n}"' not in page]
    assert not missing, missing
    assert page.count('class="doc-signature') >= 20
