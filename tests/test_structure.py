"""The structure issue 25 asks for: guided backprop and NNX taps scoped to the trace that asks for them
(threads do not see each other's; the user's classes and the ReLU functions stay the very same
objects), one registry of attribution methods that the CLI takes its options from, recipes that carry
their own behaviour, policies over the protocol's core, and a package file in every package."""

import os
import threading

import flax.linen as linen
import flax_nets as F
import jax
import numpy as np
import pytest
from flax import nnx

import jaxviz
from jaxviz.errors import JaxvizError
from jaxviz.methods import attribution
from jaxviz.methods.featurevis import recipes
from jaxviz.nn import policy
from conftest import assert_scaled_close

X = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def nnx_net():
    return jaxviz.adapt(F.resnet(0), input_shape=(16, 16, 3))


def _input_grad(model, params, x):
    """d logit 1 / d input, traced afresh on every call (no jit: each call is a new trace)."""
    return np.asarray(jax.grad(lambda z: model.run(params, z).logits[:, 1].sum())(x))


def _relus():
    return jax.nn.relu, jax.nn.relu6, nnx.relu, nnx.relu6, linen.relu, linen.relu6


@pytest.mark.slow
def test_guided_and_plain_gradients_concurrently_in_threads(nnx_net):
    model, params = nnx_net.model, nnx_net.params
    guided = policy.guided(model)
    ref_plain, ref_guided = _input_grad(model, params, X), _input_grad(guided, params, X)
    assert np.abs(ref_plain - ref_guided).max() > 1e-3  # guided backprop changes this network's gradient
    barrier, results, errors = threading.Barrier(2), {"plain": [], "guided": []}, []

    def work(kind, m):
        try:
            for _ in range(20):
                barrier.wait(timeout=60)  # both threads trace at the same moment, every iteration
                results[kind].append(_input_grad(m, params, X))
        except Exception as e:  # noqa: BLE001 (reported below, with the thread's kind)
            errors.append((kind, e))
            barrier.abort()

    threads = [threading.Thread(target=work, args=a) for a in (("plain", model), ("guided", guided))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results["plain"]) == len(results["guided"]) == 20
    for plain, g in zip(results["plain"], results["guided"]):
        assert_scaled_close(plain, ref_plain, 1e-5, "plain")
        assert_scaled_close(g, ref_guided, 1e-5, "guided")


def test_user_classes_and_relus_are_unchanged_by_taps_and_guided_runs(nnx_net):
    classes = (F.ResNet, F.ResBlock, nnx.Conv, nnx.BatchNorm, nnx.Linear)
    calls = {c: c.__dict__.get("__call__") for c in classes}
    relus = _relus()
    model, params = nnx_net.model, nnx_net.params
    seen_inside = []

    class Probe(nnx.Module):  # records what a lookup of jax.nn.relu gives inside a guided trace
        def __init__(self):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))

        def __call__(self, x):
            seen_inside.append(jax.nn.relu)
            return self.conv(x).mean(axis=(1, 2))

    probe = jaxviz.adapt(Probe(), input_shape=(16, 16, 3))
    policy.guided(probe.model).run(probe.params, X)
    probe.model.run(probe.params, X)
    assert seen_inside[-2] is not relus[0] and seen_inside[-1] is relus[0]  # guided inside its trace only

    model.run(params, X, taps=("blocks.0", "stem"))
    jaxviz.explain(model, params, X, [1], method="guided")
    jaxviz.explain(model, params, X, [1], method="gradcam", layer="blocks.0")
    jaxviz.activations(model, params, X)
    assert all(a is b for a, b in zip(_relus(), relus))
    assert {c: c.__dict__.get("__call__") for c in classes} == calls
    user = F.resnet(0)
    jaxviz.adapt(user, input_shape=(16, 16, 3)).model.run(nnx_net.params, X, taps=("stem",))
    assert type(user) is F.ResNet and all(type(b) is F.ResBlock for b in user.blocks)


def test_a_thread_outside_a_guided_trace_sees_the_original_relu():
    """While one thread traces a guided model, another thread's lookups give the original functions and
    the module's classes are their own."""
    relus, inside, outside = _relus(), threading.Event(), threading.Event()
    seen = []

    class Slow(nnx.Module):
        def __init__(self):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))

        def __call__(self, x):
            seen.append(jax.nn.relu)
            inside.set()
            outside.wait(timeout=60)  # hold the guided trace open while the other thread looks
            return self.conv(x).mean(axis=(1, 2))

    outside.set()  # adapting traces it (plain): let that pass
    slow = jaxviz.adapt(Slow(), input_shape=(16, 16, 3))
    outside.clear()  # now hold the guided trace open
    inside.clear()
    calls = {c: c.__dict__.get("__call__") for c in (Slow, nnx.Conv)}
    t = threading.Thread(target=lambda: policy.guided(slow.model).run(slow.params, X))
    t.start()
    assert inside.wait(timeout=60)
    looked, calls_during = _relus(), {c: c.__dict__.get("__call__") for c in calls}
    outside.set()
    t.join()
    assert all(a is b for a, b in zip(looked, relus))
    assert calls_during == calls  # the classes are not patched, not even while a trace runs
    assert seen[-1] is not relus[0]


def test_the_cli_takes_methods_defaults_and_bounds_from_the_registry():
    from jaxviz.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    gradcam = sub.choices["gradcam"]
    actions = {a.dest: a for a in gradcam._actions}
    assert tuple(actions["method"].choices) == attribution.METHODS
    assert set(attribution.METHODS) == {m.name for m in attribution.REGISTRY}
    for name, s in attribution.SETTINGS.items():
        assert actions[name].default == s.default == getattr(attribution.Settings(), name)
        assert f"{s.low}..{s.high}" in actions[name].help
    assert set(attribution.LAYER_METHODS) | set(attribution.INPUT_METHODS) == set(attribution.METHODS)


@pytest.mark.parametrize("argv, message", [
    (["--samples", "10001"], "--samples must be at most 10000, got 10001"),
    (["--steps", "100001"], "--steps must be at most 100000, got 100001"),
    (["--noise", "11"], "--noise must be at most 10, got 11.0"),
    (["--chunk", "0"], "--chunk must be at least 1, got 0"),
    (["--batch-size", "65537"], "--batch-size must be at most 65536, got 65537"),
])
def test_gradcam_options_have_upper_bounds(tmp_path, capsys, argv, message):
    from jaxviz.cli import main

    rc = main(["gradcam", "--weights", "builtin:digits_cnn", "--image", "sample:camera", *argv,
               "--out", str(tmp_path / "out")])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "100001"], "--steps must be at most 100000, got 100001"),
    (["--octaves", "17"], "--octaves must be at most 16, got 17"),
    (["--batch-size", "65537"], "--batch-size must be at most 65536, got 65537"),
    (["--diversity", "1e9", "--per-filter", "2"], "--diversity must be at most 10000, got 1000000000.0"),
])
def test_filters_options_have_upper_bounds(tmp_path, capsys, argv, message):
    from jaxviz.cli import main

    rc = main(["filters", "--weights", "builtin:digits_cnn", *argv, "--out", str(tmp_path / "out")])
    assert rc == 2 and message in capsys.readouterr().err


def test_explain_checks_settings_against_the_registry():
    model = jaxviz.get_model("digits_cnn")
    with pytest.raises(JaxvizError, match=r"settings.samples must be 1..10000, got 0"):
        attribution.compiled_explain(model, model.input_shape, "smoothgrad", settings=attribution.Settings(samples=0))


def test_a_recipe_carries_its_own_behaviour(monkeypatch):
    """get_recipe knows no recipe by name: a new preset with its own crop and size rules just works."""
    base = recipes.RECIPES["dlwp1"]
    mine = recipes.Preset(base, "test", crop=lambda n: {"steps": 100 + n},
                          resized=lambda size: {"penalty_weight": float(size)})
    monkeypatch.setitem(recipes.PRESETS, "mine", mine)
    r = recipes.get_recipe("mine", crop=3, size=20)
    assert (r.steps, r.penalty_weight, r.size) == (103, 20.0, 20)
    with pytest.raises(JaxvizError, match="crop applies to the dlwp2 and mine recipe only, not lucid"):
        recipes.get_recipe("lucid", crop=2)


def test_policies_use_a_hint_and_fall_back_to_the_core(nnx_net):
    vgg = jaxviz.get_model("vgg16")
    assert policy.cam_layer(vgg) == vgg.cam_layer() == "block5_conv3"
    assert policy.guided(vgg).layer("block1_conv1").activation == "guided_relu"  # the graph's own hint

    class Bare:  # the adapter without its hints: the generic policies over the core
        def __init__(self, m):
            self._m = m

        def __getattr__(self, name):
            if name.endswith("_hint") or name in ("init", "reinit"):
                raise AttributeError(name)
            return getattr(self._m, name)

    bare = Bare(nnx_net.model)
    spatial = [n for n, s in nnx_net.model.shapes() if len(s) == 3]
    assert policy.cam_layer(bare) == spatial[-1]
    assert policy.feature_layers(bare) == policy.feature_layers(nnx_net.model)
    with pytest.raises(JaxvizError, match="cannot re-create its untrained parameters"):
        policy.reinit(bare, nnx_net.params, jax.random.key(0), ["stem"])


def test_every_package_has_an_init():
    missing = []
    for d, _, files in os.walk(os.path.join(ROOT, "jaxviz")):
        if any(f.endswith(".py") for f in files) and "__init__.py" not in files:
            missing.append(os.path.relpath(d, ROOT))
    assert not missing


def test_every_layer_kind_is_in_the_one_vocabulary():
    from jaxviz.nn import layers as L
    from jaxviz.nn.kinds import KINDS

    kinds = {}
    for name, cls in L.LAYERS.items():
        kind = cls.kind
        if isinstance(kind, str):
            kinds[name] = kind
        else:  # a property: the kind depends on the layer's settings (Reduce: global_pool or act)
            kinds[name] = None
    assert {n: k for n, k in kinds.items() if k is not None and k not in KINDS} == {}
    reduce_kinds = {L.LAYERS["Reduce"](fn="mean", axis=(1, 2), keepdims=False).kind,
                    L.LAYERS["Reduce"](fn="mean", axis=(3,), keepdims=True).kind}
    assert reduce_kinds <= set(KINDS)
