"""The export decisions written once: the INT8 gate, the options' checks, the one padding rule and top-k."""

from __future__ import annotations

import math

import numpy as np
import pytest

from augkd_edge.errors import UserError
from augkd_edge.export.api import ExportOptions
from augkd_edge.export.latency import batched_logits, top1, topk_accuracy
from augkd_edge.export.quantize import calibration_subset, int8_gate


def test_int8_gate_accepts_at_the_limit_refuses_over_it_and_records_force() -> None:
    assert int8_gate(0.5, 0.4921875, max_drop_points=0.78125, force=False)["accepted"]  # exactly at the limit
    refused = int8_gate(0.93, 0.9276, max_drop_points=0.1, force=False)
    assert not refused["accepted"] and not refused["forced"]
    assert refused["drop_points"] == pytest.approx(0.24)
    forced = int8_gate(0.93, 0.9276, max_drop_points=0.1, force=True)
    assert not forced["accepted"] and forced["forced"]
    better = int8_gate(0.93, 0.94, max_drop_points=0.0, force=True)
    assert better["accepted"] and not better["forced"]  # force only counts when it overrode a refusal
    assert list(refused) == ["fp32_top1", "int8_top1", "drop_points", "max_drop_points", "accepted", "forced"]


@pytest.mark.parametrize("kwargs, message", [
    ({"onnx": False}, "nothing to export"),
    ({"fp16": True}, "--fp16 applies to the TensorRT engine"),
    ({"batch": 0}, "a fixed batch must be >= 1"),
    ({"trt": True, "min_batch": 9, "opt_batch": 8}, "need 1 <= --min-batch <= --opt-batch <= --max-batch"),
])
def test_export_options_refuse_impossible_choices_before_any_work(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ExportOptions(**kwargs)


def test_export_options_engine_settings_follow_the_options() -> None:
    assert ExportOptions().engine_settings(32) is None
    settings = ExportOptions(trt=True, int8=True, fp16=True, batch=4).engine_settings(64)
    assert settings.input_size == 64 and settings.int8 and settings.fp16 and settings.static_batch == 4


def test_the_padding_rule_repeats_the_last_image_and_drops_its_logits() -> None:
    x = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((1, 3, 2, 2), np.float32)
    calls: list[np.ndarray] = []

    def infer(chunk: np.ndarray) -> np.ndarray:
        calls.append(chunk[:, 0, 0, 0].copy())
        return np.stack([chunk[:, 0, 0, 0], -chunk[:, 0, 0, 0]], axis=1)

    logits = batched_logits(infer, x, fixed_batch=2)
    assert [c.tolist() for c in calls] == [[0, 1], [2, 3], [4, 4]]  # the last image repeated, no zeros
    assert logits[:, 0].tolist() == [0, 1, 2, 3, 4]
    calls.clear()
    batched_logits(infer, x, batch_size=4)  # without a fixed batch the last chunk is short, not padded
    assert [len(c) for c in calls] == [4, 1]
    assert top1(infer, x, np.zeros(5, np.int64), batch=3) == 1.0  # top1 uses the same rule
    with pytest.raises(ValueError, match="no images"):
        batched_logits(infer, x[:0])


def test_topk_accuracy_counts_k_beyond_the_classes_as_hits_and_empty_as_nan() -> None:
    logits = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]], np.float32)
    labels = np.array([1, 2, 0])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(1 / 3) and acc["top2"] == pytest.approx(2 / 3) and acc["top5"] == 1.0
    assert topk_accuracy(np.array([[1.0, 1.0]]), np.array([0]))["top1"] == 1.0  # ties: the lower class index
    assert math.isnan(topk_accuracy(np.zeros((0, 3)), np.zeros(0, np.int64))["top1"])
    with pytest.raises(ValueError, match="2 logits for 3 labels"):
        topk_accuracy(logits[:2], labels)


def test_calibration_subset_is_seeded_sorted_and_bounded() -> None:
    images = np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1)
    subset = calibration_subset(images, 10)
    assert len(subset) == 10 and np.all(np.diff(subset[:, 0, 0, 0]) > 0)
    np.testing.assert_array_equal(subset, calibration_subset(images, 10))
    assert calibration_subset(images, 0) is images and calibration_subset(images, 100) is images
