"""One progress reporter for the long commands (``demo``, ``atlas``, ``evaluate``, ``filters``).

In a terminal: a tqdm bar that advances per unit of real work (a layer's patterns, a method's maps,
a batch of images), its label naming the work running *now*, an ETA from the rate so far; warnings
are printed above the bar. When stderr is not a terminal (a file, a pipe, CI, ``nohup``): plain lines
``jaxviz demo: 12/40 (30%) lite0 filter patterns, 0.21 steps/s, 58 s elapsed, ETA 2 min``, one
whenever another tenth of the work is done and at least every ``every_s`` seconds while a long step
runs (a background timer, so a minute of compilation still shows the job is alive). Either way the
last line gives the wall time.

    with Progress("jaxviz demo", total=40, unit="step") as bar:
        bar.start("efficientnet_lite0: predictions")   # what runs now
        ...
        bar.advance()                                   # one unit done
        bar.warn("efficientnet_lite0, chelsea, gradcam: blank map (every weighted channel is negative)")
    # -> "jaxviz demo: done, 40 steps in 83 s"

A library loop that reports ``on_batch(done, total)`` (``top_examples``, ``evaluate``) takes the bar
itself: ``on_batch=bar`` sets the position (and the total, when the collection's size was unknown).
Only the CLI uses this module: the library never prints.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO

from jaxviz.errors import show


def _duration(s: float) -> str:
    if s < 100:
        return f"{s:.0f} s"
    if s < 6000:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class Progress:
    """Progress of ``total`` units of work (None or negative: unknown) named ``what`` (``jaxviz demo``).

    ``tty``: draw a bar (default: whether ``stream`` is a terminal); ``every_s``: the longest silence
    between plain lines when there is no bar; ``weights``: for work whose units differ in cost, each
    unit's relative cost in order (the ETA is then computed on cost, not on the unit count)."""

    def __init__(self, what: str, total: int | None = None, unit: str = "step", *, stream: IO | None = None,
                 tty: bool | None = None, every_s: float = 5.0, weights: "list[float] | None" = None):
        self.what, self.unit, self.every_s = what, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.total = total if total is not None and total >= 0 else None
        self.weights = list(weights) if weights is not None else None
        if self.weights is not None and self.total is None:
            self.total = len(self.weights)
        self.done, self.label, self.running = 0, "", False
        self.t0 = self.last_line = time.perf_counter()
        self.last_tenth = 0
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self._cost(self.total) if self.total is not None else None, unit=unit,
                            file=self.stream, dynamic_ncols=True, smoothing=0.05,
                            bar_format="{desc}{percentage:3.0f}%|{bar}| {postfix}[{elapsed}<{remaining}]"
                            if self.weights is not None else None)
        else:
            threading.Thread(target=self._heartbeat, daemon=True).start()

    # -- what the work calls ---------------------------------------------------------------------------
    def start(self, label: str) -> None:
        """Name the unit of work that begins now (the bar's label; the plain lines' subject)."""
        with self._lock:
            self.label, self.running = show(label, 80), True
            if self.bar is not None:
                self.bar.set_description_str(f"{self.label} ", refresh=False)
                self._postfix()
                self.bar.refresh()

    def advance(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self(self.done + n)

    def __call__(self, done: int, total: int | None = None) -> None:
        """The position is ``done`` of ``total`` units (``total`` None or negative: unchanged). Fits the
        library's ``on_batch(done, total)`` callbacks."""
        with self._lock:
            if total is not None and total >= 0 and self.weights is None and total != self.total:
                self.total = total
                if self.bar is not None:
                    self.bar.total = total
            before, self.done = self.done, done
            self.running = self.running and done == before  # the unit that ran is done
            if self.bar is not None:
                self._postfix()
                self.bar.update(self._cost(done) - self._cost(before))
                return
            tenth = int(10 * self._fraction()) if self.total else 0
            if tenth > self.last_tenth or time.perf_counter() - self.last_line >= self.every_s:
                self.last_tenth = max(tenth, self.last_tenth)
                self._line()

    def warn(self, message: str) -> None:
        """A warning line, above the bar in a terminal; say which model, image and method it concerns."""
        with self._lock:
            text = f"{self.what}: warning: {show(message, 400)}"
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def close(self, summary: str = "") -> float:
        """Stop the bar and print the last line: ``<what>: done[, summary], N units in T s``. Returns T."""
        with self._lock:
            if self._closed.is_set():
                return self.elapsed()
            self._closed.set()
            if self.bar is not None:
                self.bar.close()
            dt = self.elapsed()
            count = f"{self.done} {self.unit}s" if self.done != 1 else f"1 {self.unit}"
            print(f"{self.what}: done, {summary + ', ' if summary else ''}{count} in {_duration(dt)}",
                  file=self.stream, flush=True)
            return dt

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:  # an error ends the work: stop the bar and the timer, the error is the last word
            with self._lock:
                self._closed.set()
                if self.bar is not None:
                    self.bar.close()

    # -- inside ----------------------------------------------------------------------------------------
    def _cost(self, n: int) -> float:
        return sum(self.weights[:n]) if self.weights is not None else n

    def _fraction(self) -> float:
        if not self.total:
            return 0.0
        return self._cost(self.done) / max(self._cost(self.total), 1e-12)

    def _eta(self) -> float | None:
        f, dt = self._fraction(), self.elapsed()
        return dt * (1 - f) / f if 0 < f < 1 else None

    def _postfix(self) -> None:
        if self.weights is not None:  # the bar counts cost; say the unit count in words
            self.bar.set_postfix_str(f"{self.done}/{self.total} {self.unit}s ", refresh=False)

    def _line(self) -> None:
        now = time.perf_counter()
        self.last_line = now
        dt = now - self.t0
        where = f"{self.done}/{self.total} ({100 * self._fraction():.0f}%)" if self.total else f"{self.done}"
        rate = f", {self.done / dt:.2g} {self.unit}s/s" if dt > 0 and self.done else ""
        eta = self._eta()
        label = f" - {self.label}" + ("" if self.running else " (done)") if self.label else ""
        print(f"{self.what}: {where} {self.unit}s{label}{rate}, "
              f"{_duration(dt)} elapsed" + (f", ETA {_duration(eta)}" if eta is not None else ""),
              file=self.stream, flush=True)

    def _heartbeat(self) -> None:
        while not self._closed.wait(min(1.0, self.every_s)):
            with self._lock:
                if not self._closed.is_set() and time.perf_counter() - self.last_line >= self.every_s:
                    self._line()
