"""augkd-edge sweep: the decision rules on hand-made entries, --latency-from matching, the
records' resume guard, the renderings, and the bad-input messages (no training here;
the end-to-end sweep is tests/test_sweep_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from augkd_edge.cli import main
from augkd_edge.errors import UserError
from augkd_edge.sweep import records, render, select


def entry(ident: str, top1: float | None, median: float | None, status: str = "ok", **extra) -> dict:
    student, precision = ident.rsplit("-", 1)
    latency = None if median is None else {"median": median, "p90": median * 1.1, "p99": median * 1.5}
    return {"id": ident, "student": student, "precision": precision, "backend": "ort", "batch": 1, "status": status,
            "reason": None if status == "ok" else "boom", "top1": top1, "latency_ms": latency, "params": 10,
            "model_bytes": 1000, "model_file": f"/s/models/{ident}.onnx", "model_sha256": f"h-{ident}",
            "pareto": False, "chosen": False, **extra}


ENTRIES = [
    entry("a-fp32", 0.90, 1.0),
    entry("a-int8", 0.89, 0.5),
    entry("b-fp32", 0.95, 3.0),
    entry("b-int8", 0.88, 2.0),  # dominated by a-fp32 (more accurate and faster)
    entry("c-fp32", 0.95, 3.0),  # ties b-fp32 exactly: neither dominates
    entry("d-fp32", 0.99, None),  # no latency: not on the front, never chosen
    entry("e-fp32", None, None, status="failed"),
]


def test_pareto_front_drops_dominated_and_unmeasured_entries() -> None:
    assert select.pareto_ids(ENTRIES) == {"a-fp32", "a-int8", "b-fp32", "c-fp32"}
    assert select.pareto_ids([]) == set()


def test_budget_picks_the_most_accurate_within_it_and_faster_on_ties() -> None:
    assert select.choose(ENTRIES, 1.0).chosen == "a-fp32"  # the median may equal the budget
    assert select.choose(ENTRIES, 0.99).chosen == "a-int8"
    tie = [entry("x-fp32", 0.9, 2.0), entry("y-fp32", 0.9, 1.5)]
    assert select.choose(tie, 5).chosen == "y-fp32"
    choice = select.choose(ENTRIES, 100)
    assert choice.chosen in {"b-fp32", "c-fp32"} and "most accurate of 5 candidate(s)" in choice.message


def test_no_fit_names_the_closest_and_no_data_says_so() -> None:
    choice = select.choose(ENTRIES, 0.1)
    assert choice.chosen is None
    assert "no candidate fits the 0.1 ms budget; the closest is a int8 (top-1 0.8900, median 0.500 ms)" \
        in choice.message
    assert select.choose([entry("z-fp32", None, None, status="failed")], 1).chosen is None


def test_mark_sets_every_flag() -> None:
    entries = [dict(e) for e in ENTRIES]
    choice = select.mark(entries, 1.0)
    assert choice is not None and choice.chosen == "a-fp32"
    assert [e["id"] for e in entries if e["chosen"]] == ["a-fp32"]
    assert {e["id"] for e in entries if e["pareto"]} == {"a-fp32", "a-int8", "b-fp32", "c-fp32"}
    assert select.mark(entries, None) is None and not any(e["chosen"] for e in entries)


def _report(rows: list[dict]) -> dict:
    return {"schema": 1, "kind": "augkd-edge/bench", "environment": {"label": "orin"}, "results": rows}


def _row(model: str, median: float, batch: int = 1, backend: str = "trt", **extra) -> dict:
    return {"model": model, "backend": backend, "device": "cuda", "precision": "int8", "batch": batch,
            "latency_ms": {"median": median, "p90": median + 1, "p99": median + 2}, **extra}


def test_latency_from_matches_by_hash_then_name_and_reports_the_rest() -> None:
    entries = [entry("a-fp32", 0.9, 1.0), entry("a-int8", 0.89, 0.5), entry("b-fp32", 0.95, 3.0),
               entry("b-int8", None, None, status="failed")]
    rows = [
        _row("renamed-on-board.onnx", 7.0, backend="ort", model_sha256="h-a-fp32"),  # hash wins over name
        _row("a-int8.engine", 4.0),  # name: the stem of the sweep's models/a-int8.onnx
        _row("a-int8.onnx", 9.0, backend="ort"),  # same model on another backend: the sweep's backend wins
        _row("b-fp32.engine", 1.0, batch=8),  # wrong batch: not a match
        _row("b-fp32.engine", 1.0, error="out of memory"),  # failed cell: not a match
    ]
    unmatched = select.apply_report(entries, _report(rows), "board/report.json", batch=1, backend="trt")
    by_id = {e["id"]: e for e in entries}
    assert by_id["a-fp32"]["latency_ms"]["median"] == 7.0
    assert by_id["a-fp32"]["latency_source"]["matched_by"] == "sha256"
    assert by_id["a-int8"]["latency_ms"] == {"median": 4.0, "p90": 5.0, "p99": 6.0}
    assert by_id["a-int8"]["latency_source"]["matched_by"] == "name" and by_id["a-int8"]["backend"] == "trt"
    assert by_id["b-fp32"]["latency_ms"] is None  # not this machine's number either
    assert [u["id"] for u in unmatched] == ["b-fp32"]
    assert "b-fp32.*" in unmatched[0]["reason"]
    assert select.choose(entries, 5).chosen == "a-int8"


def test_latency_report_errors_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        select.load_bench_report(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not JSON"):
        select.load_bench_report(tmp_path / "bad.json")
    (tmp_path / "new.json").write_text(json.dumps({"schema": 2, "results": []}))
    with pytest.raises(UserError, match="upgrade"):
        select.load_bench_report(tmp_path / "new.json")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "report.json").write_text(json.dumps(_report([])))
    assert select.load_bench_report(tmp_path / "dir")["environment"]["label"] == "orin"


SETTINGS = {"method": "augkd", "preset": "quick", "seed": 0, "config_sha256": None, "distill_args": [],
            "export_args": [], "backend": "ort", "device": "cpu", "batch": 1, "threads": 1, "warmup": 1,
            "iters": 5, "latency_budget_ms": 1.0}


def test_records_round_trip_and_refuse_other_settings(tmp_path: Path) -> None:
    layout = records.Layout(tmp_path)
    records.write_record(layout, entry("a-fp32", 0.9, 1.0), SETTINGS)
    assert records.read_record(layout, "a-fp32", SETTINGS)["top1"] == 0.9
    assert records.read_record(layout, "a-int8", SETTINGS) is None
    with pytest.raises(UserError, match=r"method differ, e.g. method 'augkd' -> 'kd'"):
        records.read_record(layout, "a-fp32", {**SETTINGS, "method": "kd"})
    # the budget and the latency report only re-decide: they may change between runs
    assert records.read_record(layout, "a-fp32", {**SETTINGS, "latency_budget_ms": 9.0}) is not None


def test_renderings_hold_the_table_the_choice_and_an_embedded_plot() -> None:
    entries = [dict(e) for e in ENTRIES]
    choice = select.mark(entries, 1.0)
    doc = records.document({**SETTINGS, "students": ["a"], "precisions": ["fp32"]}, "augkd-edge sweep ...",
                           {"os": "x"}, entries, choice.message, [], None)
    md = render.markdown(doc)
    assert "| a | fp32 | ort | 1 | 0.9000 | 1.000 |" in md and "**yes**" in md
    assert "chosen for the 1 ms budget: a fp32" in md and "Failed: e-fp32: boom" in md
    png = render.plot_png(doc)
    assert png is not None and png.startswith(b"\x89PNG")
    page = render.html_page(doc, png)
    assert "data:image/png;base64," in page and "<table>" in page and "http" not in page.split("<style>")[0]


@pytest.mark.parametrize("args, message", [
    (["--students", " , "], "--students: empty list"),
    (["--students", "resnet81"], "--students resnet81: not a torchvision classification model; did you mean "
                                 "resnet18"),
    (["--students", "resnet18,resnet18"], "--students lists resnet18 more than once"),
    (["--students", "resnet18", "--precision", "fp16"], "--precision fp16: unknown; choose from fp32, int8"),
    (["--students", "resnet18", "--precision", ""], "--precision: empty list"),
    (["--students", "resnet18", "--latency-from", "nope/report.json"], "--latency-from nope/report.json: no such "
                                                                      "file"),
    (["--students", "resnet18", "--method", "magic"], "--method magic: unknown; choose from augkd"),
    (["--students", "resnet18", "--distill-args", "--out x"], "--distill-args: --out is set by the sweep itself"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["sweep", *args, "--out", str(tmp_path / "sw")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augkd-edge: error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "sw").exists()


def test_a_failed_child_is_named_by_its_error_line(tmp_path: Path) -> None:
    from augkd_edge.sweep.runner import _last_error

    log = tmp_path / "x.log"
    log.write_text("$ python -m augkd_edge.cli export ...\nwrote a\nTraceback (most recent call last):\n"
                   "  File \"x.py\", line 1\nRuntimeError: Kernel size can't be greater than actual input size\n")
    assert _last_error(log) == "RuntimeError: Kernel size can't be greater than actual input size"
    log.write_text("step 1\nstep 2 went wrong\n")
    assert _last_error(log) == "step 2 went wrong"
    assert _last_error(tmp_path / "missing.log") == "no log"


def test_the_candidate_model_is_the_precisions_onnx_or_its_engine(tmp_path: Path) -> None:
    from augkd_edge.sweep.runner import Plan, _model_file

    files = {"student.onnx": {}, "student.int8.onnx": {}, "build_engine.sh": {}, "student.int8.engine": {}}
    plan = Plan(records.Layout(tmp_path), "augkd", "quick", 0, None, None, (), (), "ort", "cpu", 1, 1, 1, 1)
    assert _model_file(plan, {"files": files}, "int8") == ("student.int8.onnx", None)
    assert _model_file(plan, {"files": files}, "fp32") == ("student.onnx", None)
    trt = Plan(**{**plan.__dict__, "backend": "trt"})
    assert _model_file(trt, {"files": files}, "int8") == ("student.int8.onnx", "student.int8.engine")
    del files["student.int8.engine"]  # no TensorRT where the sweep ran: the bundle only
    assert _model_file(trt, {"files": files}, "int8") == ("student.int8.onnx", None)


def test_equal_accuracy_from_float32_and_float64_counts_compares_equal() -> None:
    fp32 = records.entry_from(entry("m-fp32", 0.9168184399604797, 0.2))  # 1510/1647 as PyTorch's float32
    int8 = records.entry_from(entry("m-int8", 0.9168184578020644, 1.2))  # the same count in float64
    assert fp32["top1"] == int8["top1"]
    entries = [fp32, int8]
    select.mark(entries, 5.0)
    assert [e["id"] for e in entries if e["pareto"]] == ["m-fp32"] and fp32["chosen"]
