"""What every subcommand shares: model and weight arguments, loading with the weights line, image
batches, the command registry and the one-line error guard."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import numpy as np

from jaxviz.errors import JaxvizError

EPILOG_COMMON = "Errors print one line and exit with status 2; --debug shows the traceback."


def add_model_args(p: argparse.ArgumentParser, *, model_required: bool = False) -> None:
    p.add_argument("--model", "-m", required=model_required, help="architecture name (see `jaxviz layers --list`)")
    p.add_argument(
        "--weights", "-w",
        help="jaxviz checkpoint directory or Keras file (.h5/.keras/.weights.h5); omitted = UNTRAINED random weights",
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for random init and random starts (default 0)")


def add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # SUPPRESS on the subcommands, so `jaxviz --debug CMD` and `jaxviz CMD --debug` both work
    p.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="show full tracebacks")


def say_weights(loaded) -> None:
    if not loaded.trained:
        print(f"WARNING: {loaded.model.name} has UNTRAINED weights ({loaded.source}); "
              "pictures show the architecture, not learned features.", file=sys.stderr)
    else:
        print(f"{loaded.model.name}: weights from {loaded.source}", file=sys.stderr)


def load(args, default_model: str | None = None):
    from jaxviz.io import load_model

    model = args.model
    if model is None and args.weights is None:
        model = default_model
    loaded = load_model(model, args.weights, seed=args.seed)
    say_weights(loaded)
    return loaded


def batch(model, images: list[str], interpolation: str = "nearest") -> np.ndarray:
    from jaxviz.io.images import load_image
    from jaxviz.nn.preprocess import preprocess

    h, w, c = model.input_shape
    pixels = np.stack([load_image(src, (h, w), interpolation=interpolation, channels=c) for src in images])
    return preprocess(pixels.astype(np.float32), model.preprocessing)


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def register(name: str, help_: str, example: str):
    def deco(setup: Callable):
        COMMANDS[name] = (help_, setup, example)
        return setup

    return deco


def run_guarded(func: Callable[[], object], debug: bool, prog: str) -> int:
    """Run ``func``; a :class:`JaxvizError` becomes one line on stderr and exit status 2."""
    try:
        func()
        return 0
    except JaxvizError as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130

