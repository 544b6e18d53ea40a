"""``weights_convert SRC DEST [--arch NAME] [--overwrite] [--dry-run]``: Keras file, PyTorch state dict or
ONNX file -> jaxviz checkpoint."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def convert(src: str, dest: str | None, arch: str | None = None, *, overwrite: bool = False) -> str:
    """Convert ``src`` and (unless ``dest`` is None) write a checkpoint; prints the layer table."""
    from jaxviz.io.checkpoint import check_replaceable, save_checkpoint
    from jaxviz.errors import JaxvizError, show
    from jaxviz.io.weightfile import load_model_file

    if dest is not None:  # checked before the (possibly long) read, and again when writing
        if os.path.lexists(dest) and not overwrite:
            raise JaxvizError(f"{dest} already exists; choose another destination or pass --overwrite")
        check_replaceable(dest)
    model, params, fmt, version = load_model_file(src, arch)
    arch = model.name
    # names and the version come from the file: escaped and cut (a 5 MB keras_version with terminal escapes)
    print(f"{show(src, 300)}: {show(fmt)}" + (f" (Keras {show(version, 40)})" if version else "") + f" -> {show(arch)}")
    flat = fmt == "onnx"  # {initialiser: array}, not {layer: {name: array}}
    print(f"{'initialiser' if flat else 'layer':22s} {'shapes':40s} {'params':>12s}")
    total = 0
    for name, p in params.items():
        p = {"": p} if flat else p
        n = sum(int(np.prod(a.shape)) for a in p.values())
        total += n
        shapes = ", ".join(f"{k} {tuple(a.shape)}".strip() for k, a in p.items())
        print(f"{show(name, 60):22s} {show(shapes, 200):40s} {n:>12,d}")
    print(f"{'total':22s} {'':40s} {total:>12,d}")
    if dest is None:
        print("dry run: nothing written")
        return arch
    path = save_checkpoint(dest, model, params, overwrite=overwrite, info={"converted_from": os.path.abspath(src),
                                                                             "source_format": fmt,
                                                                             "keras_version": version})
    print(f"wrote {show(path, 300)}")
    return arch


def main(argv: list[str] | None = None) -> int:
    from jaxviz.cli.common import Parser, run_guarded

    p = Parser(
        prog="weights_convert",
        description="Convert a Keras weight file (published .h5, Keras 2 model.save .h5, Keras 3 .keras or "
        ".weights.h5), a PyTorch state dict (.pth, zip or legacy; torch not needed) or an ONNX model (.onnx: "
        "its graph is stored beside the weights) into a self-describing jaxviz checkpoint (orbax). Nothing in "
        "the file is executed.",
        epilog="example:\n  weights_convert vgg16_weights_tf_dim_ordering_tf_kernels.h5 ckpt/vgg16\n"
        "  weights_convert model.keras ckpt/fashion --arch fashion_cnn --dry-run\n"
        "  weights_convert efficientnet-lite0-57934424.pth ckpt/lite0\n"
        "  weights_convert resnet18.onnx ckpt/resnet18",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="Keras file, PyTorch .pth state dict or ONNX file")
    p.add_argument("dest", nargs="?", help="checkpoint directory to create (not needed with --dry-run)")
    p.add_argument("--arch", help="architecture name (default: detected from the file)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing DEST if it is a jaxviz checkpoint (anything else is refused)")
    p.add_argument("--dry-run", action="store_true", help="check and print, write nothing")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    if args.dest is None and not args.dry_run:
        p.error("DEST is required unless --dry-run")
    dest = None if args.dry_run else args.dest
    return run_guarded(lambda: convert(args.src, dest, args.arch, overwrite=args.overwrite), args.debug, "weights_convert")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
