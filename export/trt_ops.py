"""Static check that an ONNX graph only uses what TensorRT 10's ONNX parser accepts.

Engines are built on the target (a Jetson builds its own), often long after the
export and far from the developer. Finding an unsupported node there costs a
round trip, so this check runs anywhere, without TensorRT, at export time.

The operator list is the support matrix of the ONNX-TensorRT parser,
``docs/operators.md`` of https://github.com/onnx/onnx-tensorrt for
**TensorRT 10.15** (opset 9 to 24), transcribed below. Besides the operator
names it checks the restrictions that bite exported CNN classifiers: Q/DQ zero
points must be zero (symmetric INT8), ``Reduce*`` axes must be constants, and
ops from non-standard domains (e.g. ``com.microsoft`` fusions ONNX Runtime writes
into optimised models) need a TensorRT plugin. Nodes inside subgraphs (``If``,
``Loop``, ``Scan``) and local functions are walked too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import onnx

TENSORRT_VERSION = "10.15"
SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15 GA support matrix)"
OPSET_RANGE = (9, 24)

# Operators marked "Y" in the matrix.
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape
Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish
Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub
Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Operators marked "N": named explicitly so a report can say "listed as unsupported"
# rather than "unknown to this list" (e.g. an operator newer than TensorRT 10.15).
UNSUPPORTED_OPS = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad
Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger
MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit
TfIdfVectorizer Unique
""".split())

_STANDARD_DOMAINS = ("", "ai.onnx")
_DEQUANTIZABLE = ("int8", "int4", "float8_e4m3fn", "float4_e2m1")


@dataclass(frozen=True)
class Offence:
    """One node TensorRT's parser would reject, and why."""

    node: str  # node name (or "<unnamed #i>"), prefixed by its subgraph path
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.reason}"


@dataclass
class OpSupportReport:
    """Result of :func:`check_tensorrt_support`; ``ok`` means every node is supported."""

    tensorrt_version: str
    opset: int
    offences: list[Offence]
    operators: list[str]

    @property
    def ok(self) -> bool:
        return not self.offences

    def to_dict(self) -> dict:
        return {
            "tensorrt_version": self.tensorrt_version,
            "source": SOURCE,
            "opset": self.opset,
            "ok": self.ok,
            "operators": self.operators,
            "offending_nodes": [{"node": o.node, "op_type": o.op_type, "reason": o.reason} for o in self.offences],
        }


def _walk(graph: "onnx.GraphProto", prefix: str = "") -> Iterator[tuple[str, "onnx.NodeProto"]]:
    """Every node of a graph and of the subgraphs held in its attributes, with a readable path."""
    import onnx

    for i, node in enumerate(graph.node):
        name = f"{prefix}{node.name or f'<unnamed #{i}>'}"
        yield name, node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g, f"{name}/{attr.name}/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for j, sub in enumerate(attr.graphs):
                    yield from _walk(sub, f"{name}/{attr.name}[{j}]/")


def _constant_names(model: "onnx.ModelProto") -> set[str]:
    names = {t.name for t in model.graph.initializer}
    for _, node in _walk(model.graph):
        if node.op_type == "Constant":
            names.update(node.output)
    return names


def _constant_values(model: "onnx.ModelProto") -> dict[str, "object"]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for _, node in _walk(model.graph):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _restriction(node: "onnx.NodeProto", constants: set[str], values: dict) -> str | None:
    """The matrix restrictions an exported classifier can violate; None when fine."""
    op = node.op_type
    if op == "DequantizeLinear" and node.input and node.input[0] in values:
        kind = str(getattr(values[node.input[0]], "dtype", ""))
        if kind not in _DEQUANTIZABLE:
            return f"dequantizes a {kind} constant; TensorRT takes signed INT8/FP8/INT4/FP4 (keep biases float)"
    if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero_point = values.get(node.input[2])
        if zero_point is None:
            return "zero point must be a constant (TensorRT needs symmetric quantization)"
        if hasattr(zero_point, "any") and zero_point.any():
            return "zero point must be 0 (TensorRT supports symmetric quantization only)"
    if op.startswith("Reduce") and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
        return "`axes` must be an initializer"
    if op in ("Squeeze", "Unsqueeze") and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
        return "`axes` must resolve to a constant"
    return None


def check_tensorrt_support(model_or_path: "onnx.ModelProto | str | Path") -> OpSupportReport:
    """Walk the graph (subgraphs and local functions included) against the TensorRT 10 matrix."""
    import onnx

    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise UserError(f"{path}: cannot read this ONNX file: {exc}") from exc
    else:
        model = model_or_path
    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 0)
    offences: list[Offence] = []
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        offences.append(Offence("<model>", "opset", f"opset {opset} is outside TensorRT {TENSORRT_VERSION}'s "
                                                    f"range {OPSET_RANGE[0]}-{OPSET_RANGE[1]}"))
    functions = {(f.domain, f.name): f for f in model.functions}
    constants = _constant_names(model)
    values = _constant_values(model)
    operators: set[str] = set()

    def visit(nodes: Iterator[tuple[str, "onnx.NodeProto"]]) -> None:
        for name, node in nodes:
            if (node.domain, node.op_type) in functions:  # the parser inlines local functions
                body = functions[(node.domain, node.op_type)]
                visit(_walk(body, f"{name}/"))  # a FunctionProto has .node like a graph
                continue
            operators.add(node.op_type if node.domain in _STANDARD_DOMAINS else f"{node.domain}.{node.op_type}")
            if node.domain not in _STANDARD_DOMAINS:
                offences.append(Offence(name, f"{node.domain}.{node.op_type}",
                                        "custom-domain operator: needs a TensorRT plugin"))
            elif node.op_type in UNSUPPORTED_OPS:
                offences.append(Offence(name, node.op_type,
                                        f"listed as unsupported by TensorRT {TENSORRT_VERSION}'s ONNX parser"))
            elif node.op_type not in SUPPORTED_OPS:
                offences.append(Offence(name, node.op_type,
                                        f"not in TensorRT {TENSORRT_VERSION}'s ONNX operator support matrix"))
            else:
                problem = _restriction(node, constants, values)
                if problem:
                    offences.append(Offence(name, node.op_type, problem))

    visit(_walk(model.graph))
    return OpSupportReport(TENSORRT_VERSION, int(opset), offences, sorted(operators))


def require_tensorrt_support(path: str | Path) -> OpSupportReport:
    """:func:`check_tensorrt_support`, raising a UserError that names every offending node."""
    report = check_tensorrt_support(path)
    if not report.ok:
        listed = "; ".join(str(o) for o in report.offences[:10])
        more = f" (and {len(report.offences) - 10} more)" if len(report.offences) > 10 else ""
        raise UserError(
            f"{path}: TensorRT {TENSORRT_VERSION}'s ONNX parser would reject {len(report.offences)} node(s): "
            f"{listed}{more}. Replace these layers in the model or export with another --opset."
        )
    return report
