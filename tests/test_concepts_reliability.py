"""`jaxviz concepts` as a job: resume after SIGKILL at a random moment ends with exactly the uninterrupted
result; 4 simulated devices give the 1-device dictionary; two processes (jax.distributed) give the
1-process result; the peak memory of a 10x larger collection is within 10% (streamed rows); semi-NMF and
the sparse autoencoders run through the job and produce real dictionaries."""

import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz.concepts import encode
from jaxviz.concepts.job import find_concepts
from jaxviz.concepts.rows import layer_rows
from jaxviz.io import datasets
from jaxviz.nn.preprocess import preprocess

from conftest import cli_peak_mib

LAYER = "conv2d_1"


def _digits_npy(tmp_path, n):
    x, _ = datasets.digits()
    path = tmp_path / "digits.npy"
    np.save(path, x[:n])
    return str(path)


def _cli(images, out, *extra, env=None):
    return [sys.executable, "-m", "jaxviz.cli", "concepts", "--weights", "builtin:digits_cnn", "--images", images,
            "--layer", LAYER, "--concepts", "4", "--class", "3", "--iterations", "3", "--importance", "gradient",
            "--importance-images", "16", "--batch-size", "16", "--out", str(out), *extra]


def _npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    images = _digits_npy(tmp_path, 320)
    ref = subprocess.run(_cli(images, tmp_path / "ref"), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    expect = _npz(tmp_path / "ref" / "concepts.npz")

    delay = float(np.random.default_rng().uniform(0.0, 2.0))  # a random moment after the first checkpoint
    for attempt in range(4):  # a quiet machine may finish the job inside the delay: halve it and start again
        out = tmp_path / f"killed{attempt}"
        ckpt = out / ".concepts-checkpoint"
        p = subprocess.Popen(_cli(images, out, "--checkpoint-every", "1"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        t = time.monotonic()
        while not ckpt.exists() and p.poll() is None and time.monotonic() - t < 300:
            time.sleep(0.05)
        time.sleep(delay)
        if p.poll() is None:
            break
        p.stderr.close()
        delay /= 2
    assert p.poll() is None, f"the job ended before the kill (delay {delay:.2f} s): nothing was interrupted"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    assert ckpt.exists() and not (out / "concepts.npz").exists()

    r = subprocess.run(_cli(images, out, "--checkpoint-every", "1", "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, f"delay {delay:.2f} s: " + r.stderr[-2000:]
    got = _npz(out / "concepts.npz")
    assert set(got) == set(expect)
    for k in expect:
        np.testing.assert_array_equal(got[k], expect[k], err_msg=f"{k} (killed {delay:.2f} s after a checkpoint)")


@pytest.mark.slow
def test_four_simulated_devices_equal_one(tmp_path):
    images = _digits_npy(tmp_path, 320)
    runs = {}
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        r = subprocess.run(_cli(images, tmp_path / f"d{n}"), capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"{n} cpu device(s)" in r.stdout
        runs[n] = _npz(tmp_path / f"d{n}" / "concepts.npz")
    one, four = runs[1]["dictionary"], runs[4]["dictionary"]
    # the same sums in another order (per device, then psum): float32 rounding only
    np.testing.assert_allclose(four, one, rtol=0, atol=1e-4 * np.abs(one).max())
    np.testing.assert_allclose(runs[4]["quality/relative_error"], runs[1]["quality/relative_error"], rtol=1e-4)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])  # 2: 4 simulated devices over the two processes
def test_two_processes_equal_one(tmp_path, devices):
    images = _digits_npy(tmp_path, 320)  # two contiguous shares of 160 = 10 batches of 16 each
    extra = ("--importance-images", "320")  # each process's first N: every image on both sides
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    port = _free_port()
    procs = [subprocess.Popen(_cli(images, tmp_path / "two", *extra, "--coordinator", f"localhost:{port}",
                                   "--process", f"{i}/2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    one = subprocess.run(_cli(images, tmp_path / "one", *extra), capture_output=True, text=True, env=env)
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        assert f"{2 * devices} cpu device(s)" in out, out  # the global devices: both processes joined
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = _npz(tmp_path / "one" / "concepts.npz"), _npz(tmp_path / "two" / "concepts.npz")
    assert set(a) == set(b) and "importance/3" in a and "quality/stability" in a
    # every batch is the same compiled program on the same 16 images (split over the same number of
    # local devices) on both sides; only the float64 sums of the batches' statistics are added in
    # another order (each share's, then the two shares), which can move a float32 dictionary entry by an
    # ulp: rtol 1e-5 (measured: exactly equal, 1 and 2 devices per process)
    for k in a:
        if a[k].dtype.kind in "fc":
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6 * max(1.0, np.abs(a[k]).max()), err_msg=k)
        else:
            np.testing.assert_array_equal(b[k], a[k], err_msg=k)


@pytest.mark.slow
def test_peak_memory_of_a_ten_times_larger_collection_is_within_ten_percent(tmp_path):
    x, _ = datasets.digits()
    layer, n = "conv2d", 300  # 28 x 28 x 32 per image: the 10N activation matrix is 301 MB in float32
    peaks = {}
    for m in (n, 10 * n):
        path = tmp_path / f"x{m}.npy"
        np.save(path, np.resize(x, (m,) + x.shape[1:]))  # the digits repeated
        args = ["concepts", "--weights", "builtin:digits_cnn", "--images",
                str(path), "--layer", layer, "--concepts", "8", "--class", "3", "--iterations", "2",
                "--importance", "gradient", "--importance-images", "16", "--batch-size", "64",
                "--out", str(tmp_path / f"o{m}")]
        rc, err, peaks[m] = cli_peak_mib(args)
        assert rc == 0, err[-2000:]
        with np.load(tmp_path / f"o{m}" / "concepts.npz") as z:
            assert len(z["paths"]) == m
    whole = 10 * n * 28 * 28 * 32 * 4 / 2**20  # what the 10N matrix would add if it were held whole
    print(f"peak RSS: {peaks[n]:.0f} MiB over {n} images, {peaks[10 * n]:.0f} MiB over {10 * n} "
          f"(the whole 10N activation matrix: {whole:.0f} MiB)")
    assert whole > 0.1 * peaks[n]  # the test can fail: holding the matrix would break the 10% bound
    assert peaks[10 * n] <= 1.10 * peaks[n], peaks


@pytest.fixture(scope="module")
def digits_rows():
    L = jaxviz.load_model("digits_cnn", "builtin")
    x, _ = datasets.digits()
    x = x[:256]
    a = layer_rows(L.model, L.params, LAYER, preprocess(jnp.asarray(x, jnp.float32), L.model.preprocessing))
    return L, x, np.asarray(a).reshape(-1, np.asarray(a).shape[-1])


def _r2(a, z, d):
    rec = np.asarray(z) @ np.asarray(d.components) + (0 if d.pre_bias is None else np.asarray(d.pre_bias))
    return 1 - np.sum((a - rec) ** 2) / np.sum((a - a.mean()) ** 2)  # one scalar mean: quality's r2_global


@pytest.mark.slow
@pytest.mark.parametrize("method,min_r2", [("seminmf", 0.8), ("topk-sae", 0.5), ("batchtopk-sae", 0.5)])
def test_seminmf_and_saes_through_the_job(digits_rows, method, min_r2):
    L, x, a = digits_rows
    K = 16
    res = find_concepts(L.model, L.params, x, LAYER, K, method=method, iterations=8, batch_size=32,
                        importance_images=0)
    d = res.dictionary
    assert d.method == method and d.components.shape == (K, a.shape[1])
    z = np.asarray(encode(d, jnp.asarray(a)))
    assert z.min() >= 0  # codes are non-negative for every method
    r2 = _r2(a, z, d)
    assert r2 > min_r2, r2
    assert abs(res.quality["r2"] - r2) < 0.02, (res.quality["r2"], r2)  # the job's streamed R² is this one
    if method == "seminmf":
        assert (np.asarray(d.components) < 0).any()  # signed dictionary: what semi-NMF is for
    else:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(d.components), axis=1), 1, atol=1e-4)  # unit decoder
        l0 = np.mean(np.sum(z > 0, 1))
        assert l0 <= K // 4 + (0 if method == "topk-sae" else 2), l0  # sae_k default K // 4 active latents


@pytest.mark.slow
def test_concept_patterns_follow_their_direction(digits_rows):
    from jaxviz.cli.concepts import concept_patterns

    L, x, a = digits_rows
    d, _, _ = jaxviz.concepts.fit_nmf(a, 4, max_iter=50)
    imgs = concept_patterns(L.model, L.params, LAYER, d.components, "dlwp1", L.model.input_shape)
    assert len(imgs) == 4 and imgs[0].dtype == np.uint8
    acts = layer_rows(L.model, L.params, LAYER, preprocess(jnp.asarray(np.stack(imgs), jnp.float32),
                                                           L.model.preprocessing))
    mean = np.asarray(acts).reshape(4, -1, a.shape[1]).mean(1)  # each pattern's mean activation
    score = mean @ np.asarray(d.components).T  # score[p, c]: pattern p on concept c's direction objective
    # each concept's direction is raised most by its own pattern (among the patterns of all concepts)
    np.testing.assert_array_equal(np.argmax(score, axis=0), np.arange(4), err_msg=str(score))
