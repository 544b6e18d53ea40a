"""Real image sets that are available offline, as uint8 N x 28 x 28 x 1 arrays with integer labels.

* ``digits``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upsampled the way MNIST
  was made: the digit fills a 20x20 box centred in a 28x28 frame.
* ``fruits``: the book's ``fruits_300.npy`` (100 each of apple, pineapple, banana, 100x100 grey,
  object bright on black), area-downsampled to 28x28. It ships with jaxviz (``jaxviz/data/fruits_300.npz``,
  1.7 MB compressed, MIT-licensed: ``jaxviz/data/LICENSE-fruits_300``), as ``fruits_cnn``'s weights do.
"""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import cv2
import jax
import numpy as np

from jaxviz.errors import JaxvizError, unknown

FIXTURE_DIRS = (
    os.environ.get("JAXVIZ_FIXTURES", ""),
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"),  # checkout beside shared/
    os.path.join(os.getcwd(), "..", "shared", "fixtures"),
)


class Split(NamedTuple):
    x_train: np.ndarray  # uint8 N x 28 x 28 x 1
    y_train: np.ndarray  # int32 N
    x_test: np.ndarray
    y_test: np.ndarray


def fixture_path(relative: str) -> str | None:
    """The first existing ``<fixtures>/<relative>`` (``$JAXVIZ_FIXTURES``, then ``../shared/fixtures``), or None."""
    for base in FIXTURE_DIRS:
        if base and os.path.exists(os.path.join(base, relative)):
            return os.path.abspath(os.path.join(base, relative))
    return None


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn ``load_digits`` as uint8 1797 x 28 x 28 x 1 (0..255) and labels 0..9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.float32)  # 0..16 grey levels -> 0..255
    big = np.stack([cv2.resize(im, (20, 20), interpolation=cv2.INTER_LINEAR) for im in small])
    x = np.zeros((len(big), 28, 28), np.float32)
    x[:, 4:24, 4:24] = big
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)[..., None], d.target.astype(np.int32)


def fruits(path: "str | os.PathLike | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """The 300 fruit photos as uint8 300 x 28 x 28 x 1 and labels 0 apple, 1 pineapple, 2 banana.

    ``path``: another copy of the book's ``fruits_300.npy`` (300 x 100 x 100 uint8); by default the copy
    packaged with jaxviz."""
    if path is None:
        raw = _packaged_fruits()
    else:
        if not os.path.isfile(path):
            raise JaxvizError(f"path={os.fspath(path)!r}: no such file (the book's fruits_300.npy)")
        raw = np.load(path, allow_pickle=False)
    if raw.shape != (300, 100, 100):
        raise JaxvizError(f"{path}: expected 300 x 100 x 100 photos, found {raw.shape}")
    x = np.stack([cv2.resize(im.astype(np.float32), (28, 28), interpolation=cv2.INTER_AREA) for im in raw])
    y = np.repeat(np.arange(3, dtype=np.int32), 100)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)[..., None], y


def _packaged_fruits() -> np.ndarray:
    from importlib import resources

    with resources.files("jaxviz").joinpath("data", "fruits_300.npz").open("rb") as f, \
            np.load(f, allow_pickle=False) as z:
        return z["fruits"]


DATASETS = {"digits": digits, "fruits": fruits}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in DATASETS:
        raise unknown("data set", name, sorted(DATASETS))
    return DATASETS[name]()


def split(key: jax.Array, x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2) -> Split:
    """Stratified split: the same ``test_fraction`` of every class is held out, chosen by ``key``."""
    test = np.zeros(len(y), bool)
    for i, c in enumerate(np.unique(y)):
        idx = np.flatnonzero(y == c)
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, i), len(idx)))
        test[idx[perm[: int(round(test_fraction * len(idx)))]]] = True
    return Split(x[~test], y[~test], x[test], y[test])
