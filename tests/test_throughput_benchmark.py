"""benchmarks/throughput.py end to end on small settings: the report it commits is complete and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_report_schema_and_arithmetic(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--batch", "8", "--teacher", "resnet18",
         "--iters", "2", "--warmup", "0", "--label", "t", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "throughput-t.json").read_text())
    assert report["schema"] == 2 and report["batch"] == 8 and report["amp"] == "off"
    assert set(report["machine_gflops"]) == {"sgemm", "conv"}
    for stage, row in report["stages"].items():
        assert row["steps"] == 2
        assert row["images_per_s"] == row["images_per_step"] / row["s_per_step_median"]
        assert row["s_per_step_min"] <= row["s_per_step_median"]
        assert row["gflop_per_step"] > 0
        assert abs(sum(row["time_shares"].values()) - 1.0) < 1e-6, stage
    from augkd_edge.config import DataFreeConfig

    # 1 generator step + k student/encoder steps, each of the batch
    assert report["stages"]["data_free"]["images_per_step"] == 8 * (1 + DataFreeConfig().k)
    md = (tmp_path / "throughput-t.md").read_text()
    assert "| data_free |" in md and "ratio" in md and "Share of one step's CPU time" in md
