import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"


def rel_err(a, b) -> float:
    """max |a - b| relative to the scale of b (1 when b is all below 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def scaled_err(actual, desired) -> float:
    """max |actual - desired| over max |desired|: the error relative to the scale of the whole array (a
    layer's activations, a heatmap), the form every parity tolerance here is stated in. float32 rounding
    through a network grows with depth and differs between CPUs' kernels, so an element-wise rtol/atol
    fails on one element near zero of a deep layer while the layer agrees to 1e-6 of its scale."""
    a, d = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert a.shape == d.shape, (a.shape, d.shape)
    scale = float(np.max(np.abs(d))) if d.size else 0.0
    return float(np.max(np.abs(a - d)) / scale) if scale > 0 else float(np.max(np.abs(a), initial=0.0))


def assert_scaled_close(actual, desired, tol: float, err_msg: str = "") -> None:
    """``scaled_err(actual, desired) <= tol``. With ``JAXVIZ_TOL_LOG=FILE`` each measured error is
    appended to FILE (test, message, error, tolerance): how the tolerances were chosen."""
    err = scaled_err(actual, desired)
    log = os.environ.get("JAXVIZ_TOL_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{err_msg}\t{err:.3e}\t{tol:.0e}\n")
    assert err <= tol, f"{err_msg}: max|diff| / max|ref| = {err:.3e} > {tol:.0e}"


def need_fixture(rel: str) -> pathlib.Path:
    """The shared fixture file ``rel`` (e.g. ``keras/fashion_cnn_keras2.11.h5``); skips only the calling
    test when it is absent, so tests that need no fixture still run without them."""
    path = FIXTURES / rel
    if not path.exists():
        pytest.skip(f"shared fixture {rel} not found under {FIXTURES}")
    return path


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.exists():
        pytest.skip(f"needs seed 004's real Keras files (keras/fashion_cnn_keras*.h5, .keras) from the shared "
                    f"fixtures folder, not found at {FIXTURES}")
    return FIXTURES

import sys as _sys

_sys.path.insert(0, str(ROOT))  # benchmarks/ (the seed reference code) importable from tests


# -- memory over a long run -------------------------------------------------------------------------------
# One pytest process runs every module for ~40 minutes. Compiled executables and Keras models of one module
# are of no use to the next, so they are released when a module ends; the memory each module leaves behind
# is reported at the end of the run (CI once died in an XLA compile late in the run).
_MEMORY: list[tuple[str, float, float]] = []


def _vm_mib(key: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_between_modules(request):
    yield
    import gc

    import jax

    if "keras" in _sys.modules:
        _sys.modules["keras"].backend.clear_session()
    jax.clear_caches()
    gc.collect()
    _MEMORY.append((request.module.__name__, _vm_mib("VmRSS"), _vm_mib("VmHWM")))


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand the figures to the controller
        session.config.workeroutput["jaxviz_memory"] = [list(m) for m in _MEMORY]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _MEMORY.extend(tuple(m) for m in getattr(node, "workeroutput", {}).get("jaxviz_memory", []))


def pytest_terminal_summary(terminalreporter):
    if not _MEMORY:
        return
    worst = max(_MEMORY, key=lambda m: m[1])
    terminalreporter.write_line(
        f"memory (per test process): peak {max(m[2] for m in _MEMORY):.0f} MiB; largest resident after a "
        f"module {worst[1]:.0f} MiB ({worst[0]})")


# The CLI in a child that reports its own VmHWM (the high-water mark of its memory since its exec) at exit.
# wait4's ru_maxrss is not used: Linux carries the forking parent's resident size into the child's
# ru_maxrss at exec, so under a pytest worker holding 3.5 GB both runs read 3,505 MiB (seen in CI).
_HWM_CLI = ("import atexit, sys\n"
            "def hwm():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            "            sys.stderr.write('\\njaxviz-test-VmHWM ' + line.split()[1] + '\\n')\n"
            "atexit.register(hwm)\n"
            "from jaxviz.cli import entry\n"
            "entry()\n")


def cli_peak_mib(args, env=None):
    """(returncode, stderr, peak RSS in MiB) of one ``jaxviz`` child (``args``: the CLI's words): its own VmHWM."""
    import subprocess
    import sys

    import pytest

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc (Linux) to read the child's own memory high-water mark")
    r = subprocess.run([sys.executable, "-c", _HWM_CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, env=env)
    marks = [l.split()[1] for l in r.stderr.splitlines() if l.startswith("jaxviz-test-VmHWM ")]
    assert marks, r.stderr[-2000:]
    return r.returncode, r.stderr, int(marks[-1]) / 1024
