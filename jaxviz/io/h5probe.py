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

import signal
import subprocess
import sys

from jaxviz.errors import JaxvizError, show

# A whole VGG16 file's structure reads in well under a second of CPU. The bound is on the probe's CPU time
# (RLIMIT_CPU), not on the clock, so a busy machine never makes a valid file look like a hang; the wall-clock
# limit only catches a probe that sleeps (it reads no FIFOs: callers check for a regular file first).
TIMEOUT_S = 5.0  # CPU seconds
WALL_TIMEOUT_S = 600.0

_PROBE = r"""
import io, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_CPU, (int(sys.argv[2]), int(sys.argv[2]) + 1))
except (ImportError, ValueError, OSError):
    pass
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
        r = subprocess.run([sys.executable, "-I", "-c", _PROBE, path, str(int(TIMEOUT_S))], input=data,
                           capture_output=True, timeout=WALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise JaxvizError(f"cannot read {label}: its HDF5 structure sends the HDF5 library into an endless "
                          f"loop (no answer in {WALL_TIMEOUT_S:.0f} s); the file is damaged") from None
    if r.returncode in (-getattr(signal, "SIGXCPU", 24), -signal.SIGKILL):
        raise JaxvizError(f"cannot read {label}: its HDF5 structure sends the HDF5 library into an endless "
                          f"loop (no answer after {TIMEOUT_S:.0f} s of CPU time); the file is damaged")
    if r.returncode != 0 or r.stdout.strip() != b"ok":
        raise JaxvizError(f"cannot read {label}: reading its HDF5 structure crashed a separate process "
                          f"(exit status {r.returncode}); the file is damaged")


# HDF5 filters a weight file may use: deflate (gzip), shuffle, fletcher32 and LZF (built into h5py). Any
# other filter is a plugin library libhdf5 would load from disk, or one Keras never writes.
ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
MAX_OBJECTS = 1_000_000  # links in one file; keras.applications' largest has ~10,000


def check_dataset(ds, where: str) -> None:
    """Refuse a dataset whose data lies outside the file (virtual, external raw storage) or needs a
    filter outside :data:`ALLOWED_FILTERS`; ``where`` names it in the message."""
    if ds.is_virtual:
        raise JaxvizError(f"{where} is a virtual dataset mapping other files; jaxviz reads only what is inside the file")
    if ds.external:
        raise JaxvizError(f"{where} keeps its data in an external file ({show(ds.external[0][0], 80)}); jaxviz reads "
                          "only what is inside the file")
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in ALLOWED_FILTERS:
            raise JaxvizError(f"{where} needs HDF5 filter {code}, which jaxviz does not run (allowed: "
                              f"{', '.join(ALLOWED_FILTERS.values())})")


def check_structure(f, label: str) -> None:
    """Walk every link and dataset of an open HDF5 file before any data is read: external links,
    virtual datasets, external raw storage and unknown filters are refused in one line, so nothing
    outside the file's own bytes is ever read (``label`` names the file in messages)."""
    import h5py

    count = 0
    found: list[str] = []

    # Raising inside h5py's visit callbacks corrupts its lock state (SystemError): note and stop instead.
    def link(name: str, ln):
        nonlocal count
        count += 1
        if count > MAX_OBJECTS:
            found.append(f"{label}: holds more than {MAX_OBJECTS:,} HDF5 links; refusing it")
        elif isinstance(ln, h5py.ExternalLink):
            found.append(f"{label}: {show(name, 80)} is an external link to {show(ln.filename, 80)}; jaxviz reads only "
                         "what is inside the file")
        return True if found else None

    datasets: list[str] = []

    def obj(name: str, o):
        if isinstance(o, h5py.Dataset):
            datasets.append(name)
        return True if len(datasets) > MAX_OBJECTS else None

    f.visititems_links(link)
    if found:
        raise JaxvizError(found[0])
    f.visititems(obj)
    for name in datasets:
        check_dataset(f[name], f"{label}: {show(name, 80)}")
