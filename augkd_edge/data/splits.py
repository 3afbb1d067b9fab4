"""Seeded, stratified index splits, and the file that saves them with every run.

Splits are index arrays into a :class:`~augkd_edge.data.domain.Domain`, drawn
per class so that every class keeps its share (few-shot student sets would
otherwise miss classes by chance), from ``numpy.random.default_rng(seed)`` so a
run can be repeated and audited: the indices are saved next to its results.

Split file (JSON)::

    {"format": "augkd-edge/splits", "version": 1,
     "splits": {"teacher": {"train": [0, 3, ...], "eval": [...]},
                "student": {"train": [...], "eval": [...], "test": [...]}},
     "data": {"student": {"images", "per_class", "sha256"} | null, ...}}

``data`` (optional) fingerprints the image list each group's indices point
into (:func:`~augkd_edge.data.domain.file_fingerprint`; null for built-in data).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from augkd_edge.errors import UserError

SPLITS_FORMAT = "augkd-edge/splits"
SPLITS_VERSION = 1

# Given a class's image count, how many go to each split, in order; the last split takes the rest.
Sizer = Callable[[int], list[int]]


def _labels_array(labels: object) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()  # type: ignore[union-attr]
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    return array


def stratified_split(labels: object, seed: int, names: Sequence[str], sizer: Sizer) -> dict[str, np.ndarray]:
    """Shuffle each class with one seeded generator and cut it by ``sizer``.

    Classes are visited in label order, so the same seed and labels always give
    the same indices, whatever order the images came in.
    """
    array = _labels_array(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for label in np.unique(array):
        members = rng.permutation(np.flatnonzero(array == label))
        bounds = np.cumsum(sizer(len(members)))
        for name, chunk in zip(names, np.split(members, bounds)):
            parts[name].append(chunk)
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.zeros(0, np.int64)
            for name, chunks in parts.items()}


def teacher_split(labels: object, seed: int, eval_frac: float = 0.2) -> dict[str, np.ndarray]:
    """``{"train", "eval"}``: ``eval_frac`` of each class (at least one when it has two) held out."""
    if not 0.0 < eval_frac < 1.0:
        raise UserError(f"eval fraction must be between 0 and 1, got {eval_frac}.")

    def sizer(count: int) -> list[int]:
        held = int(round(count * eval_frac))
        return [min(max(held, 1), count - 1) if count > 1 else 0]

    split = stratified_split(labels, seed, ["eval", "train"], sizer)
    return {"train": split["train"], "eval": split["eval"]}


def student_split(
    labels: object,
    shots: int,
    seed: int,
    eval_per_class: int = 5,
    *,
    classes: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """``{"train": shots per class, "eval": eval_per_class per class, "test": the rest}``.

    The student domain's labelled set is small on purpose (the paper's DSLR
    set has about 13 per class), and the test set is everything left, so it is
    large enough to be stable. ``classes`` only names classes in the error.
    """
    if shots < 1 or eval_per_class < 0:
        raise UserError(f"--shots must be >= 1 and the eval size >= 0 (got {shots} and {eval_per_class}).")
    array = _labels_array(labels)
    need = shots + eval_per_class + 1
    found, counts = np.unique(array, return_counts=True)
    short = [(int(c), int(n)) for c, n in zip(found, counts) if n < need]
    if short:
        names = [classes[c] if classes is not None and c < len(classes) else str(c) for c, _ in short]
        listing = ", ".join(f"'{name}' has {n}" for name, (_, n) in zip(names, short))
        most = int(counts.min()) - eval_per_class - 1
        fix = f"use --shots {most} or less" if most >= 1 else "add images to these classes"
        raise UserError(
            f"the student domain has too few images per class for --shots {shots} "
            f"(each class needs {shots} train + {eval_per_class} eval + at least 1 test = {need}): "
            f"{listing}; {fix}."
        )
    return stratified_split(array, seed, ["train", "eval", "test"], lambda count: [shots, eval_per_class])


def save_splits(path: str | os.PathLike, splits: dict[str, dict[str, np.ndarray]],
                data: dict[str, dict | None] | None = None) -> None:
    """Write the split file atomically (format in the module docstring); ``data``: fingerprints per group."""
    from augkd_edge.checkpoint import write_text_atomic

    record = {
        "format": SPLITS_FORMAT,
        "version": SPLITS_VERSION,
        "splits": {
            group: {name: [int(i) for i in np.asarray(idx).ravel()] for name, idx in parts.items()}
            for group, parts in splits.items()
        },
    }
    if data is not None:
        record["data"] = data
    write_text_atomic(json.dumps(record, indent=1) + "\n", path)


def load_splits(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Read a split file back as int64 arrays; UserError naming the file if it is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such split file; check the run folder.") from exc
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON split file ({exc}).") from exc
    if not isinstance(record, dict) or record.get("format") != SPLITS_FORMAT:
        raise UserError(f"{path}: not an augkd-edge split file (no 'format': '{SPLITS_FORMAT}').")
    if not isinstance(record.get("version"), int) or record["version"] > SPLITS_VERSION:
        raise UserError(f"{path}: split file version {record.get('version')!r} is newer than this augkd-edge; upgrade.")
    try:
        return {
            str(group): {str(name): np.asarray(idx, dtype=np.int64).reshape(-1) for name, idx in parts.items()}
            for group, parts in record["splits"].items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: split file has a malformed 'splits' entry ({exc}).") from exc
