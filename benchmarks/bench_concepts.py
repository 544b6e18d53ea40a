"""NMF dictionaries (issue 33): the same activation matrix, the same initial factors, the same number of
iterations, fitted by jaxviz (:func:`jaxviz.concepts.fit_nmf`), scikit-learn (``solver="cd"``,
``shuffle=False``, ``tol=0``) and overcomplete's HALS NMF (PyTorch CPU, its own process), in one run.

    python benchmarks/bench_concepts.py [--rows 200000] [--channels 320] [--k 32] [--iters 10]
                                        [--torch /work/torchenv/bin/python]

The matrix is ``relu`` of a random low-rank projection plus noise (non-negative, like post-ReLU
activations), float32 on every side. jaxviz compiles once on the first call (reported apart), then is
timed. overcomplete runs in a subprocess of ``--torch`` (a Python with torch and overcomplete); without
one its column is skipped and said so. ``sobol_vs_craft`` is the hook for the concept-importance figure
(filled in by the concepts job).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# One XLA CPU device per core (set before jax is imported; a user's XLA_FLAGS count is kept): the rows
# are split over the devices, each core runs its share of the sweep and the matrix products, and the
# statistics are summed (psum), exactly as over several accelerators.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                               + str(os.cpu_count() or 1)).strip()

OVERCOMPLETE = r"""
import sys, time, json, numpy as np, torch, matplotlib, matplotlib.cm
if not hasattr(matplotlib.cm, "get_cmap"):  # overcomplete 0.3.0 imports matplotlib API removed in 3.9
    matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
from overcomplete.optimization.nmf import hierarchical_als
torch.set_num_threads(int(sys.argv[2]))
d = np.load(sys.argv[1])
A, Z, D = (torch.from_numpy(d[k]) for k in ("A", "W0", "H0"))
T = int(sys.argv[3])
hierarchical_als(A[:1000], Z[:1000].clone(), D.clone(), max_iter=1, tol=-1.0)  # warm-up
t = time.perf_counter()
Z, D = hierarchical_als(A, Z.clone(), D.clone(), max_iter=T, tol=-1.0)
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "rel_error": float(torch.linalg.norm(A - Z @ D) / torch.linalg.norm(A))}))
"""


def make_matrix(rows: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = 48
    a = rng.standard_normal((rows, r), dtype=np.float32) @ rng.standard_normal((r, channels), dtype=np.float32)
    a += 0.5 * rng.standard_normal((rows, channels), dtype=np.float32)
    return np.maximum(a, 0, out=a)


def sobol_vs_craft(args) -> dict | None:
    """Hook: Sobol concept importance per image, jaxviz vs xplique CRAFT's ``estimate_importance``
    (PyTorch CPU), same model and dictionary. Filled in by the concepts job; returns its figures."""
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--channels", type=int, default=320)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--devices", type=int, default=0, help="local devices to split the rows over (0: all)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls of each side (the best is kept)")
    p.add_argument("--torch", default="/work/torchenv/bin/python")
    p.add_argument("--no-sklearn", action="store_true")
    args = p.parse_args(argv)

    import jax
    import jaxviz.concepts as jc
    from sklearn.decomposition import non_negative_factorization
    from sklearn.decomposition._nmf import _initialize_nmf

    A = make_matrix(args.rows, args.channels)
    W0, H0 = _initialize_nmf(A, args.k, init="nndsvda", random_state=0)
    W0, H0 = W0.astype(np.float32), H0.astype(np.float32)
    T = args.iters
    out = {"rows": args.rows, "channels": args.channels, "k": args.k, "iters": T, "devices": str(jax.devices())}

    devices = args.devices or jax.local_device_count()
    out["devices_used"] = devices
    out["dtype"] = "float32"

    def fit(t):
        return jc.fit_nmf(A, args.k, init="custom", W=W0, H=H0, max_iter=t, tol=0, batch_size=args.batch_size,
                          devices=devices)

    def sklearn_fit():
        return non_negative_factorization(A, W=W0.copy(), H=H0.copy(), n_components=args.k, init="custom",
                                          solver="cd", shuffle=False, tol=0, max_iter=T)

    t = time.perf_counter()
    jax.block_until_ready(fit(T))
    out["jaxviz_first_call_s"] = time.perf_counter() - t
    best, best_sk = np.inf, np.inf
    for _ in range(args.repeats):  # interleaved, so a busy moment of the shared machine hits both sides
        t = time.perf_counter()
        d, Z, info = jax.block_until_ready(fit(T))
        best = min(best, time.perf_counter() - t)
        if not args.no_sklearn:
            t = time.perf_counter()
            W, H, n = sklearn_fit()
            best_sk = min(best_sk, time.perf_counter() - t)
    out["jaxviz_s"] = best
    out["jaxviz_rel_error"] = float(info.relative_error)

    if not args.no_sklearn:
        out["sklearn_s"] = best_sk
        out["sklearn_rel_error"] = float(np.linalg.norm(A - W @ H) / np.linalg.norm(A))
        out["speedup_vs_sklearn"] = out["sklearn_s"] / out["jaxviz_s"]
        out["max_rel_diff_H_vs_sklearn"] = float(np.abs(np.asarray(d.components) - H).max() / np.abs(H).max())

    if os.path.exists(args.torch):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.npz")
            np.savez(path, A=A, W0=W0, H0=H0)
            r = subprocess.run([args.torch, "-c", OVERCOMPLETE, path, str(os.cpu_count() or 1), str(T)],
                               capture_output=True, text=True)
        if r.returncode == 0:
            oc = json.loads(r.stdout.strip().splitlines()[-1])
            out["overcomplete_s"], out["overcomplete_rel_error"] = oc["seconds"], oc["rel_error"]
            out["speedup_vs_overcomplete"] = oc["seconds"] / out["jaxviz_s"]
        else:
            out["overcomplete"] = "failed: " + r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"
    else:
        out["overcomplete"] = f"skipped: no {args.torch}"
    out["sobol_vs_craft"] = sobol_vs_craft(args)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
