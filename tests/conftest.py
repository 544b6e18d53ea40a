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
