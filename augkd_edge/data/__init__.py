"""Domains for out-of-domain distillation: built-in digits, image folders, unions.

``load_domain(spec)`` gives a :class:`Domain` (images already preprocessed to
the model's input size), the split functions cut it into seeded, stratified
index sets that each run saves, and ``augment`` / ``normalize`` turn a batch
into training input. Modules: ``domain`` (specs, unions, cache), ``digits`` and
``preprocess`` (built-in digits and their common preprocessing), ``folder``
(ImageFolder loading and its bad-data rules), ``splits``, ``augment``.
"""

from augkd_edge.data.augment import Augment, augment, make_augment, normalize
from augkd_edge.data.domain import Domain, check_fingerprint, check_same_classes, file_fingerprint, load_domain
from augkd_edge.data.folder import BadImageWarning
from augkd_edge.data.splits import load_splits, save_splits, student_split, teacher_split
from augkd_edge.models.loading import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augment",
    "BadImageWarning",
    "Domain",
    "augment",
    "check_fingerprint",
    "check_same_classes",
    "file_fingerprint",
    "load_domain",
    "load_splits",
    "make_augment",
    "normalize",
    "save_splits",
    "student_split",
    "teacher_split",
]
