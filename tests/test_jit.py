"""jaxviz's one jit: per-compilation XLA options at the top level, the plain jax.jit inside a trace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.nn.jit import compiler_options, jit
from conftest import assert_scaled_close


def _depthwise(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=x.shape[-1])
    return jnp.tanh(y).mean((1, 2)) @ jnp.ones((x.shape[-1], 3))


def test_top_level_and_nested_calls_agree_and_nesting_works():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 12, 12, 8)).astype(np.float32)
    w = rng.normal(size=(3, 3, 1, 8)).astype(np.float32)
    f = jit(_depthwise)
    top = np.asarray(f(x, w))
    nested = np.asarray(jax.jit(lambda x, w: f(x, w) + 0.0)(x, w))  # options cannot be set inside a trace
    grad = jax.grad(lambda x: f(x, w).sum())(x)  # traced arguments take the plain jit
    ref = np.asarray(_depthwise(x, w))
    assert_scaled_close(top, ref, 1e-5, "top-level")
    assert_scaled_close(nested, ref, 1e-5, "nested")
    assert grad.shape == x.shape and np.isfinite(np.asarray(grad)).all()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options concern XLA:CPU")
@pytest.mark.parametrize("channels, ynn_conv", [(128, False), (32, True)])
def test_cpu_convolutions_leave_ynnpack_unless_all_are_small(channels, ynn_conv):
    """A program with a convolution wider than 64 channels compiles with XLA's own convolutions (dots
    stay with YNNPACK); one whose convolutions are all small keeps XLA's defaults."""
    if compiler_options() is None:
        pytest.skip("this jaxlib has no YNNPACK fusion option")
    x = np.ones((8, 56, 56, channels), np.float32)  # sizes XLA hands to YNNPACK by default
    w = np.ones((3, 3, 1, channels), np.float32)
    ours = jit(_depthwise).lower(x, w).compile().as_text()
    default = jax.jit(_depthwise).lower(x, w).compile().as_text()
    assert _ynn_runs_a_convolution(default)
    assert _ynn_runs_a_convolution(ours) == ynn_conv
    assert "ynn_fusion" in ours  # the matrix product stays with YNNPACK


def _ynn_runs_a_convolution(hlo: str) -> bool:
    """Whether a YNNPACK fusion of the compiled HLO text calls a computation holding a convolution."""
    with_conv, name = set(), None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
        elif " convolution(" in line and name:
            with_conv.add(name)
    return any(f"calls=%{c}," in line or line.rstrip().endswith(f"calls=%{c}")
               for line in hlo.splitlines() if "ynn_fusion" in line and "kCustom" in line for c in with_conv)
