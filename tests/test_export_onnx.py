"""ONNX export (in-graph normalisation, dynamic/fixed batch, one file), parity figures,
and the static TensorRT operator check."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from augkd_edge.errors import UserError
from augkd_edge.export.onnx import check_onnx, export_onnx, with_normalisation
from augkd_edge.export.latency import batched_logits, top1_accuracy
from augkd_edge.export.parity import compare_logits, compare_runners
from augkd_edge.export.runtimes import OrtRunner, TorchRunner
from augkd_edge.export.trt_ops import (
    SUPPORTED_OPS,
    TENSORRT_VERSION,
    UNSUPPORTED_OPS,
    check_tensorrt_support,
    require_tensorrt_support,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


@pytest.fixture(scope="module")
def mobilenet_onnx(tmp_path_factory):
    """The real student architecture through the default (torch.export-based) exporter, opset 18."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so normalisation mistakes would show
        model(torch.rand(16, 3, 32, 32))
    wrapped = with_normalisation(model, MEAN, STD)
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    info = export_onnx(wrapped, path, 32, opset=18)
    return wrapped, info


def test_mobilenet_export_is_one_checked_file_with_dynamic_batch(mobilenet_onnx):
    _, info = mobilenet_onnx
    assert info.exporter == "dynamo" and info.opset == 18
    assert (info.input_name, info.output_name) == ("image", "logits")
    assert info.input_shape == ["batch", 3, 32, 32] and info.output_shape == ["batch", 10]
    assert sorted(p.name for p in info.path.parent.iterdir()) == ["student.onnx"]  # no external data, no temp
    model = onnx.load(str(info.path))
    onnx.checker.check_model(model, full_check=True)
    assert {"HardSwish", "HardSigmoid", "Sub", "Div"} <= set(info.operators)  # normalisation is in the graph


def test_mobilenet_parity_at_several_batch_sizes(mobilenet_onnx):
    wrapped, info = mobilenet_onnx
    with TorchRunner(wrapped) as ref, OrtRunner(info.path, threads=1) as cand:
        for batch in (1, 5):
            report = compare_runners(ref, cand, _images(11, seed=batch), batch_size=batch)
            assert report.passed, report.summary()
            assert report.max_abs_diff < 1e-4 and report.top1_agreement == 1.0


def test_mobilenet_graph_passes_the_tensorrt_operator_check(mobilenet_onnx):
    _, info = mobilenet_onnx
    report = check_tensorrt_support(info.path)
    assert report.ok, report.offences
    assert report.tensorrt_version == TENSORRT_VERSION and report.opset == 18
    assert require_tensorrt_support(info.path).ok


class TinyNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.hardswish(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_normalisation_is_baked_in(tmp_path):
    torch.manual_seed(1)
    raw = TinyNet().eval()
    info = export_onnx(with_normalisation(raw, MEAN, STD), tmp_path / "m.onnx", 16, opset=17)
    x = _images(3, 16)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = raw((torch.from_numpy(x) - mean) / std).numpy()
    np.testing.assert_allclose(OrtRunner(info.path).infer(x), expected, atol=1e-5)


def test_fixed_batch_export_and_padded_parity(tmp_path):
    torch.manual_seed(2)
    wrapped = with_normalisation(TinyNet(), MEAN, STD)
    info = export_onnx(wrapped, tmp_path / "fixed.onnx", 16, opset=17, batch=4)
    assert info.exporter == "torchscript" and info.opset == 17
    assert info.input_shape == [4, 3, 16, 16]
    x = _images(7, 16)  # 7 = 4 + 3: the last batch is padded to the graph's static size
    runner = OrtRunner(info.path)
    with pytest.raises(Exception):
        runner.infer(x[:3])  # a static graph refuses other batch sizes ...
    logits = batched_logits(runner.infer, x, fixed_batch=4)  # ... so parity pads
    assert logits.shape == (7, 5)
    np.testing.assert_allclose(logits, TorchRunner(wrapped).infer(x), atol=1e-5)


def test_export_refusals_are_user_errors(tmp_path):
    wrapped = with_normalisation(TinyNet(), MEAN, STD)
    with pytest.raises(UserError, match="opset >= 13"):
        export_onnx(wrapped, tmp_path / "a.onnx", 16, opset=11)
    with pytest.raises(UserError, match="fixed batch"):
        export_onnx(wrapped, tmp_path / "a.onnx", 16, batch=0)
    with pytest.raises(UserError, match="3 positive stds"):
        with_normalisation(TinyNet(), MEAN, (0.2, 0.0, 0.2))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="not a valid ONNX model"):
        check_onnx(broken)


def test_external_data_files_are_refused(tmp_path):
    torch.manual_seed(3)
    info = export_onnx(with_normalisation(TinyNet(), MEAN, STD), tmp_path / "m.onnx", 16, opset=17)
    model = onnx.load(str(info.path))
    split = tmp_path / "split.onnx"
    onnx.save_model(model, str(split), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="split.onnx.data", size_threshold=0)
    with pytest.raises(UserError, match="external-data"):
        check_onnx(split)


def test_parity_figures_and_failures():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    same = compare_logits(ref, ref.copy())
    assert same.passed and same.max_abs_diff == 0 and same.top1_agreement == 1.0
    nudged = compare_logits(ref, ref + np.float32(5e-4), atol=1e-4)
    assert not nudged.passed and nudged.top1_agreement == 1.0
    assert nudged.max_abs_diff == pytest.approx(5e-4, rel=1e-3)
    assert nudged.max_rel_diff == pytest.approx(5e-4 / 1e-6, rel=1e-3)  # the zero logit: floor 1e-6
    flipped = ref.copy()
    flipped[1] = [4.0, 1.0, 3.0]
    report = compare_logits(ref, flipped, atol=10.0, min_agreement=1.0)
    assert report.top1_agreement == 0.5 and not report.passed
    assert "FAIL" in report.summary() and report.to_dict()["passed"] is False
    assert top1_accuracy(ref, np.array([0, 1])) == 0.5


def _graph_model(nodes, inputs, outputs, initializers=(), opset=18, functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))


def test_operator_check_names_unsupported_nodes_including_subgraphs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    then_graph = helper.make_graph([helper.make_node("FusedGelu", ["x"], ["b"], name="ms_fusion",
                                                     domain="com.microsoft")], "then", [], [branch_out])
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["b"], name="keep")], "else", [], [branch_out])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="fine_relu"),
        helper.make_node("Unique", ["r"], ["u"], name="dedupe"),
        helper.make_node("If", ["cond"], ["i"], name="branch", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Add", ["u", "i"], ["y"], name="add"),
    ]
    model = _graph_model(nodes, [x, cond], [y])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    report = check_tensorrt_support(model)
    assert not report.ok
    offenders = {o.node: o for o in report.offences}
    assert set(offenders) == {"dedupe", "branch/then_branch/ms_fusion"}
    assert "unsupported" in offenders["dedupe"].reason
    assert "plugin" in offenders["branch/then_branch/ms_fusion"].reason
    assert report.to_dict()["offending_nodes"][0]["node"] in offenders


def test_operator_check_on_a_file_raises_with_the_node_name(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    model = _graph_model([helper.make_node("TfIdfVectorizer", ["x"], ["y"], name="text_features", mode="TF",
                                           min_gram_length=1, max_gram_length=1, max_skip_count=0,
                                           ngram_counts=[0], ngram_indexes=[0], pool_int64s=[1])],
                         [x], [y], opset=18)
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserError, match=r"text_features \(TfIdfVectorizer\)"):
        require_tensorrt_support(path)


def test_operator_check_restrictions_and_opset_range():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    inits = [
        numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(3, dtype=np.int8), "zp_bad"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int32), "bias_q"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp_bad"], ["q"], name="asym_q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp_bad"], ["d"], name="asym_dq"),
        helper.make_node("DequantizeLinear", ["bias_q", "scale"], ["b"], name="int32_bias"),
        helper.make_node("Shape", ["x"], ["axes"], name="dyn_axes"),
        helper.make_node("ReduceSum", ["d", "axes"], ["y"], name="reduce_dynamic_axes"),
    ]
    report = check_tensorrt_support(_graph_model(nodes, [x], [y], inits, opset=18))
    names = {o.node for o in report.offences}
    assert names == {"asym_q", "asym_dq", "int32_bias", "reduce_dynamic_axes"}
    old = check_tensorrt_support(_graph_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [x], [y], opset=8))
    assert [o.op_type for o in old.offences] == ["opset"]


def test_operator_list_is_consistent():
    assert not SUPPORTED_OPS & UNSUPPORTED_OPS
    assert {"Conv", "Gemm", "HardSwish", "HardSigmoid", "QuantizeLinear", "DequantizeLinear"} <= SUPPORTED_OPS
    assert {"QLinearConv", "ConvInteger", "DynamicQuantizeLinear"} <= UNSUPPORTED_OPS
