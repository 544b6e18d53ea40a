"""Your own Flax model through `jaxviz.adapt`: models written here (tests/flax_nets.py), never seen by the
library — an NNX CNN with residual blocks and batch norm, a Linen CNN, a tiny NNX ViT. Every capability
must agree with the same quantity computed by hand from the module's own parts."""

import json
import os
import subprocess
import sys

import flax_nets as F
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxviz
from jaxviz.methods.attribution import integrated_gradients
from conftest import assert_scaled_close

TOL = 1e-6  # of each layer's scale (conftest.scaled_err)

HERE = os.path.dirname(__file__)
X = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))


def _cam(feats, grads):
    """The seed formula (Listing 5.42) on one image: channel weights = mean gradient, relu, / max."""
    cam = jax.nn.relu((feats * grads.mean(axis=(0, 1))).mean(axis=-1))
    return cam / cam.max()


def _hand_gradcam(head, tail, x, c):
    feats = head(x)
    grads = jax.grad(lambda f: tail(f)[:, c].sum())(feats)
    return np.stack([_cam(feats[i], grads[i]) for i in range(x.shape[0])])


@pytest.fixture(scope="module")
def nnx_net():
    m = F.resnet(0)
    bundle = jaxviz.adapt(m, input_shape=(16, 16, 3))
    m.eval()  # the module's own parts, on running statistics as the adapter uses them
    return m, bundle


@pytest.fixture(scope="module")
def linen_net():
    mod, v = F.linen_cnn(0)
    return mod, v, jaxviz.adapt(mod, v, input_shape=(16, 16, 3))


@pytest.fixture(scope="module")
def vit():
    m = F.ViT(nnx.Rngs(0))
    bundle = jaxviz.adapt(m, input_shape=(16, 16, 3), reshape=F.vit_tokens_to_grid)
    return m, bundle


@pytest.mark.slow
def test_layer_names_are_paths_in_call_order(nnx_net, linen_net, vit):
    _, b = nnx_net
    assert b.model.layer_names == ["stem", "blocks.0", "blocks.0.conv1", "blocks.0.bn1", "blocks.0.conv2", "blocks.1",
                                   "blocks.1.conv1", "blocks.1.bn1", "blocks.1.conv2", "head"]
    assert linen_net[2].model.layer_names == ["conv1", "bn", "conv2", "head"]
    assert vit[1].model.layer_names[:3] == ["patch", "blocks.0", "blocks.0.norm1"]
    assert b.model.cam_layer() == "blocks.1" and linen_net[2].model.cam_layer() == "conv2"
    with pytest.raises(jaxviz.JaxvizError, match=r"unknown layer 'blocks.7'.*valid layers: stem, blocks.0"):
        b.model.resolve("blocks.7")


def test_nnx_taps_equal_the_modules_own_outputs(nnx_net):
    m, b = nnx_net
    acts = jaxviz.activations(b.model, b.params, X, ["stem", "blocks.0", "blocks.1.conv1", "blocks.1.bn1"])
    stem = m.stem(X)
    b0 = m.blocks[0](nnx.relu(stem))
    conv1 = m.blocks[1].conv1(b0)
    for name, ref in (("stem", stem), ("blocks.0", b0), ("blocks.1.conv1", conv1),
                      ("blocks.1.bn1", m.blocks[1].bn1(conv1))):
        assert_scaled_close(acts[name], ref, TOL, name)
    assert_scaled_close(b.model.run(b.params, X).logits, m(X), TOL, "logits")


def test_linen_taps_equal_captured_intermediates(linen_net):
    mod, v, b = linen_net
    _, state = mod.apply(v, X, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    acts = jaxviz.activations(b.model, b.params, X, ["conv1", "bn", "conv2", "head"])
    for name in ("conv1", "bn", "conv2", "head"):
        assert_scaled_close(acts[name], inter[name]["__call__"][0], TOL, name)


def test_nnx_gradcam_inside_equals_the_seed_formula_by_hand(nnx_net):
    m, b = nnx_net

    def head(x):
        return m.blocks[0](nnx.relu(m.stem(x)))

    def tail(f):
        return m.head(m.blocks[1](f).mean(axis=(1, 2)))

    for c in (0, 3):
        got = jaxviz.explain(b.model, b.params, X, [c], layer="blocks.0").heatmaps[:, 0]
        np.testing.assert_allclose(got, _hand_gradcam(head, tail, X, c), atol=1e-5, rtol=0)


def test_linen_gradcam_equals_the_seed_formula_by_hand(linen_net):
    mod, v, b = linen_net
    bound = mod.bind(v)
    got = jaxviz.explain(b.model, b.params, X, [2], layer="conv2").heatmaps[:, 0]

    def head(x):  # the layer "conv2" is the Conv module's output, before the relu the parent applies
        return bound.conv2(bound.features(x))

    def tail(f):
        return bound.head(jax.nn.relu(f).mean(axis=(1, 2)))

    np.testing.assert_allclose(got, _hand_gradcam(head, tail, X, 2), atol=1e-5, rtol=0)


def test_vit_gradcam_on_reshaped_tokens_equals_hand(vit):
    m, b = vit
    blk = m.blocks[1]

    def tokens(x):  # the input of blocks.1
        t = m.patch(x)
        n, h, w, d = t.shape
        t = jnp.concatenate([jnp.broadcast_to(m.cls[...], (n, 1, d)), t.reshape(n, h * w, d)], axis=1)
        return m.blocks[0](t)

    t1 = tokens(X)
    n1 = blk.norm1(t1)

    def tail_tokens(n1_):
        t2 = t1 + blk.attn(n1_)
        out = t2 + nnx.gelu(blk.mlp(blk.norm2(t2)))
        return m.head(out[:, 0])

    c = 1
    g = jax.grad(lambda a: tail_tokens(a)[:, c].sum())(n1)
    feats, grads = F.vit_tokens_to_grid(n1), F.vit_tokens_to_grid(g)
    ref = np.stack([_cam(feats[i], grads[i]) for i in range(X.shape[0])])
    got = jaxviz.explain(b.model, b.params, X, [c], layer="blocks.1.norm1").heatmaps[:, 0]
    assert got.shape == (3, 4, 4)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["nnx", "linen", "vit"])
def test_saliency_and_ig_equal_jax_grad_of_the_module(which, nnx_net, linen_net, vit):
    if which == "nnx":
        fn, b = nnx_net[0], nnx_net[1]
    elif which == "linen":
        fn, b = (lambda x: linen_net[0].apply(linen_net[1], x)), linen_net[2]
    else:
        fn, b = vit[0], vit[1]
    c = 1
    g = jax.vmap(jax.grad(lambda im: fn(im[None])[0, c]))(X)
    sal = jnp.abs(g).max(axis=-1)
    sal = sal / sal.max(axis=(1, 2), keepdims=True)
    got = jaxviz.explain(b.model, b.params, X, [c], method="saliency").heatmaps[:, 0]
    np.testing.assert_allclose(got, sal, atol=1e-5, rtol=0)
    steps = 8
    alphas = (jnp.arange(steps) + 0.5) / steps
    path_grads = jnp.stack([jax.vmap(jax.grad(lambda im: fn(im[None])[0, c]))(a * X) for a in alphas])
    ig = integrated_gradients(b.model, b.params, X, jnp.full((3, 1), c), steps=steps)[:, 0]
    np.testing.assert_allclose(ig, X * path_grads.mean(axis=0), atol=1e-5, rtol=0)


def test_guided_backprop_guides_the_modules_relus(nnx_net):
    """On the adapted NNX net, guided backprop differs from saliency (the ReLUs are guided) and its
    maps equal a hand-written guided gradient through the module's parts."""
    m, b = nnx_net
    from jaxviz.nn.layers import guided_relu

    def guided(x):
        h = guided_relu(m.stem(x))
        for blk in m.blocks:
            h = guided_relu(h + blk.conv2(guided_relu(blk.bn1(blk.conv1(h)))))
        return m.head(h.mean(axis=(1, 2)))

    g = jax.vmap(jax.grad(lambda im: guided(im[None])[0, 2]))(X)
    ref = jnp.abs(g).max(axis=-1)
    ref = ref / ref.max(axis=(1, 2), keepdims=True)
    got = jaxviz.explain(b.model, b.params, X, [2], method="guided").heatmaps[:, 0]
    sal = jaxviz.explain(b.model, b.params, X, [2], method="saliency").heatmaps[:, 0]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert np.abs(got - sal).max() > 0.05
    assert nnx.relu is jax.nn.relu  # the swap is undone after tracing


@pytest.mark.parametrize("which,layer", [("nnx", "blocks.0.conv1"), ("linen", "conv2")])
def test_filter_patterns_rise_and_each_excites_its_own_filter_most(which, layer, nnx_net, linen_net):
    b = nnx_net[1] if which == "nnx" else linen_net[2]
    filters = [0, 1, 2, 3]
    p = jaxviz.filter_patterns(b.model, b.params, layer, filters, jaxviz.get_recipe("dlwp1", size=16, steps=20))
    assert np.all(p.history[:, -1] > p.history[:, 0])
    acts = jaxviz.activations(b.model, b.params, jnp.asarray(p.patterns), [layer])[layer]
    means = np.asarray(acts).mean(axis=(1, 2))[:, filters]  # pattern x filter
    assert np.all(np.argmax(means, axis=0) == np.arange(len(filters)))


def test_no_recompilation_and_batch_independence(nnx_net):
    _, b = nnx_net
    x = np.asarray(X)
    with jaxviz.count_compilations() as first:
        a = jaxviz.explain(b.model, b.params, x, [1, 2], method="gradcam++")
    with jaxviz.count_compilations() as second:  # new images and classes, same shapes: no compilation
        jaxviz.explain(b.model, b.params, x + 1, [3, 4], method="gradcam++")
    assert first.count >= 1 and second.count == 0
    chunked = jaxviz.explain(b.model, b.params, X, [1, 2], method="gradcam++", batch_size=1)
    np.testing.assert_allclose(chunked.heatmaps, a.heatmaps, atol=1e-6)


def test_weights_of_adapted_layers(nnx_net, linen_net):
    m, b = nnx_net
    w = jaxviz.layer_weights(b.model, b.params, "blocks.0.conv1")
    np.testing.assert_array_equal(w.kernel, np.asarray(m.blocks[0].conv1.kernel[...]))
    bn = jaxviz.layer_weights(b.model, b.params, "blocks.0.bn1")
    np.testing.assert_array_equal(bn.kernel, np.asarray(m.blocks[0].bn1.scale[...]))
    lw = jaxviz.layer_weights(linen_net[2].model, linen_net[2].params, "conv2")
    np.testing.assert_array_equal(lw.kernel, np.asarray(linen_net[1]["params"]["conv2"]["kernel"]))
    with pytest.raises(jaxviz.JaxvizError, match="has no weights"):
        jaxviz.layer_weights(b.model, b.params, "blocks.0")


def test_bad_adapt_calls_are_one_line_errors():
    mod, v = F.linen_cnn(0)
    for call, match in (
        (lambda: jaxviz.adapt(mod, input_shape=(16, 16, 3)), "needs its variables"),
        (lambda: jaxviz.adapt(object(), input_shape=(16, 16, 3)), "takes a flax.nnx.Module"),
        (lambda: jaxviz.adapt(F.resnet(0), input_shape=(16, 16)), r"input_shape must be \(H, W, C\)"),
        (lambda: jaxviz.adapt(F.resnet(0), input_shape=(16, 16, 1)), "cannot run on a 1x16x16x1 batch"),
        (lambda: jaxviz.adapt(F.resnet(0), input_shape=(16, 16, 3), preprocessing="bogus"), "unknown preprocessing"),
    ):
        with pytest.raises(jaxviz.JaxvizError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_sharding_over_four_devices_equals_one():
    code = """
import json, sys, jax, numpy as np
sys.path.insert(0, %r)
import flax_nets as F, jaxviz
b = jaxviz.adapt(F.resnet(0), input_shape=(16, 16, 3))
x = np.asarray(jax.random.normal(jax.random.key(0), (8, 16, 16, 3)))
one = jax.devices()[:1]
cams4 = jaxviz.explain(b.model, b.params, x, [1, 2], layer="blocks.0", batch_size=8)
cams1 = jaxviz.explain(b.model, b.params, x, [1, 2], layer="blocks.0", batch_size=2, devices=one)
r = jaxviz.get_recipe("dlwp1", size=16, steps=4)
p4 = jaxviz.filter_patterns(b.model, b.params, "blocks.0.conv1", range(8), r, batch_size=8)
p1 = jaxviz.filter_patterns(b.model, b.params, "blocks.0.conv1", range(8), r, batch_size=2, devices=one)
print(json.dumps({"devices": jax.device_count(), "cam": float(np.abs(cams4.heatmaps - cams1.heatmaps).max()),
                  "filters": float(np.abs(p4.patterns - p1.patterns).max())}))
""" % HERE
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    assert out["cam"] <= 1e-6 and out["filters"] <= 1e-6, out


def test_cli_gradcam_on_a_factory_model_and_its_errors(tmp_path, capsys):
    """`jaxviz gradcam --model my_net.py:build --layer blocks.1` end to end; a factory that raises, returns
    something else, or a layer that does not exist: one line that says what is valid, exit 2."""
    from jaxviz.cli import main

    net = tmp_path / "my_net.py"
    net.write_text("import flax_nets\n\ndef build():\n    return flax_nets.resnet(0)\n\n"
                   "def broken():\n    raise RuntimeError('no weights here')\n\ndef number():\n    return 42\n")
    sys.path.insert(0, HERE)
    try:
        def cli(*args):
            rc = main([str(a) for a in args])
            out, err = capsys.readouterr()
            return rc, err.strip().splitlines()

        base = ["gradcam", "--input", "16x16", "--image", "sample:chelsea"]
        rc, err = cli(*base, "--model", f"{net}:build", "--layer", "blocks.1", "--class", "2", "--out", tmp_path / "o")
        assert rc == 0, err
        b = jaxviz.adapt(F.resnet(0), input_shape=(16, 16, 3))
        x = jaxviz.load_image("sample:chelsea", (16, 16))[None].astype(np.float32)
        ref = jaxviz.explain(b.model, b.params, x, [2], layer="blocks.1").heatmaps
        np.testing.assert_allclose(np.load(tmp_path / "o" / "gradcam.npz")["heatmaps"], ref[:, 0], atol=1e-6)
        for factory, layer, match in (
            ("broken", "blocks.1", "the factory raised RuntimeError: no weights here"),
            ("number", "blocks.1", "adapt takes a flax.nnx.Module"),
            ("nothing", "blocks.1", "has no function 'nothing'; its functions: broken, build, number"),
            ("build", "blocks.9", "unknown layer 'blocks.9' in build; valid layers: stem, blocks.0, blocks.0.conv1"),
        ):
            rc, err = cli(*base, "--model", f"{net}:{factory}", "--layer", layer, "--out", tmp_path / "bad")
            assert rc == 2 and len([l for l in err if "error:" in l]) == 1, err
            assert err[-1].startswith("jaxviz gradcam: error:") and match in err[-1], err
            assert not (tmp_path / "bad").exists()
    finally:
        sys.path.remove(HERE)


def test_nnx_call_in_training_mode_by_default_is_run_in_inference():
    """A call that defaults to training (``train=True`` switching dropout on) gets ``train=False``, said
    in the bundle's source; the caller's own ``call_kwargs`` win."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.head = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x, train: bool = True):
            return self.head(self.drop(self.conv(x), deterministic=not train).mean(axis=(1, 2)))

    m = Net(nnx.Rngs(0))
    b = jaxviz.adapt(m, input_shape=(16, 16, 3))
    assert b.source == "adapted Net, called with train=False (inference)" and b.model.call_kwargs == {"train": False}
    assert_scaled_close(b.model.run(b.params, X).logits, m(X, train=False), TOL, "logits")
    own = jaxviz.adapt(m, input_shape=(16, 16, 3), call_kwargs={"train": False})
    assert own.source == "adapted Net" and own.model.inference == {}
