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
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
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
