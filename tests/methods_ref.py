"""Plain numpy references for tests/test_methods_more.py: the formulas as the papers and their reference
code (pytorch-grad-cam, PAIR's saliency, captum, RISE's notebook) write them, one image and one class at
a time, in Python loops. Gradients and forward passes come from the model protocol (``Model.run``)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage


def relu(a):
    return np.maximum(a, 0)


def unit(m):
    m = np.asarray(m, np.float64)
    return m / m.max() if m.max() > 0 else m


def project(a):
    """pytorch-grad-cam's get_2d_projection for one h x w x C array, the sign fixed so the loadings sum >= 0."""
    h, w, c = a.shape
    m = a.reshape(h * w, c).astype(np.float64)
    m = m - m.mean(axis=0)
    v = np.linalg.svd(m, full_matrices=True)[2][0]
    if v.sum() < 0:
        v = -v
    return (m @ v).reshape(h, w)


def gap_factor(a):
    """sigma_1^2 / (sigma_1^2 - sigma_2^2) of the centred h*w x C matrix: how much float32 rounding is
    amplified in its first principal direction (1 for a clear first component, large for a near tie)."""
    m = a.reshape(-1, a.shape[-1]).astype(np.float64)
    s = np.linalg.svd(m - m.mean(axis=0), compute_uv=False) ** 2
    return s[0] / (s[0] - s[1])


def scores_fn(model, params, logits=True):
    f = jax.jit(lambda x: (lambda o: o.logits if logits else o.output)(model.run(params, x)))
    return lambda x: np.asarray(f(jnp.asarray(x[None], jnp.float32)))[0]


def input_grad_fn(model, params, logits=True):
    g = jax.jit(jax.grad(lambda x, c: (lambda o: o.logits if logits else o.output)(model.run(params, x[None]))[0, c]))
    return lambda x, c: np.asarray(g(jnp.asarray(x, jnp.float32), c))


def feat_and_grads(model, params, x, layer, classes, logits=True):
    """The layer's activations (N h w C) and each class score's gradient there (N K h w C), through
    Model.run's tap and perturbation."""
    shape = dict(model.shapes(x.shape[1:], until=layer))[layer]

    def f(delta):
        out = model.run(params, jnp.asarray(x), taps=(layer,), perturb={layer: delta})
        return (out.logits if logits else out.output), out.taps[layer]

    zero = jnp.zeros((x.shape[0],) + shape, jnp.float32)
    feats = np.asarray(f(zero)[1])
    grads = np.stack([np.asarray(jax.grad(lambda d: f(d)[0][:, c].sum())(zero)) for c in classes], axis=1)
    return feats, grads


def ablation_weights(model, params, x, layer, feat, classes, logits=True):
    """Ablation-CAM's (y_c - y_c^k) / y_c, one forward pass per channel k with channel k zeroed."""
    run = jax.jit(lambda d: (lambda o: o.logits if logits else o.output)(
        model.run(params, jnp.asarray(x[None]), perturb={layer: d})))
    y = np.asarray(run(jnp.zeros((1,) + feat.shape)))[0]
    w = np.zeros((len(classes), feat.shape[-1]))
    for k in range(feat.shape[-1]):
        d = np.zeros((1,) + feat.shape, np.float32)
        d[0, ..., k] = -feat[..., k]
        yk = np.asarray(run(jnp.asarray(d)))[0]
        for j, c in enumerate(classes):
            w[j, k] = (y[c] - yk[c]) / y[c]
    return w


def occlusion_loop(score, x, c, window, stride):
    """captum's Occlusion (baseline 0), a loop over the patches; returns the H x W attribution."""
    h, w = x.shape[:2]
    total, count = np.zeros((h, w)), np.zeros((h, w))
    y = score(x)[c]
    starts = lambda n: [i * stride for i in range(math.ceil((n - window) / stride) + 1)]  # captum's shift counts
    for r in starts(h):
        for q in starts(w):
            mask = np.zeros((h, w))
            mask[r:r + window, q:q + window] = 1
            total += (y - score(x * (1 - mask)[..., None])[c]) * mask
            count += mask
    return np.where(count > 0, total / np.maximum(count, 1), 0)


def blur(im, sigma):
    return im if sigma == 0 else ndimage.gaussian_filter(im, sigma=[sigma, sigma, 0], mode="constant")


def blur_ig(grad, x, c, steps, max_sigma, grad_step=0.01):
    """PAIR's BlurIG.GetMask (linear sigmas), one image and class."""
    sigmas = [i * max_sigma / steps for i in range(steps + 1)]
    total = np.zeros(x.shape, np.float64)
    for i in range(steps):
        xs = blur(x, sigmas[i])
        gg = (blur(x, sigmas[i] + grad_step) - xs) / grad_step
        total += (sigmas[i + 1] - sigmas[i]) * gg * grad(xs.astype(np.float32), c)
    return -total


def guided_ig(grad, x_input, x_baseline, c, steps, fraction, max_dist, eps=1e-9):
    """PAIR's guided_ig_impl, transcribed (in float32, as the model computes)."""
    x_input, x_baseline = np.asarray(x_input, np.float32), np.asarray(x_baseline, np.float32)
    x = x_baseline.copy()
    l1_total = np.abs(x_input - x_baseline).sum()
    attr = np.zeros_like(x_input)
    total = x_input - x_baseline
    if np.abs(total).sum() == 0:
        return attr
    for step in range(steps):
        grad_actual = grad(x, c)
        g = grad_actual.copy()
        alpha = (step + 1.0) / steps
        a_min, a_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
        x_min, x_max = x_baseline + total * np.float32(a_min), x_baseline + total * np.float32(a_max)
        l1_target = l1_total * (1 - (step + 1) / steps)
        gamma = np.inf
        while gamma > 1.0:
            x_old = x.copy()
            with np.errstate(divide="ignore", invalid="ignore"):
                x_alpha = np.where(total != 0, (x - x_baseline) / total, np.nan)
            x_alpha[np.isnan(x_alpha)] = a_max
            x[x_alpha < a_min] = x_min[x_alpha < a_min]
            l1_current = np.abs(x - x_input).sum()
            if math.isclose(l1_target, l1_current, rel_tol=eps, abs_tol=eps):
                attr += (x - x_old) * grad_actual
                break
            g[x == x_max] = np.inf
            threshold = np.quantile(np.abs(g), fraction, method="lower")
            s = np.logical_and(np.abs(g) <= threshold, g != np.inf)
            l1_s = (np.abs(x - x_max) * s).sum()
            gamma = (l1_current - l1_target) / l1_s if l1_s > 0 else np.inf
            if gamma > 1.0:
                x[s] = x_max[s]
            else:
                x[s] = (x + (x_max - x) * gamma)[s]
            attr += (x - x_old) * grad_actual
    return attr


def pair_ig(grad, x, baseline, c, steps):
    """PAIR's IntegratedGradients.GetMask: linspace(0, 1, steps) points, mean gradient times (x - baseline)."""
    total = np.zeros(x.shape, np.float64)
    for a in np.linspace(0, 1, steps):
        total += grad((baseline + a * (x - baseline)).astype(np.float32), c)
    return total * (x - baseline) / steps


def xrai_greedy(attr, segs, min_pixel_diff=50):
    """PAIR's XRAI._xrai (area threshold 1.0), transcribed."""
    output = -np.inf * np.ones(attr.shape)
    current = np.zeros(attr.shape, bool)
    remaining = {i: m for i, m in enumerate(segs)}
    while True:
        best_gain, best_key, drop = -np.inf, None, []
        for key, mask in remaining.items():
            diff = np.logical_and(mask, ~current)
            if diff.sum() < min_pixel_diff:
                drop.append(key)
                continue
            gain = attr[diff].mean()
            if gain > best_gain:
                best_gain, best_key = gain, key
        for key in drop:
            del remaining[key]
        if not remaining:
            break
        added = remaining.pop(best_key)
        output[np.logical_and(added, ~current)] = best_gain
        current |= added
    left = output == -np.inf
    if left.any():
        output[left] = attr[left].mean()
    return output
