"""The augkd-edge model file, and safe loading of users' teachers.

Model file (``*.pt``): one ``torch.save`` of a plain dict, loadable with
``weights_only=True``::

    {"format": "augkd-edge/model", "version": 1,
     "arch": "mobilenet_v3_small", "num_classes": 10, "class_names": [...],
     "input_size": 32, "mean": [r, g, b], "std": [r, g, b],
     "state_dict": {...}, "extra": {...plain data...}}

It carries what a deployer needs besides the weights: the input size and the
normalisation the model was trained with, and the class names. Teachers from
strangers may be a plain state_dict for a named torchvision architecture, a
TorchScript archive, or a ``torch.export`` archive (for architectures we do not
know); anything that needs unpickling of arbitrary objects is refused.
"""

from __future__ import annotations

import dataclasses
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    from torch import nn

MODEL_FORMAT = "augkd-edge/model"
MODEL_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class ModelMeta:
    """What a model file says about its model besides the weights."""

    arch: str
    num_classes: int
    class_names: list[str]
    input_size: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def save_model_file(path: str | Path, model: "nn.Module", meta: ModelMeta) -> Path:
    """Write a model file atomically (see module docstring for the format)."""
    from augkd_edge.checkpoint import save_atomic

    record = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "arch": meta.arch,
        "num_classes": int(meta.num_classes),
        "class_names": list(meta.class_names),
        "input_size": int(meta.input_size),
        "mean": [float(v) for v in meta.mean],
        "std": [float(v) for v in meta.std],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(meta.extra),
    }
    return save_atomic(record, path)


def is_model_record(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT


def meta_from_record(record: dict, path: str | Path = "<record>") -> ModelMeta:
    version = record.get("version")
    if not isinstance(version, int) or version > MODEL_VERSION:
        raise UserError(
            f"{path}: model file version {version!r} is newer than this augkd-edge understands "
            f"(<= {MODEL_VERSION}); upgrade augkd-edge."
        )
    try:
        return ModelMeta(
            arch=str(record["arch"]),
            num_classes=int(record["num_classes"]),
            class_names=[str(c) for c in record["class_names"]],
            input_size=int(record["input_size"]),
            mean=tuple(float(v) for v in record["mean"]),
            std=tuple(float(v) for v in record["std"]),
            extra=dict(record.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: model file is missing or has a bad field: {exc}") from exc


def load_state_into(model: "nn.Module", state: dict, path: str | Path, what: str) -> None:
    """``load_state_dict`` with a user-facing message when shapes or keys do not fit."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise UserError(
            f"{path}: weights do not fit {what} (another architecture or class count?): "
            f"{_state_mismatch(model.state_dict(), state) or str(exc).splitlines()[0][:300]}"
        ) from exc


def _state_mismatch(expected: dict, given: dict, show: int = 3) -> str:
    """A short summary of how two state_dicts differ: counts and the first few keys of each kind."""

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (", ..." if len(keys) > show else "")

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(getattr(given[k], 'shape', ()))} vs {tuple(expected[k].shape)}"
              for k in expected if k in given and getattr(given[k], "shape", None) != expected[k].shape]
    parts = [f"{len(keys)} {name} ({first(keys)})" for name, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", shapes))
             if keys]
    return "; ".join(parts)


def load_model_file(path: str | Path) -> tuple["nn.Module", ModelMeta]:
    """Load an augkd-edge model file into a fresh model, in eval mode."""
    from augkd_edge.checkpoint import load_safe
    from augkd_edge.models.zoo import build_classifier

    record = load_safe(path)
    if not is_model_record(record):
        raise UserError(
            f"{path}: not an augkd-edge model file (no 'format': '{MODEL_FORMAT}' entry); "
            f"give a run folder, its student.pt, or a file written by augkd-edge."
        )
    meta = meta_from_record(record, path)
    model = build_classifier(meta.arch, meta.num_classes)
    load_state_into(model, record["state_dict"], path, f"{meta.arch} with {meta.num_classes} classes")
    model.eval()
    return model, meta


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_teacher(
    path: str | Path, arch: str | None, num_classes: int, *, input_size: int = 32,
    class_names: list[str] | None = None,
) -> "nn.Module":
    """Load a teacher the user gives, without running code from the file.

    Accepted: an augkd-edge model file; a state_dict for ``arch`` (torchvision
    name), as a torch file or a ``.safetensors`` file; a ``torch.export`` archive (``.pt2``); a TorchScript archive. The
    returned module is in eval mode with ``num_classes`` outputs, checked on
    ``input_size`` inputs at several batch sizes. An augkd-edge model file that
    records its class names must match ``class_names`` (when given); the same
    names in another order are mapped by name.
    """
    import torch

    from augkd_edge.checkpoint import load_state_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: teacher file not found; check --teacher.")
    if path.suffix == ".pt2":
        from augkd_edge.models.pt2 import check_pt2_archive

        check_pt2_archive(path)  # before torch: its loader unpickles and evaluates parts of the file
        try:
            program = torch.export.load(str(path))
            model = _FrozenProgram(program.module(), _static_input_shape(program))
        except Exception as exc:  # torch.export raises many types for bad archives
            raise UserError(f"{path}: not a loadable torch.export archive: {exc}") from exc
        _check_static_size(model, input_size, path)
    elif _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": the user's format
                model = _FrozenProgram(torch.jit.load(str(path), map_location="cpu").eval(), None)
        except Exception as exc:
            raise UserError(f"{path}: not a loadable TorchScript archive: {exc}") from exc
    else:
        obj = load_state_file(path)
        if is_model_record(obj):
            model, meta = load_model_file(path)
            if meta.num_classes != num_classes:
                raise UserError(
                    f"{path}: teacher has {meta.num_classes} classes but the data has {num_classes}."
                )
            model = _match_class_names(model, meta.class_names, class_names, path)
        else:
            model = _state_dict_teacher(obj, arch, num_classes, path)
    model.eval()
    _check_outputs(model, num_classes, input_size, path)
    return model


def _state_dict_teacher(obj: Any, arch: str | None, num_classes: int, path: Path) -> "nn.Module":
    import torch

    from augkd_edge.models.zoo import build_classifier

    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state_dict (a dict of tensors) for the teacher.")
    if arch is None:
        raise UserError(f"{path}: a state_dict needs --teacher-arch NAME (a torchvision model name).")
    model = build_classifier(arch, num_classes)
    load_state_into(model, obj, path, f"{arch} with {num_classes} classes")
    return model


def _match_class_names(model: "nn.Module", teacher: list[str], student: list[str] | None, path: Path) -> "nn.Module":
    """The teacher as is, reordered to the student's class order, or UserError naming both lists."""
    if student is None or list(teacher) == list(student):
        return model
    if sorted(teacher) != sorted(student):
        only_t = sorted(set(teacher) - set(student))
        only_s = sorted(set(student) - set(teacher))
        raise UserError(
            f"{path}: the teacher was trained on other classes than the student data has "
            f"(teacher: {list(teacher)}; student data: {list(student)}; only in the teacher: {only_t or 'none'}; "
            f"only in the student data: {only_s or 'none'}); rename the class folders to match."
        )
    import torch
    from torch import nn

    class Reordered(nn.Module):
        """The teacher's logits in the student's class order (same names, other order)."""

        def __init__(self, inner: nn.Module, order: list[int]):
            super().__init__()
            self.inner = inner
            self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.inner(x).index_select(1, self.order)

    return Reordered(model, [teacher.index(name) for name in student]).eval()


def _static_input_shape(program: Any) -> tuple[int, ...] | None:
    """The fixed shape of a ``torch.export`` program's one input, or None when any dim is dynamic."""
    import torch

    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            shape = getattr(val, "shape", None)
            if shape is not None and all(isinstance(d, int) and not isinstance(d, torch.SymInt) for d in shape):
                return tuple(int(d) for d in shape)
            return None
    return None


def _check_static_size(model: "nn.Module", input_size: int, path: Path) -> None:
    shape = getattr(model, "static_shape", None)
    if shape is not None and len(shape) == 4 and tuple(shape[1:]) != (3, input_size, input_size):
        raise UserError(
            f"{path}: this torch.export archive only takes inputs of shape {tuple(shape)}, but the run uses "
            f"{input_size}x{input_size} images; run with --input-size {shape[-1]} or export the teacher "
            f"for {input_size}x{input_size} inputs."
        )


def _frozen_program_type() -> type:
    import torch
    from torch import nn

    class FrozenProgram(nn.Module):
        """A TorchScript or ``torch.export`` program as a frozen teacher.

        Exported graphs are frozen in the mode they were exported in and refuse
        ``.eval()``/``.train()``, and ScriptModules refuse ``requires_grad_``; the
        training stack toggles modes and freezes every model, so this wrapper
        records the mode without passing it down (the program stays in eval
        mode). A program exported for one fixed batch size ``static_shape[0]``
        gets any batch: split into chunks of that size, the last one padded.
        """

        def __init__(self, inner: nn.Module, static_shape: tuple[int, ...] | None):
            super().__init__()
            self.inner = inner
            self.static_shape = static_shape

        def train(self, mode: bool = True) -> "FrozenProgram":
            self.training = mode
            return self

        def forward(self, x):  # type: ignore[no-untyped-def]
            batch = self.static_shape[0] if self.static_shape else None
            if batch is None or x.shape[0] == batch:
                return self.inner(x)
            outs = []
            for chunk in torch.split(x, batch):
                n = chunk.shape[0]
                if n < batch:
                    chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
                outs.append(self.inner(chunk)[:n])
            return torch.cat(outs)

    return FrozenProgram


def _FrozenProgram(inner: "nn.Module", static_shape: tuple[int, ...] | None) -> "nn.Module":
    return _frozen_program_type()(inner, static_shape)


# Batch sizes the probe tries: 1 (a last partial batch), an odd size, and a full training batch.
PROBE_BATCHES = (1, 3, 64)


def _check_outputs(model: "nn.Module", num_classes: int, input_size: int, path: Path) -> None:
    import torch

    with torch.no_grad():
        for batch in PROBE_BATCHES:
            try:
                out = model(torch.zeros(batch, 3, input_size, input_size))
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(
                    f"{path}: the teacher fails on a {batch}x3x{input_size}x{input_size} input (the run feeds "
                    f"batches of any size at --input-size {input_size}): {first[:300]}"
                ) from exc
            if out.ndim != 2 or out.shape != (batch, num_classes):
                raise UserError(
                    f"{path}: the teacher outputs shape {tuple(out.shape)} for {batch} images, "
                    f"expected ({batch}, {num_classes})."
                )
            if not torch.isfinite(out).all():
                bad = sum(int((~torch.isfinite(t)).sum()) for t in model.state_dict().values() if t.is_floating_point())
                raise UserError(
                    f"{path}: the teacher outputs NaN or Inf ({bad} NaN/Inf values among its weights and "
                    f"buffers); the teacher file is broken, not the run: use a healthy one."
                )
