"""The per-image section of the `jaxviz concepts` page ("per image of a few, the attribution maps of its
top concepts"): which images it shows, that each shows its most important concepts (computed here again,
independently, from the dictionary in concepts.npz), that the class map is the importance-weighted sum of
the code maps (by hand), that names from files are escaped; and the concept head's split fallback."""

import html
import re

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxviz
from jaxviz.concepts import ConceptsResult, Dictionary, encode
from jaxviz.concepts import importance as ci
from jaxviz.concepts.maps import code_maps, top_concept_maps
from jaxviz.io import datasets
from jaxviz.nn.preprocess import preprocess

LAYER = "conv2d_1"
CLASSES = (3, 8, 0, 1)  # 8 candidate images (2 of each among 20 digits): the section's cap of 6 applies
HOSTILE = "!<script>alert(1)<b onclick='x'>3"  # sorts first; a 3


@pytest.fixture(scope="module")
def model():
    L = jaxviz.load_model("digits_cnn", "builtin")
    return L.model, L.params


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The CLI over 20 digits (two of each class) as PNG files, one of them with a hostile name."""
    from jaxviz.cli import main
    import jaxviz.cli.concepts  # noqa: F401 (registers the command)

    x, y = datasets.digits()
    root = tmp_path_factory.mktemp("concepts_page")
    folder = root / "imgs"
    folder.mkdir()
    for i in range(20):
        name = HOSTILE if i == 3 else f"d{i:03d}"
        Image.fromarray(np.asarray(x[i, ..., 0], np.uint8)).save(folder / f"{name}.png")
    out = root / "out"
    argv = ["concepts", "--weights", "builtin:digits_cnn", "--images", str(folder), "--layer", LAYER,
            "--concepts", "5", "--iterations", "2", "--importance", "gradient", "--importance-images", "20",
            "--out", str(out)]
    for c in CLASSES:
        argv += ["--class", str(c)]
    assert main(argv) == 0
    z = dict(np.load(out / "concepts.npz"))
    return out, z, (out / "index.html").read_text(encoding="utf-8")


def _pixels(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(str(p)).convert("L"), np.float32)[..., None] for p in paths])


def _cards(page: str) -> list[dict]:
    """The per-image section's cards as shown: item, class, and the captions' concepts and values."""
    section = page[page.index("<h2 id='images'>"):]
    out = []
    for card in section.split("<div class='card image' ")[1:]:
        m = re.match(r"data-item='(\d+)' data-class='(\d*)' data-concepts='([\d ]*)'", card)
        caps = re.findall(r"<a href='#concept(\d+)'>concept (\d+)</a>, (importance|mean code) ([-+.\deE]+)", card)
        assert all(a == b for a, b, _, _ in caps)
        out.append({"item": int(m[1]), "cls": int(m[2]) if m[2] else None, "data": [int(k) for k in m[3].split()],
                    "concepts": [int(a) for a, _, _, _ in caps], "values": [float(v) for *_, v in caps],
                    "words": {w for _, _, w, _ in caps}, "class_maps": card.count("<figcaption>class map"),
                    "images": card.count("<img ")})
    return out


def _predicted(model, params, x) -> np.ndarray:
    m, p = model, params
    return np.asarray(jnp.argmax(m.run(p, preprocess(jnp.asarray(x), m.preprocessing)).logits, -1))


def test_section_shows_the_first_images_of_each_class_in_turn(run, model):
    out, z, page = run
    pred = _predicted(*model, _pixels(z["paths"]))
    per = {c: [i for i in range(len(pred)) if pred[i] == c] for c in CLASSES}  # importance record order
    turns = [per[c][j] for j in range(20) for c in CLASSES if j < len(per[c])][:6]
    expect = sorted(turns, key=lambda i: CLASSES.index(int(pred[i])))
    cards = _cards(page)
    assert [c["item"] for c in cards] == expect and len(cards) == 6
    assert [c["cls"] for c in cards] == [int(pred[i]) for i in expect]
    for c in cards:
        assert c["concepts"] == c["data"] and len(c["concepts"]) == 3 and c["words"] == {"importance"}
        assert c["class_maps"] == 1 and c["images"] == 5  # photo, 3 code maps, class map
    assert page.count("class='card'") == 5  # the concept cards, unchanged (the section's are 'card image')


def test_each_image_shows_its_most_important_concepts(run, model):
    """Importances computed again here (gradient x code, the dictionary of concepts.npz) on each image
    shown: the captions' concepts are its 3 largest, largest first, with their values."""
    m, p = model
    out, z, page = run
    d = Dictionary("nmf", jnp.asarray(z["dictionary"]))
    for card in _cards(page):
        x = preprocess(jnp.asarray(_pixels([z["paths"][card["item"]]])), m.preprocessing)
        imp = np.asarray(ci.importance(m, p, LAYER, d, x, jnp.asarray([card["cls"]]), "gradient"))[0]
        best = np.sort(imp)[::-1][:3]
        shown = imp[card["concepts"]]
        tol = 1e-6 + 1e-4 * np.abs(imp).max()
        assert np.all(shown >= best - tol), (card, imp)  # the 3 largest (exact ties in either order)
        assert np.all(np.diff(shown) <= tol)
        np.testing.assert_allclose(card["values"], shown, rtol=6e-3, atol=tol)  # captions: 3 significant digits


def test_class_map_is_the_importance_weighted_sum_of_code_maps(model):
    m, p = model
    x, _ = datasets.digits()
    xp = preprocess(jnp.asarray(x[:4], jnp.float32), m.preprocessing)
    rng = np.random.default_rng(0)
    d = Dictionary("nmf", jnp.asarray(rng.uniform(0, 1, (6, 64)), jnp.float32))
    imp = rng.normal(size=(4, 6)).astype(np.float32)  # signed, as gradient importances are
    tc = top_concept_maps(m, p, LAYER, d, xp, jnp.asarray(imp), top=3)
    acts = m.run(p, xp, taps=[LAYER], output=False).taps[LAYER]
    maps = np.asarray(code_maps(d, acts, (28, 28)), np.float64)
    by_hand = np.zeros((4, 28, 28))
    for n in range(4):
        for k in range(6):
            by_hand[n] += float(imp[n, k]) * maps[n, k]
    np.testing.assert_allclose(np.asarray(tc.class_map), by_hand, atol=1e-5 * max(1.0, np.abs(by_hand).max()))
    order = np.argsort(-imp, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(np.asarray(tc.concepts), order)
    np.testing.assert_allclose(np.asarray(tc.weights), np.take_along_axis(imp, order, 1))
    np.testing.assert_allclose(np.asarray(tc.maps), maps[np.arange(4)[:, None], order], atol=1e-6)
    # without importance: ranked by the image's mean code over the layer's positions, no class map
    tc0 = top_concept_maps(m, p, LAYER, d, xp, None, top=3)
    mean = np.asarray(encode(d, acts)).mean((1, 2))
    np.testing.assert_array_equal(np.asarray(tc0.concepts), np.argsort(-mean, axis=1, kind="stable")[:, :3])
    assert tc0.class_map is None


def test_names_from_files_are_escaped_in_the_section(run):
    out, z, page = run
    section = page[page.index("<h2 id='images'>"):]
    assert HOSTILE not in page and "<script>" not in page and "<b onclick" not in page
    assert html.escape(HOSTILE) in section  # the caption
    assert html.escape(str(z["paths"][0]), quote=True) in section and "&#x27;x&#x27;" in section  # the title


def test_without_classes_the_section_says_so_and_ranks_by_mean_code(run, model):
    """The same run's concepts.npz as a result with no importance: the first 6 images, their 3 most present
    concepts (mean code, computed here), no class map, and a sentence saying why."""
    from jaxviz.cli.concepts import render_html

    m, p = model
    out, z, _ = run
    d = Dictionary("nmf", jnp.asarray(z["dictionary"]))
    ex = {k[len("exemplars/"):]: v for k, v in z.items() if k.startswith("exemplars/")}
    res = ConceptsResult(list(z["paths"]), LAYER, "nmf", d, z["mean_code"], z["max_code"],
                         {"relative_error": 0.5, "stability": 0.9}, {}, {}, ex, [])
    page = render_html(m, p, [str(q) for q in z["paths"]], res, (28, 28, 1), [], [])
    assert "No class was asked" in page
    cards = _cards(page)
    assert [c["item"] for c in cards] == list(range(6))
    x = preprocess(jnp.asarray(_pixels(z["paths"][:6])), m.preprocessing)
    mean = np.asarray(encode(d, m.run(p, x, taps=[LAYER], output=False).taps[LAYER])).mean((1, 2))
    for c, row in zip(cards, mean):
        assert c["concepts"] == list(np.argsort(-row, kind="stable")[:3]) and c["words"] == {"mean code"}
        assert c["class_maps"] == 0 and c["images"] == 4
        np.testing.assert_allclose(c["values"], row[c["concepts"]], rtol=6e-3)


class _SplitRaises:
    """A model whose ``split`` raises ``error``; everything else is digits_cnn's."""

    def __init__(self, model, error):
        self._model, self._error = model, error

    def __getattr__(self, name):
        return getattr(self._model, name)

    def split(self, layer):
        raise self._error


def test_concept_head_falls_back_only_when_the_model_has_no_split_there(model):
    """A model that says it cannot split at the layer (a JaxvizError) gets the whole network with the layer
    perturbed: the same probabilities as the split head. Any other error from ``split`` is a bug and surfaces."""
    from jaxviz.errors import JaxvizError

    m, p = model
    x, y = datasets.digits()
    xp = preprocess(jnp.asarray(x[:3], jnp.float32), m.preprocessing)
    d = Dictionary("nmf", jnp.asarray(np.random.default_rng(1).uniform(0, 1, (4, 64)), jnp.float32))
    cls = jnp.asarray(y[:3])
    u = encode(d, m.run(p, xp, taps=[LAYER], output=False).taps[LAYER]) * 0.7
    split = ci.concept_head(m, p, LAYER, d, xp, cls)(u)
    whole = ci.concept_head(_SplitRaises(m, JaxvizError("no split")), p, LAYER, d, xp, cls)(u)
    np.testing.assert_allclose(np.asarray(whole), np.asarray(split), atol=1e-5)
    with pytest.raises(TypeError, match="a bug"):
        ci.concept_head(_SplitRaises(m, TypeError("a bug")), p, LAYER, d, xp, cls)
