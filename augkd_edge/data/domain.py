"""Domains: labelled images with a class list, named by a spec string.

Specs (the CLI's ``--data`` / ``--student-data`` values):

- ``digits:mnist``, ``digits:mnist-full``, ``digits:optdigits``,
  ``digits:mnist-m``: built-in digits read from installed packages
  (:mod:`augkd_edge.data.digits`); all are of kind "digits" (random-crop
  augmentation, no flip), MNIST-M's colour images too: a mirrored digit is
  not a digit, whatever its colours;
- a folder path in ImageFolder layout (:mod:`augkd_edge.data.folder`);
- ``A+B``: the union of several specs with exactly the same classes (the
  paper's teacher domain is e.g. ``amazon+webcam``). A path that exists is
  always read as one folder, even if its name contains ``+``.

Loaded domains are cached per process, keyed by (spec or resolved folder path,
input size, bad-file policy) and, for folders, the names, sizes and
modification times of their files, so a pipeline that loads the same domain in several stages decodes it
once and a changed folder is read again. The tensors of a cached domain are
shared: treat them as read-only (grey digits images are an ``expand`` view and
refuse in-place writes, MNIST-M's and folders' are not; index or ``.clone()`` first).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path

import torch

from augkd_edge.data.digits import DIGIT_CLASSES, PREFIX, load_digits_source
from augkd_edge.data.folder import BAD_FILE_POLICIES, load_image_folder
from augkd_edge.errors import UserError

KIND_DIGITS = "digits"
KIND_NATURAL = "natural"


@dataclasses.dataclass
class Domain:
    """One domain's images in memory, already preprocessed to the model's input size."""

    name: str
    images: torch.Tensor  # float32 [N, 3, S, S] in [0, 1]
    labels: torch.Tensor  # int64 [N], indexes ``classes``
    classes: list[str]
    kind: str  # "digits" (no horizontal flip) or "natural" (flip allowed)
    files: list[str] | None  # source file per image for folders; None for built-in data

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_domain(spec: str, input_size: int = 32, *, on_bad_file: str = "skip") -> Domain:
    """Load the domain a spec names (see module docstring); UserError on any user mistake."""
    spec = spec.strip()
    if not spec:
        raise UserError("empty domain spec; give e.g. digits:mnist or a folder path.")
    if input_size < 8:
        raise UserError(f"input size {input_size} is too small; use 8 or more (the paper uses 32).")
    if on_bad_file not in BAD_FILE_POLICIES:
        raise UserError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, got {on_bad_file!r}.")
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) > 1 and not Path(spec).expanduser().exists():
        return _union(spec, [load_domain(p, input_size, on_bad_file=on_bad_file) for p in parts])
    key = spec if spec.startswith(PREFIX) else str(Path(spec).expanduser().resolve())
    cached = _load_cached(key, input_size, on_bad_file, _fingerprint(key))
    files = None if cached.files is None else list(cached.files)
    return dataclasses.replace(cached, name=spec, classes=list(cached.classes), files=files)


def _fingerprint(key: str) -> tuple:
    """What must not change for a cached folder domain to stay valid (empty for built-ins)."""
    root = Path(key)
    if key.startswith(PREFIX) or not root.is_dir():
        return ()
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            try:
                stat = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            entries.append((folder, name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


@functools.lru_cache(maxsize=8)
def _load_cached(key: str, input_size: int, on_bad_file: str, fingerprint: tuple) -> Domain:
    """One source, keyed by its spec (built-ins) or resolved path (folders), so ``cd`` cannot alias."""
    if key.startswith(PREFIX):
        images, labels = load_digits_source(key, input_size)
        return Domain(key, images, labels, list(DIGIT_CLASSES), KIND_DIGITS, None)
    images, labels, classes, files = load_image_folder(Path(key), input_size, on_bad_file)
    return Domain(key, images, labels, classes, KIND_NATURAL, files)


def file_fingerprint(domain: Domain) -> dict | None:
    """What identifies a folder domain's image list: counts per class and a hash of (label, name, size) per image.

    Recorded with the splits, because split indices point into this list: an
    image added to a class folder shifts them, and a "test" split would then
    hold training images. None for built-in data (it comes from installed
    packages). File names, not paths, so a moved data folder still matches.
    """
    if domain.files is None:
        return None
    digest = hashlib.sha256()
    for path, label in zip(domain.files, domain.labels.tolist()):
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        digest.update(f"{label}\t{os.path.basename(path)}\t{size}\n".encode())
    counts = {name: int((domain.labels == i).sum()) for i, name in enumerate(domain.classes)}
    return {"images": len(domain.files), "per_class": counts, "sha256": digest.hexdigest()}


def check_fingerprint(recorded: dict | None, domain: Domain) -> None:
    """UserError naming what changed when ``domain`` is no longer the image list ``recorded`` describes."""
    now = file_fingerprint(domain)
    if recorded is None or now is None or now["sha256"] == recorded.get("sha256"):
        return
    before = recorded.get("per_class", {})
    changes = [f"'{name}' {before.get(name, 0)} -> {now['per_class'].get(name, 0)}"
               for name in sorted(set(before) | set(now["per_class"]))
               if before.get(name, 0) != now["per_class"].get(name, 0)]
    what = ("images per class changed: " + ", ".join(changes[:10]) + (" ..." if len(changes) > 10 else "")
            if changes else "same counts, but files were renamed, replaced or resized")
    raise UserError(
        f"data {domain.name!r} changed since training ({recorded.get('images')} -> {now['images']} images; {what}); "
        f"the recorded splits no longer point at the same images. Restore the data as it was, or train again."
    )


def class_differences(a: list[str], b: list[str]) -> tuple[list[str], list[str]]:
    """Classes only in ``a`` and only in ``b`` (sorted)."""
    return sorted(set(a) - set(b)), sorted(set(b) - set(a))


def _difference_text(a_name: str, a: list[str], b_name: str, b: list[str]) -> str:
    only_a, only_b = class_differences(a, b)
    if not only_a and not only_b:
        return f"same classes in a different order ({a_name}: {a}; {b_name}: {b})"
    return f"only in {a_name}: {only_a or 'none'}; only in {b_name}: {only_b or 'none'}"


def _union(spec: str, domains: list[Domain]) -> Domain:
    """Concatenate domains with identical class lists; UserError naming the differences otherwise."""
    first = domains[0]
    for other in domains[1:]:
        if other.classes != first.classes:
            raise UserError(
                f"cannot join '{first.name}' and '{other.name}' in '{spec}': their classes differ "
                f"({_difference_text(first.name, first.classes, other.name, other.classes)}); "
                f"make the class folders match."
            )
        if other.kind != first.kind:
            raise UserError(
                f"cannot join '{first.name}' ({first.kind}) and '{other.name}' ({other.kind}) in '{spec}': "
                f"built-in digits and image folders are preprocessed differently; join like with like."
            )
    files = None
    if any(d.files is not None for d in domains):
        files = [f for d in domains for f in (d.files or [f"{d.name}#{i}" for i in range(len(d))])]
    return Domain(
        name=spec,
        images=torch.cat([d.images for d in domains]),
        labels=torch.cat([d.labels for d in domains]),
        classes=list(first.classes),
        kind=first.kind,
        files=files,
    )


def check_same_classes(teacher: Domain, student: Domain) -> None:
    """Refuse a teacher/student pair whose labels would mean different classes.

    AuG-KD transfers the teacher's class scores to the student label by label,
    so the class lists must be equal, in the same order.
    """
    if teacher.classes != student.classes:
        raise UserError(
            f"the teacher domain '{teacher.name}' and the student domain '{student.name}' have different "
            f"classes ({_difference_text('the teacher domain', teacher.classes, 'the student domain', student.classes)}); "
            f"both need the same class folders."
        )
