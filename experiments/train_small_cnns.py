"""Train the trained checkpoints that ship with jaxviz, from real data that is available offline.

    python experiments/train_small_cnns.py                 # both models, into jaxviz/data/checkpoints/
    python experiments/train_small_cnns.py --only digits --out /tmp/ckpts --seed 1

``digits_cnn``: scikit-learn's handwritten digits (1,797, upsampled to 28x28), 20% held out per class.
``fruits_cnn``: the book's 300 fruit photos (apple, pineapple, banana), 20% held out per class.
Both use seed 004's Fashion-CNN architecture and its training setup (Adam, sparse cross-entropy,
Dropout 0.4), batch 32. Deterministic given --seed on the same machine. About 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
from tqdm import tqdm

from jaxviz.io import datasets
from jaxviz.io.checkpoint import save_checkpoint
from jaxviz.nn import get_model
from jaxviz.nn.train import train_classifier

PACKAGED = pathlib.Path(__file__).resolve().parents[1] / "jaxviz" / "data" / "checkpoints"

# name -> (data set, epochs)
RUNS = {"digits": ("digits_cnn", 20), "fruits": ("fruits_cnn", 20)}


def run(name: str, seed: int, out: pathlib.Path, overwrite: bool) -> float:
    arch, epochs = RUNS[name]
    x, y = datasets.load(name)
    data = datasets.split(jax.random.key(seed), x, y, test_fraction=0.2)
    model = get_model(arch)
    bar = tqdm(total=epochs, desc=arch, unit="epoch", disable=None)

    def report(e):
        bar.update()
        bar.set_postfix(loss=f"{e.loss:.4f}", train=f"{e.train_accuracy:.4f}", test=f"{e.test_accuracy:.4f}")
        tqdm.write(f"{arch} epoch {e.epoch:2d}: loss {e.loss:.4f}  train acc {e.train_accuracy:.4f}  "
                   f"test acc {e.test_accuracy:.4f}")

    t0 = time.perf_counter()
    trained = train_classifier(jax.random.key(seed + 1), model, *data, epochs=epochs, on_epoch=report)
    bar.close()
    acc = trained.history[-1].test_accuracy
    info = {
        "dataset": name, "split_seed": seed, "test_fraction": 0.2, "train_seed": seed + 1, "epochs": epochs,
        "batch_size": 32, "optimizer": "adam 1e-3", "test_accuracy": acc, "n_train": len(data.y_train),
        "n_test": len(data.y_test), "made_by": f"python experiments/train_small_cnns.py --only {name} --seed {seed}",
    }
    path = save_checkpoint(out / arch, model, trained.params, overwrite=overwrite, info=info)
    print(f"{arch}: held-out accuracy {acc:.4f} ({len(data.y_test)} images), {time.perf_counter() - t0:.1f} s "
          f"-> {path}")
    return acc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(RUNS), action="append", help="train only this one (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=PACKAGED, help=f"checkpoint parent (default {PACKAGED})")
    p.add_argument("--overwrite", action="store_true", help="replace existing checkpoints")
    args = p.parse_args(argv)
    for name in args.only or sorted(RUNS):
        run(name, args.seed, args.out, args.overwrite or args.out == PACKAGED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
