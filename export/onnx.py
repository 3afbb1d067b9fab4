"""PyTorch student -> one self-contained ONNX file that takes [0, 1] images.

Decision: the normalisation the student was trained with is **baked into the
graph** (a ``Sub``/``Div`` pair in front of the network). A deployer then feeds
raw ``[0, 1]`` pixels and cannot get the mean/std wrong, which is the classic
silent accuracy loss on the edge; the values are still written to
``export.json`` for the record. Input ``image``: float32 NCHW in [0, 1];
output ``logits``: float32 ``[N, K]``.

Exporter: opset >= 18 uses the torch.export-based exporter (the default of
torch >= 2.9, which writes clean ``HardSwish``/``HardSigmoid`` nodes TensorRT's
parser takes); it cannot produce lower opsets for every model (its version
converter gives up and silently keeps 18), so opsets 13-17 go through the
TorchScript exporter. Either way the produced opset is verified. Weights stay
inside the ``.onnx`` file (no external-data side file) because a student is a
few MB and one file is what gets copied to a board.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
MIN_OPSET = 13
DYNAMO_MIN_OPSET = 18
MAX_BATCH = 4096  # upper bound of the symbolic batch dimension given to torch.export
PROTOBUF_LIMIT = 2**31 - 1  # one .onnx file cannot exceed 2 GiB


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, the same arithmetic as torchvision's Normalize.

    Kept as buffers (not folded into the first convolution) so the exported
    ``Sub``/``Div`` reproduce training's float operations (parity: docs/decisions.md#export-and-benchmarks).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise UserError(f"normalisation needs 3 means and 3 positive stds, got mean={mean} std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def with_normalisation(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """The deployable model: [0, 1] images in, logits out, in eval mode."""
    return nn.Sequential(Normalize(mean, std), model).eval()


@dataclass
class OnnxExport:
    """What was written and how it is called; goes into export.json."""

    path: Path
    opset: int
    exporter: str
    input_name: str
    output_name: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    operators: list[str] = field(default_factory=list)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int,
    opset: int = 18,
    batch: int | None = None,
) -> OnnxExport:
    """Export an already-wrapped model (see :func:`with_normalisation`) and check the file.

    ``batch=None`` gives a dynamic batch dimension named ``batch``; an int fixes it
    (some NPUs / DLA want static shapes).
    """
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset}: TensorRT 10 and our exporters need opset >= {MIN_OPSET}.")
    if batch is not None and batch < 1:
        raise UserError(f"--batch {batch}: a fixed batch must be >= 1 (or 'dynamic').")
    if input_size < 8:
        raise UserError(f"--input-size {input_size}: too small for a CNN; use the size the model was trained at.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # torch.export specialises a symbolic dimension whose example size is 0 or 1.
    example = torch.rand(batch if batch is not None else 2, 3, input_size, input_size)
    exporter = "dynamo" if opset >= DYNAMO_MIN_OPSET else "torchscript"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            if exporter == "dynamo":
                dynamic = None if batch is not None else ({0: torch.export.Dim(BATCH_DIM, min=1, max=MAX_BATCH)},)
                torch.onnx.export(
                    model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    opset_version=opset, dynamic_shapes=dynamic, external_data=False, dynamo=True,
                    verbose=False,
                )
            else:
                axes = None if batch is not None else {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}}
                torch.onnx.export(
                    model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    opset_version=opset, dynamic_axes=axes, dynamo=False, do_constant_folding=True,
                )
        info = check_onnx(tmp, expected_opset=opset)
        tmp.replace(path)
    except UserError:
        raise
    except Exception as exc:  # exporters raise a zoo of types; the user needs the first line
        raise UserError(
            f"{path}: ONNX export ({exporter} exporter, opset {opset}) failed: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. "
            f"Try another --opset."
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    info.path = path
    info.exporter = exporter
    return info


def _dims(value_info: "onnx.ValueInfoProto") -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in shape.dim]


def check_onnx(path: str | Path, expected_opset: int | None = None) -> OnnxExport:
    """Full ``onnx.checker`` pass (with strict shape inference) and the I/O contract.

    Refuses external-data files: the deployable artefact must be one file.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX file not found.")
    if path.stat().st_size > PROTOBUF_LIMIT:
        raise UserError(f"{path}: over 2 GiB; a student this large is not an edge model.")
    try:
        model = onnx.load(str(path), load_external_data=False)
        if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
            raise UserError(f"{path}: weights are stored in an external-data file; expected one self-contained file.")
        onnx.checker.check_model(model, full_check=True)
    except UserError:
        raise
    except Exception as exc:  # onnx raises ValidationError, DecodeError, InferenceError...
        raise UserError(f"{path}: not a valid ONNX model: {str(exc).strip().splitlines()[0]}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if expected_opset is not None and opset != expected_opset:
        raise UserError(f"{path}: the exporter produced opset {opset}, not the requested {expected_opset}.")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UserError(f"{path}: expected one input and one output, got {len(inputs)} and {len(model.graph.output)}.")
    return OnnxExport(
        path=path,
        opset=int(opset or 0),
        exporter=model.producer_name or "unknown",
        input_name=inputs[0].name,
        output_name=model.graph.output[0].name,
        input_shape=_dims(inputs[0]),
        output_shape=_dims(model.graph.output[0]),
        operators=sorted({n.op_type for n in model.graph.node}),
    )
