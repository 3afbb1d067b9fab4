"""benchmarks/kernels.py: its CPU dry run exercises every code path; without a GPU it refuses to run.

The real measurement needs a CUDA GPU (none in CI); the dry run checks the
script's wiring (case building, correctness check of each fused op against
eager, torch.compile path with the eager backend, the Module 3 step with kernels
on and off, JSON + Markdown output) at tiny sizes under Triton's interpreter.
It runs in a subprocess because it must set TRITON_INTERPRET before triton is
imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AUGKD_KERNELS", "TRITON_INTERPRET")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_dry_run_writes_a_complete_report(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="triton is not installed")
    proc = _run("--dry-run", "--dtypes", "fp32", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "kernels-dry-run.json").read_text())
    assert report["schema"] == "augkd-edge/kernels-bench/1" and report["dry_run"] is True
    ops = {(c["op"], c["mode"]) for c in report["cases"]}
    assert ops == {("latent_mix", "fwd"), ("latent_mix", "fwd+bwd"), ("mix_normalize", "fwd"),
                   ("energy_score", "fwd+bwd"), ("distill_loss", "fwd+bwd")}
    for case in report["cases"]:
        r = case["results"]
        assert r["max_abs_diff"] < 1e-4, case  # fused agrees with eager before anything is timed
        assert {"fused", "eager", "compile"} <= r.keys() and r["fused"]["ms"] > 0 and case["bytes"] > 0
        assert r["meets_target"] is None, "interpreter timings must not be judged against the GPU target"
    (step,) = report["train_step"]
    assert step["kernels_on"]["ms"] > 0 and step["kernels_off"]["ms"] > 0
    md = (tmp_path / "kernels-dry-run.md").read_text()
    assert "DRY RUN" in md and "| distill_loss | fwd+bwd |" in md and "Module 3 training step" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_without_gpu_it_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    proc = _run("--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not any(tmp_path.iterdir())
