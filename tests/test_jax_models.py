"""The JAX vision models people use, through `jaxviz.adapt` with no wrapper (models in tests/jax_models.py):
the Flax ImageNet example's ResNet (``train=True`` by default, batch norm), flaxmodels' ResNet-18, Hugging
Face's FlaxResNet and FlaxViT (``ModelOutput``s, blocks returning tuples) and an Equinox CNN (one C x H x W
example per call). Each model's taps must equal the model's own intermediates (``capture_intermediates``,
``output_hidden_states``, calls of its layers by hand); Grad-CAM at the default and at an inner layer,
filter patterns and the CLI's ``--model FILE.py:FACTORY`` must work on each."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_models as J
import jaxviz
from conftest import assert_scaled_close

HERE = os.path.dirname(__file__)
TOL = 1e-5


def _hf_flax():
    """The skip reason when no Hugging Face release with Flax classes is installed, else None."""
    try:
        import transformers
    except ImportError:
        return "transformers is not installed (the test extra pins transformers 4.57.6, its last Flax classes)"
    if not hasattr(transformers, "FlaxResNetForImageClassification"):
        return f"transformers {transformers.__version__} ships no Flax classes (removed in 5.0; the test extra pins 4.57.6)"
    return None


def _linen_case(m, v, size, default, inner, filters_layer):
    b = jaxviz.adapt(m, v, input_shape=(size, size, 3))

    def reference(x):
        out, state = m.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        taps = {}
        for name in b.model.layer_names:
            node = state["intermediates"]
            for part in name.split("."):
                node = node.get(part, {})
            if "__call__" in node:
                taps[name] = node["__call__"][0]
        return out, taps

    return dict(bundle=b, reference=reference, size=size, default=default, inner=inner, filters=filters_layer)


def _imagenet():
    m, v = J.imagenet_resnet()
    return _linen_case(m, v, 32, "ResNetBlock_1", "ResNetBlock_0", "ResNetBlock_0.Conv_1")


def _flaxmodels():
    pytest.importorskip("flaxmodels", reason="flaxmodels is not installed (the test extra pins flaxmodels 0.1.3)")
    m, v = J.flaxmodels_resnet()
    return _linen_case(m, v, 64, "BasicBlock_7", "BasicBlock_3", "BasicBlock_1.Conv_1")


def _nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _hf_resnet():
    h = J.hf_resnet()
    b = jaxviz.adapt(h)  # its input size (32x32x3) is the model's own

    def reference(x):
        o = h(_nchw(x), output_hidden_states=True)
        hs = [np.transpose(a, (0, 2, 3, 1)) for a in o.hidden_states]  # channel-first in HF's outputs
        return o.logits, {"resnet.embedder": hs[0], "resnet.encoder.stages.0": hs[1], "resnet.encoder.stages.1": hs[2]}

    bound = h.module.bind(h.params)

    def tail(f):  # from the inner layer's map to the logits, through the model's own submodules
        y = bound.resnet.encoder.stages.stages[1](f, deterministic=True)
        return bound.classifier(y.mean(axis=(1, 2)))

    return dict(bundle=b, reference=reference, size=32, default="resnet.encoder", inner="resnet.encoder.stages.0",
                filters="resnet.encoder.stages.0.layers.0.layer.layer_1.convolution", tail=tail)


def _hf_vit():
    v = J.hf_vit()
    tokens = jaxviz.adapt(v)  # taps as the model has them: N x T x C

    def reference(x):
        o = v(_nchw(x), output_hidden_states=True)
        hs = o.hidden_states
        return o.logits, {"vit.embeddings": hs[0], "vit.encoder.layer.0": hs[1], "vit.encoder.layer.1": hs[2]}

    return dict(bundle=jaxviz.adapt(v, reshape=J.vit_tokens_to_grid), tokens=tokens, reference=reference, size=16,
                default="vit.encoder.layer.1.attention.attention.key", inner="vit.encoder.layer.1.layernorm_before",
                filters="vit.embeddings.patch_embeddings.projection")


def _eqx():
    eqx = pytest.importorskip("equinox", reason="equinox is not installed (the test extra pins equinox 0.13.8)")
    e = J.eqx_cnn()
    b = jaxviz.adapt(e, input_shape=(16, 16, 3))
    e = eqx.nn.inference_mode(e)

    def reference(x):
        def one(xi):  # the model's own layers called by hand, one C x H x W example
            h, taps = jnp.moveaxis(xi, -1, 0), {}
            for i, layer in enumerate(e.layers):
                h = layer(h)
                if isinstance(layer, eqx.Module):
                    taps[f"layers.{i}"] = jnp.moveaxis(h, 0, -1)
            taps["dropout"] = h.mean(axis=(1, 2))
            taps["head"] = e.head(taps["dropout"])
            return e(jnp.moveaxis(xi, -1, 0)), taps

        return jax.vmap(one)(x)

    def tail(f):  # from the inner layer's map (layers.3) to the logits, by hand
        def one(fi):
            h = jnp.moveaxis(fi, -1, 0)
            for layer in e.layers[4:]:
                h = layer(h)
            return e.head(h.mean(axis=(1, 2)))

        return jax.vmap(one)(f)

    return dict(bundle=b, reference=reference, size=16, default="layers.5", inner="layers.3", filters="layers.3",
                tail=tail)


BUILD = {"imagenet": _imagenet, "flaxmodels": _flaxmodels, "hf_resnet": _hf_resnet, "hf_vit": _hf_vit, "eqx": _eqx}
HEAVY = ("flaxmodels", "hf_resnet", "hf_vit")  # ResNet-18's compilations; transformers' import and model building
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in BUILD]
_CASES: dict = {}


@pytest.fixture
def case(request):
    name = request.param
    if name.startswith("hf") and _hf_flax():
        pytest.skip(_hf_flax())
    if name not in _CASES:
        _CASES[name] = BUILD[name]()
    return _CASES[name]


def _x(size, n=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


@pytest.mark.slow
@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_taps_and_logits_equal_the_models_own(case):
    x = _x(case["size"])
    logits, ref = case["reference"](x)
    b = case.get("tokens", case["bundle"])
    assert len(ref) >= 3
    acts = jaxviz.activations(b.model, b.params, x, list(ref))
    for name, want in ref.items():
        assert_scaled_close(acts[name], want, TOL, name)
    assert_scaled_close(b.model.run(b.params, x).logits, logits, TOL, "logits")


def test_inference_arguments_are_chosen_and_said():
    """The example ResNet trains by default (its batch norm would update statistics): adapt passes
    ``train=False`` and says so; the caller's own choice wins and is not said."""
    m, v = J.imagenet_resnet()
    b = jaxviz.adapt(m, v, input_shape=(32, 32, 3))
    assert b.model.call_kwargs == {"train": False} and b.source == "adapted ResNet, called with train=False (inference)"
    x = _x(32)
    with pytest.raises(Exception, match="unbound axis name|immutable"):  # what a plain call does (training)
        m.apply(v, x)
    assert_scaled_close(b.model.run(b.params, x).logits, m.apply(v, x, train=False), TOL, "logits")
    own = jaxviz.adapt(m, v, input_shape=(32, 32, 3), call_kwargs={"train": False})
    assert own.model.inference == {} and own.source == "adapted ResNet"
    if not _hf_flax():
        assert "deterministic=True" in jaxviz.adapt(J.hf_vit()).source


def test_equinox_model_with_state_runs_on_its_running_statistics():
    eqx = pytest.importorskip("equinox", reason="equinox is not installed (the test extra pins equinox 0.13.8)")
    model, state = J.eqx_bn_net()
    b = jaxviz.adapt(model, state, input_shape=(8, 8, 3))
    assert b.model.layer_names == ["conv", "bn", "head"]
    inference = eqx.nn.inference_mode(model)
    x = _x(8)
    xc = jnp.moveaxis(x, -1, 1)

    def own(xi):  # the model's own layers by hand on one example; bn returns (map, state)
        conv = inference.conv(xi)
        bn = inference.bn(conv, state)[0]
        return {"conv": jnp.moveaxis(conv, 0, -1), "bn": jnp.moveaxis(bn, 0, -1)}

    ref = jax.vmap(own)(xc)
    acts = jaxviz.activations(b.model, b.params, x, ["conv", "bn"])
    for name in ref:
        assert_scaled_close(acts[name], ref[name], TOL, name)
    logits = jax.vmap(lambda xi: inference(xi, state)[0])(xc)
    assert_scaled_close(b.model.run(b.params, x).logits, logits, TOL, "logits")
    assert np.abs(np.asarray(ref["bn"]) - np.asarray(ref["conv"])).max() > 0.1  # the statistics matter


def _hand_cam(feats, grads):
    """The seed formula on a batch: channel weights = mean gradient, relu, / max."""
    cam = jax.nn.relu((feats * grads.mean(axis=(1, 2), keepdims=True)).mean(axis=-1))
    return cam / cam.max(axis=(1, 2), keepdims=True)


@pytest.mark.filterwarnings("ignore:some gradcam maps are all zero")
@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_gradcam_at_the_default_and_an_inner_layer(case):
    """The default layer is the last map the logits depend on (a ViT's: inside the last attention, as
    its head reads the class token only); every class's map there and inside is finite, in [0, 1],
    scaled to a maximum of 1 unless all zero (random weights may weigh every channel negatively), and
    most are not all zero."""
    b, x = case["bundle"], _x(case["size"])
    assert b.model.cam_layer() == case["default"]
    classes = list(range(int(b.model.shapes()[-1][1][0])))
    for layer in (None, case["inner"]):
        cams = jaxviz.explain(b.model, b.params, x, classes, layer=layer).heatmaps
        shape = dict(b.model.shapes())[layer or case["default"]]
        assert cams.shape == (2, len(classes)) + shape[:2] and np.all(np.isfinite(cams)), layer
        top = cams.max(axis=(2, 3))
        assert np.all(cams >= 0) and np.all(np.isclose(top, 1, atol=1e-6) | (top == 0)), (layer, top)
        assert np.mean(top > 0) >= 0.5, (layer, top)


@pytest.mark.parametrize("case", [pytest.param("hf_resnet", marks=pytest.mark.slow), "eqx"], indirect=True)
def test_gradcam_inside_equals_the_seed_formula_through_the_models_own_parts(case):
    """The inner layer's Grad-CAM from the model's own pieces: its map by hand, the gradient of the rest."""
    b, x, c, tail = case["bundle"], _x(case["size"]), 1, case["tail"]
    feats = case["reference"](x)[1][case["inner"]]
    grads = jax.grad(lambda f: tail(f)[:, c].sum())(feats)
    got = jaxviz.explain(b.model, b.params, x, [c], layer=case["inner"]).heatmaps[:, 0]
    np.testing.assert_allclose(got, _hand_cam(feats, grads), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_filter_patterns_raise_their_filters(case):
    b = case["bundle"]
    recipe = jaxviz.get_recipe("dlwp1", size=case["size"], steps=6)
    p = jaxviz.filter_patterns(b.model, b.params, case["filters"], [0, 1], recipe)
    assert np.all(np.isfinite(p.patterns)) and np.all(p.history[:, -1] > p.history[:, 0])


FACTORIES = {"imagenet": ("imagenet_resnet_factory", "32x32"), "flaxmodels": ("flaxmodels_factory", "64x64"),
             "hf_resnet": ("hf_resnet_factory", None), "hf_vit": ("hf_vit_factory", None), "eqx": ("eqx_factory", "16x16")}


@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_cli_through_the_factory(case, request, tmp_path, capsys):
    """``jaxviz gradcam --model tests/jax_models.py:FACTORY``, each factory returning another accepted
    form; the maps equal the library's on the same adapted model."""
    from jaxviz.cli import main

    factory, size = FACTORIES[request.node.callspec.params["case"]]
    args = ["gradcam", "--model", f"{HERE}/jax_models.py:{factory}", "--image", "sample:chelsea", "--class", "1",
            "--out", str(tmp_path / "o")] + (["--input", size] if size else [])
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 0, err
    if factory == "imagenet_resnet_factory":
        assert "called with train=False (inference)" in err
    b, s = case["bundle"], case["size"]
    x = jaxviz.load_image("sample:chelsea", (s, s))[None].astype(np.float32)
    ref = jaxviz.explain(b.model, b.params, x, [1]).heatmaps[:, 0]
    np.testing.assert_allclose(np.load(tmp_path / "o" / "gradcam.npz")["heatmaps"], ref, atol=1e-5)


@pytest.mark.slow  # two CLI runs, each building the example ResNet in its own copy of the file
def test_bad_calls_are_one_line_errors_with_a_hint(tmp_path, capsys):
    from jaxviz.cli import main

    m, v = J.imagenet_resnet()
    shape = dict(input_shape=(32, 32, 3))
    for call, match in (
        (lambda: jaxviz.adapt(m, v, **shape, call_kwargs={"train": True}),
         r"call_kwargs sets train=True, training mode: jaxviz shows a model in inference \(train=False\)"),
        (lambda: jaxviz.adapt(m, v, **shape, call_kwargs={"dropout_rng": 1}),
         r"TypeError: .*dropout_rng.*; call_kwargs names an argument its call does not take"),
        (lambda: jaxviz.adapt(m, v, **shape, call_kwargs=[("train", False)]), "call_kwargs must be a dict"),
        (lambda: jaxviz.adapt(m, v), r"adapt\(ResNet\) needs input_shape=\(H, W, C\)"),
        (lambda: jaxviz.adapt(m, v["params"], **shape), "needs its variables.*a mapping with a 'params' collection"),
        (lambda: jaxviz.adapt(m, {"params": v["params"]}, **shape),
         r"collection \"batch_stats\".*; pass every variable collection it has \(params, batch_stats, ...\) in variables"),
    ):
        with pytest.raises(jaxviz.JaxvizError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    net = tmp_path / "nets.py"
    net.write_text(f"import sys\nsys.path.insert(0, {HERE!r})\nimport jax_models as J\n\n"
                   "def training():\n    m, v = J.imagenet_resnet()\n    return m, v, {'train': True}\n\n"
                   "def four():\n    return 1, 2, 3, 4\n")
    for factory, match in (("training", "call_kwargs sets train=True, training mode"),
                           ("four", "returned a tuple of 4; return a model, (module, variables)")):
        rc = main(["gradcam", "--model", f"{net}:{factory}", "--input", "32x32", "--image", "sample:chelsea",
                   "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("jaxviz gradcam: error:") and match in err[-1], err
        assert "Traceback" not in "\n".join(err) and not (tmp_path / "bad").exists()
