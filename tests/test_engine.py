"""The one engine for jobs over a collection (jaxviz.methods.engine): its worked example (a sum of
pixels) equals numpy's; on 2 simulated devices, with any batch size, over several passes, and after
an interruption (a raised KeyboardInterrupt, and SIGKILL of a real process) --resume equals the
uninterrupted result; a checkpoint of other settings is refused in one line."""

import os
import signal
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxviz.errors import JaxvizError
from jaxviz.methods import engine
from jaxviz.methods.sharding import AXIS, shard_batch


def pixel_sum_job(mesh, passes=1, what="sum of pixels"):
    def local(x, valid):
        return jax.lax.psum(jnp.where(valid[:, None, None, None], x, 0.0).sum(), AXIS)

    step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=P()))

    def update(state, batch, ctx):
        s = step(*shard_batch(ctx.mesh, batch.pixels, batch.valid))
        rows = {"index": batch.indices[batch.valid], "mean": batch.pixels[batch.valid].mean((1, 2, 3))}
        return {"sum": state["sum"] + np.float64(s), "n": state["n"] + batch.valid.sum(),
                "passes": state["passes"]}, rows

    def end_pass(state, rows, ctx):  # a reduction at the end of each pass (e.g. a dictionary update)
        total = engine.sum_arrays(ctx.gather({"sum": np.asarray(state["sum"])}))
        return {**state, "passes": state["passes"] + 1, "sum": total["sum"][()]}

    return engine.Job("pixelsum", {"what": what}, init=lambda ctx: {"sum": np.float64(0), "n": np.int64(0),
                                                                      "passes": np.int64(0)},
                      update=update, to_arrays=lambda s: {k: np.asarray(v) for k, v in s.items()},
                      from_arrays=lambda a, ctx: {k: a[k][()] for k in ("sum", "n", "passes")},
                      passes=passes, end_pass=end_pass)


def images(n=37, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 6, 5, 1)).astype(np.float32)


def test_worked_example_equals_numpy_and_keeps_rows_in_order():
    x = images()
    out = engine.run_job(pixel_sum_job(engine.local_mesh()), x, shape=(6, 5, 1), batch_size=4)
    assert float(out.arrays["sum"]) == pytest.approx(float(x.astype(np.float64).sum()), rel=1e-12)
    assert int(out.arrays["n"]) == len(x) and int(out.arrays["passes"]) == 1
    np.testing.assert_array_equal(out.rows["index"], np.arange(len(x)))
    np.testing.assert_array_equal(out.rows["mean"], x.mean((1, 2, 3)))


def test_multi_pass_reduces_at_the_end_of_each_pass_and_rows_belong_to_the_last():
    x = images()
    out = engine.run_job(pixel_sum_job(engine.local_mesh(), passes=3), x, shape=(6, 5, 1), batch_size=8)
    assert int(out.arrays["passes"]) == 3 and int(out.arrays["n"]) == 3 * len(x)
    np.testing.assert_allclose(float(out.arrays["sum"]), 3 * x.astype(np.float64).sum(), rtol=1e-12)
    assert len(out.rows["index"]) == len(x)


@pytest.mark.parametrize("stop_at", [1, 4, 6, 9])
def test_interrupted_anywhere_in_any_pass_resumes_to_the_same_result(tmp_path, stop_at):
    x = images()
    whole = engine.run_job(pixel_sum_job(engine.local_mesh(), passes=2), x, shape=(6, 5, 1), batch_size=8)
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if len(calls) == stop_at:
            raise KeyboardInterrupt

    job = pixel_sum_job(engine.local_mesh(), passes=2)
    kw = dict(shape=(6, 5, 1), batch_size=8, checkpoint=tmp_path, checkpoint_every=1000)
    with pytest.raises(KeyboardInterrupt):
        engine.run_job(job, x, on_batch=interrupt, **kw)
    again = engine.run_job(job, x, resume=True, **kw)
    for k in whole.arrays:
        assert again.arrays[k] == whole.arrays[k]
    for k in whole.rows:
        np.testing.assert_array_equal(again.rows[k], whole.rows[k])
    with pytest.raises(JaxvizError, match="other settings") as e:
        engine.run_job(pixel_sum_job(engine.local_mesh(), passes=2, what="other"), x, resume=True, **kw)
    assert "\n" not in str(e.value)


def test_an_empty_collection_is_refused_in_one_line():
    with pytest.raises(JaxvizError, match="empty"):
        engine.run_job(pixel_sum_job(engine.local_mesh()), iter([]), shape=(6, 5, 1), batch_size=4)


CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import numpy as np
    from test_engine import images, pixel_sum_job
    from jaxviz.methods import engine
    import jax
    resume = sys.argv[2] == "resume"
    def slow(done, total):
        time.sleep(0.02)
    out = engine.run_job(pixel_sum_job(engine.local_mesh(), passes=2), images(200), shape=(6, 5, 1),
                         batch_size=4, checkpoint=sys.argv[1], resume=resume, checkpoint_every=1,
                         on_batch=slow)
    np.savez(os.path.join(sys.argv[1], "out.npz"), devices=jax.local_device_count(),
             **out.arrays, **{{"rows/" + k: v for k, v in out.rows.items()}})
""")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_on_two_devices_equals_uninterrupted(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    code = CHILD.format(tests=os.path.dirname(__file__))
    ref = tmp_path / "ref"
    ref.mkdir()
    subprocess.run([sys.executable, "-c", code, str(ref), "fresh"], env=env, check=True, timeout=300)
    want = np.load(ref / "out.npz")
    assert int(want["devices"]) == 2
    ck = tmp_path / "ck"
    ck.mkdir()
    rng = np.random.default_rng(1)
    for attempt in range(3):
        p = subprocess.Popen([sys.executable, "-c", code, str(ck), "resume"], env=env)
        try:
            p.wait(timeout=float(rng.uniform(3, 6)))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
    subprocess.run([sys.executable, "-c", code, str(ck), "resume"], env=env, check=True, timeout=300)
    got = np.load(ck / "out.npz")
    for k in want.files:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_other_files_in_the_checkpoint_folder_are_left_alone_but_a_state_file_is_refused(tmp_path):
    # a result saved beside the state (as the SIGKILL test's child does) must not block the next --resume;
    # a regular file where the job's NAME-state-IofN folder goes is refused in one line
    x = images()
    kw = dict(shape=(6, 5, 1), batch_size=8, checkpoint=tmp_path)
    whole = engine.run_job(pixel_sum_job(engine.local_mesh()), x, **kw)
    (tmp_path / "out.npz").write_bytes(b"mine")
    again = engine.run_job(pixel_sum_job(engine.local_mesh()), x, resume=True, **kw)
    assert again.arrays["sum"] == whole.arrays["sum"] and (tmp_path / "out.npz").read_bytes() == b"mine"
    for d in tmp_path.iterdir():
        if "-state-" in d.name:
            shutil.rmtree(d)
            d.write_bytes(b"not a folder")
    with pytest.raises(JaxvizError, match="is not a folder") as e:
        engine.run_job(pixel_sum_job(engine.local_mesh()), x, resume=True, **kw)
    assert "\n" not in str(e.value)
