"""Measure the times the README quotes for ``jaxviz demo`` and ``jaxviz demo --quick`` and print its lines.

    python benchmarks/readme_times.py                 # both, one run each
    python benchmarks/readme_times.py --only quick    # just --quick
    python benchmarks/readme_times.py --runs 3        # the median of 3 runs each

Each command runs as a user runs it: a fresh process (imports, compilation and all) writing into a
temporary directory that is removed afterwards. Printed: the wall time of each run, the figures in the
gallery (its ``<img>`` tags), the machine (CPU cores, load average before and after: other work on the
machine slows the demo), the date, and the two README lines with those figures filled in.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {"full": ["demo"], "quick": ["demo", "--quick"]}


def run_once(args: list[str]) -> tuple[float, int]:
    """Wall seconds of ``jaxviz ARGS --out TMP`` and the number of figures on its page."""
    tmp = tempfile.mkdtemp(prefix="readme_times_")
    out = os.path.join(tmp, "gallery")
    try:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "jaxviz.cli", *args, "--out", out], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"jaxviz {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
        with open(os.path.join(out, "index.html"), encoding="utf-8") as f:
            figures = len(re.findall(r"<img\b", f.read()))
        return dt, figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=list(COMMANDS), help="measure one command only")
    p.add_argument("--runs", type=int, default=1, help="runs per command; the median is reported (default 1)")
    a = p.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    today = datetime.date.today().isoformat()
    cores = os.cpu_count()
    results = {}
    for key, args in COMMANDS.items():
        if a.only and key != a.only:
            continue
        load0 = os.getloadavg()[0]
        times = []
        for i in range(a.runs):
            dt, figures = run_once(args)
            times.append(dt)
            print(f"jaxviz {' '.join(args)}: {dt:.1f} s, {figures} figures (run {i + 1}/{a.runs})", flush=True)
        load1 = os.getloadavg()[0]
        results[key] = (statistics.median(times), figures, load0, load1)
    print(f"\nmeasured {today} on {cores} CPU cores")
    for key, (dt, figures, load0, load1) in results.items():
        print(f"  jaxviz {' '.join(COMMANDS[key])}: {dt:.0f} s ({dt / 60:.1f} min), {figures} figures, "
              f"load average {load0:.1f} before, {load1:.1f} after")
    if len(results) == 2:
        (full, nf, l0, _), (quick, nq, _, l1) = results["full"], results["quick"]
        print("\nREADME lines:")
        print(f"  quick start: (about {full / 60:.0f} minutes on {cores} CPU cores; `jaxviz demo --quick` about "
              f"{quick:.0f} seconds; measured {today} by `python benchmarks/readme_times.py`)")
        print(f"  | `jaxviz demo` (all sections, {nf} figures, EfficientNet-Lite0 first) / `jaxviz demo --quick` "
              f"({nq}) | {full:.0f} s / {quick:.0f} s ({today}, `benchmarks/readme_times.py`, load average "
              f"{l0:.1f}-{l1:.1f}) |")


if __name__ == "__main__":
    main()
