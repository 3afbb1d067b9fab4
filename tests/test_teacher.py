"""``augkd-edge teacher``: trains, reports its own-domain and cross-domain accuracy, resumes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from augkd_edge.cli import main
from augkd_edge.models.loading import load_model_file


def test_teacher_command_writes_model_and_report(tmp_path: Path) -> None:
    out = tmp_path / "t"
    args = ["teacher", "--data", "digits:optdigits", "--arch", "resnet18", "--epochs", "2", "--batch-size", "64",
            "--also-eval", "digits:mnist", "--out", str(out)]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["split_sizes"]["train"] + results["split_sizes"]["eval"] == 1797
    assert 350 <= results["split_sizes"]["eval"] <= 370  # stratified 20%
    assert results["eval"]["top1"] > 0.5, "two epochs on optdigits should clearly beat chance"
    assert set(results["also_eval"]) == {"digits:mnist"}
    report = (out / "report.md").read_text()
    assert "`digits:optdigits` (own domain)" in report and "`digits:mnist` (other domain)" in report
    model, meta = load_model_file(out / "teacher.pt")
    assert meta.arch == "resnet18" and meta.extra["data"] == "digits:optdigits"
    assert len(meta.extra["splits"]["eval"]) == results["split_sizes"]["eval"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # a finished run is not redone on a second call
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    assert (out / "metrics.jsonl").read_text().splitlines() == lines


def test_teacher_help_explains_every_option() -> None:
    res = CliRunner().invoke(main, ["teacher", "--help"])
    for flag in ("--data", "--arch", "--epochs", "--also-eval", "--resume", "--out", "--device", "--lr"):
        assert flag in res.output
