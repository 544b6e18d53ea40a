"""The ``jaxviz`` command line: parse arguments, call the library, write files. No logic lives only here.

One module per subcommand (its ``cmd_*`` and its parser side by side); :mod:`jaxviz.cli.common` holds
what they share."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from jaxviz.cli import layers, predict, activations, filters, gradcam, weights, atlas, evaluate, concepts, demo  # noqa: F401,I001  (registers, in help order)
from jaxviz.errors import EscapingStream, JaxvizError, one_line, show
from jaxviz.cli.common import COMMANDS, EPILOG_COMMON, Parser, add_common, run_guarded


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="jaxviz",
        description="What convnets learn: activations, filter patterns, Grad-CAM and weights, in JAX.",
        epilog=EPILOG_COMMON,
    )
    add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, setup, example) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_, description=help_, epilog=f"example:\n  {example}\n\n{EPILOG_COMMON}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common(p)
        setup(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``jaxviz`` command; returns the exit status (0, 2 for bad input, 130/143 when interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2), as a status rather than an exit
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    t0 = time.perf_counter()
    shown = warnings.showwarning

    # library warnings (an all-zero heatmap, ...) as one line each, like the errors
    def warn_line(msg, *a, **k):
        print(f"jaxviz {args.command}: warning: {one_line(msg)}", file=sys.stderr)

    def run():
        if not getattr(args, "coordinator", None):  # jax.distributed.initialize must come before the backend starts
            _check_platform()
        args.func(args)
        if getattr(args, "out", None):
            print(f"done in {time.perf_counter() - t0:.1f} s; files in {show(os.path.abspath(args.out), 400)}")

    warnings.showwarning = warn_line
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapingStream(sys.stdout), EscapingStream(sys.stderr)  # names from files are shown
    try:
        return run_guarded(run, args.debug, f"jaxviz {args.command}")
    finally:
        warnings.showwarning = shown  # main() called in-process (tests) leaves the caller's hook as it was
        sys.stdout, sys.stderr = streams


def _check_platform() -> None:
    """A JAX platform that is not there (``JAX_PLATFORMS=cuda`` on a machine without a GPU) is a one-line
    error before any work, not a traceback from deep inside JAX."""
    import jax

    try:
        jax.devices()
    except Exception as e:  # JAX raises RuntimeError, or a bare AssertionError for a missing CUDA plugin
        wanted = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "the default"
        why = show(e, 200) or "no message"
        raise JaxvizError(f"JAX cannot start platform {show(wanted)} here ({type(e).__name__}: {why}); unset "
                          "JAX_PLATFORMS or set it to cpu") from None


def entry() -> None:
    """The ``jaxviz`` console command: :func:`main`, then exit with its status. After Ctrl-C or SIGTERM
    (outputs already cleaned up) the process leaves at once: an interpreter teardown while XLA threads
    are still compiling can crash (seen here as SIGSEGV after the clean message)."""
    status = main()
    if status in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
