"""Finding a trained model and its data from a run folder or a model file.

Export and bench take "a run folder or a checkpoint". The model file records
the data spec and split indices it was trained with (``meta.extra``), so the
student-domain test split (for parity and accuracy) and train split (for INT8
calibration) are rebuilt exactly, never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from augkd_edge.data import Domain
    from augkd_edge.models.loading import ModelMeta

MODEL_FILENAMES = ("student.pt", "teacher.pt")


def resolve_model_path(path: str | Path) -> Path:
    """A run folder -> its student.pt (or teacher.pt for a teacher run); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for name in MODEL_FILENAMES:
            if (path / name).is_file():
                return path / name
        raise UserError(
            f"{path}: no student.pt or teacher.pt in this folder; give a finished run folder "
            f"(augkd-edge distill --out) or a model file."
        )
    if path.is_file():
        return path
    raise UserError(f"{path}: no such file or folder.")


def load_student(path: str | Path) -> tuple["nn.Module", "ModelMeta"]:
    """The model (eval mode, CPU) and its metadata, loaded without running code from the file."""
    from augkd_edge.models.loading import load_model_file

    return load_model_file(resolve_model_path(path))


def split_arrays(meta: "ModelMeta", split: str) -> tuple["np.ndarray", "np.ndarray"]:
    """Images (float32 [N,3,S,S] in [0,1]) and labels (int64) of one split of the model's data."""
    import numpy as np

    from augkd_edge.data import check_fingerprint, load_domain

    spec = meta.extra.get("data")
    splits = meta.extra.get("splits")
    if not spec or not isinstance(splits, dict):
        raise UserError(
            "this model file records no training data (extra['data'] / extra['splits']); "
            "pass the data explicitly or use a model file written by augkd-edge distill/teacher."
        )
    if split not in splits:
        raise UserError(f"the model file has splits {sorted(splits)}, not {split!r}.")
    domain = load_domain(spec, meta.input_size)
    check_fingerprint(meta.extra.get("data_fingerprint"), domain)
    idx = np.asarray(splits[split], dtype=np.int64)
    if len(idx) and idx.max() >= len(domain.labels):
        raise UserError(
            f"data {spec!r} now has {len(domain.labels)} images but the recorded {split} split "
            f"indexes image {int(idx.max())}: the data changed since training."
        )
    images = domain.images[idx].numpy().astype(np.float32, copy=False)
    labels = domain.labels[idx].numpy().astype(np.int64, copy=False)
    return images, labels


def save_trained_model(path: Path, model: "nn.Module", *, arch: str, domain: "Domain", data: str, input_size: int,
                       splits: dict, **extra: object) -> None:
    """Save a model trained here as an augkd-edge model file, with what :func:`split_arrays` reads back.

    ``meta.extra`` records the data spec, the split indices and the data's
    fingerprint (so a later export or bench rebuilds exactly these splits), plus
    ``extra`` (role, method, seed, ...).
    """
    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, file_fingerprint
    from augkd_edge.models.loading import ModelMeta, save_model_file

    meta = ModelMeta(
        arch=arch,
        num_classes=len(domain.classes),
        class_names=list(domain.classes),
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={**extra, "data": data, "splits": {k: [int(i) for i in v] for k, v in splits.items()},
               "data_fingerprint": file_fingerprint(domain)},
    )
    save_model_file(path, model, meta)
