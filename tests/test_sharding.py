"""The filter, class and heatmap batches sharded over 4 simulated CPU devices equal the single-device
results: bit for bit against the same per-device batch, and within float32 rounding against one big
call (XLA:CPU picks batch-size-dependent convolution kernels, measured differences <= 1e-6)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(__file__)


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


@pytest.fixture(scope="module")
def sharded():
    r = subprocess.run([sys.executable, os.path.join(HERE, "sharded_run.py")], capture_output=True, text=True,
                       env=_env(4), check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_four_devices_are_used(sharded):
    assert sharded["devices"] == 4 and sharded["input_devices"] == 4


def test_filters_and_classes_equal_single_device(sharded):
    assert sharded["filters_equal_per_device_batch"]
    assert sharded["classes_equal_per_device_batch"]
    assert sharded["filters_dead_equal"]
    assert sharded["filters_max_diff_single_call"] <= 1e-5


@pytest.mark.parametrize("method", ["gradcam", "smoothgrad"])
def test_heatmaps_equal_single_device(sharded, method):
    assert sharded[f"{method}_equal_per_device_batch"]
    assert sharded[f"{method}_classes_equal"]
    assert sharded[f"{method}_max_diff_single_call"] <= 1e-5


@pytest.mark.slow
def test_cli_gradcam_on_a_folder_sharded(tmp_path):
    import cv2
    from sklearn.datasets import load_digits

    folder = tmp_path / "digits"
    folder.mkdir()
    for i, im in enumerate(load_digits().images[:5]):
        cv2.imwrite(str(folder / f"d{i}.png"), np.uint8(im * 15))
    (folder / "notes.txt").write_text("not an image")
    outs = {}
    for devices in (1, 4):
        out = tmp_path / f"cam{devices}"
        r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "gradcam", "--weights", "builtin:digits_cnn", "--image",
                            str(folder), "--batch-size", "4", "--out", str(out)], capture_output=True, text=True,
                           env=_env(devices))
        assert r.returncode == 0, r.stderr
        outs[devices] = np.load(out / "gradcam.npz")
        assert sorted(p.name for p in out.glob("*_overlay.png")) == [f"d{i}_overlay.png" for i in range(5)]
    np.testing.assert_array_equal(outs[1]["classes"], outs[4]["classes"])
    np.testing.assert_allclose(outs[1]["heatmaps"], outs[4]["heatmaps"], atol=1e-5)


@pytest.mark.slow
def test_cli_atlas_every_filter_of_every_conv_layer(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jaxviz.cli", "filters", "--weights", "builtin:digits_cnn", "--layer",
                        "all", "--count", "all", "--recipe", "dlwp1", "--size", "28", "--steps", "2", "--batch-size",
                        "24", "--out", str(tmp_path / "atlas")], capture_output=True, text=True, env=_env(2))
    assert r.returncode == 0, r.stderr
    assert "96 patterns" in r.stdout and "2 cpu device(s)" in r.stdout
    for layer, n in (("conv2d", 32), ("conv2d_1", 64)):
        z = np.load(tmp_path / "atlas" / f"{layer}.npz")
        assert list(z["filters"]) == list(range(n)) and z["patterns"].shape == (n, 28, 28, 1)
