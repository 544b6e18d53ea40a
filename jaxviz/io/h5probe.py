"""A first look at an untrusted HDF5 file in a child process, before this process opens it.

Some damaged HDF5 files make libhdf5 loop forever (e.g. a zeroed object in the global heap that holds
an attribute's variable-length strings), and it loops holding Python's GIL, so nothing in this process
can interrupt it. The probe opens the file in a separate Python (h5py only, no jax), visits every
group and dataset and reads every attribute — everything the Keras reader touches except the weight
data itself — and must finish within :data:`TIMEOUT_S`. A probe that hangs or crashes is killed and
the file refused with one line; one that finishes means the reads that follow cannot hang on the
file's structure (the same reads, deterministic).
"""

from __future__ import annotations

import subprocess
import sys

from jaxviz.errors import JaxvizError

TIMEOUT_S = 15.0  # a whole VGG16 file's structure reads in well under a second; margin for a loaded machine

_PROBE = r"""
import io, sys
import h5py
data = sys.stdin.buffer.read()
src = io.BytesIO(data) if data else sys.argv[1]
try:
    with h5py.File(src, "r") as f:
        def visit(name, obj):
            for key in obj.attrs:
                obj.attrs[key]
            if isinstance(obj, h5py.Dataset):
                obj.shape, obj.dtype
        for key in f.attrs:
            f.attrs[key]
        f.visititems(visit)
except Exception:  # damage that raises is the reader's to report; only hangs and crashes matter here
    pass
print("ok")
"""


def probe_h5(source: "str | bytes", label: str) -> None:
    """Raise a :class:`JaxvizError` if reading the structure of the HDF5 file (a path, or the bytes of
    an archive member) hangs or crashes a separate process; ``label`` names it in the message."""
    path, data = (source, b"") if isinstance(source, str) else ("", source)
    try:
        r = subprocess.run([sys.executable, "-I", "-c", _PROBE, path], input=data, capture_output=True,
                           timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise JaxvizError(f"cannot read {label}: its HDF5 structure sends the HDF5 library into an endless "
                          f"loop (no answer in {TIMEOUT_S:.0f} s); the file is damaged") from None
    if r.returncode != 0 or r.stdout.strip() != b"ok":
        raise JaxvizError(f"cannot read {label}: reading its HDF5 structure crashed a separate process "
                          f"(exit status {r.returncode}); the file is damaged")
