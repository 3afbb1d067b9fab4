"""benchmarks/device_check.py: the prepared GPU check works before any GPU is lent.

The dry run takes every step of the GPU check on CPU at tiny sizes (about a
minute on 2 cores): the kernels' tests under Triton's interpreter, both kernel
benchmark runs, the throughput benchmark, a real distill with --amp bf16, bench,
and torchrun with one process (gloo), and checks the folder it writes against
the device tool's limits. The other tests check, in-process and in seconds, what
a GPU run relies on and a passing dry run cannot show: a command over its limit
is killed with its children, the deadline holds, a failing or crashing step is
recorded and the next one runs, a step whose packages are missing is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in ("AUGKD_KERNELS", "TRITON_INTERPRET")},
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_dry_run_takes_every_step_and_writes_what_the_device_can_return(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="triton is not installed")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", str(out)], capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dc = _module()
    assert sorted(p.name for p in out.iterdir()) == sorted(dc.OUTPUT_FILES) and len(dc.OUTPUT_FILES) <= 8
    assert dc.check_outputs(out) == []  # at most 8 plain names, each under 16 MiB

    steps = json.loads((out / "steps.json").read_text())
    assert steps["schema"] == "augkd-edge/device-check/1" and steps["dry_run"] is True
    assert [s["name"] for s in steps["steps"]] == ["pytest", "kernels", "throughput", "distill", "bench", "torchrun"]
    for step in steps["steps"]:
        assert step["status"] == "pass" and step["headline"], step
        assert all(c["rc"] == 0 and not c["timed_out"] and c["limit_s"] > 0 for c in step["commands"]), step
    # the steps ran this tree through the scratch PYTHONPATH folder, not an installed copy
    assert Path(steps["probe"]["package"]).parent.parent.name == "src"
    assert steps["wall_s"] < steps["budget_s"]
    pytest_step = steps["steps"][0]
    assert pytest_step["details"]["counts"]["passed"] >= 4 and " passed" in pytest_step["headline"]

    kernels = json.loads((out / "kernels.json").read_text())
    assert kernels["schema"] == "augkd-edge/kernels-bench/1"
    assert {c["dtype"] for c in kernels["cases"]} == {"fp32", "bf16"}
    assert [t["dtype"] for t in kernels["train_step"]] == ["fp32", "bf16"]
    assert [r["dtype"] for r in kernels["device_check_runs"]] == ["fp32", "bf16"]

    throughput = json.loads((out / "throughput.json").read_text())
    report = throughput["amp"]["bf16"]
    assert report["schema"] == 2 and report["amp"] == "bf16" and set(report["stages"]) == {"data_free", "anchor", "mixup"}

    for name in ("distill.json", "torchrun.json"):
        record = json.loads((out / name).read_text())
        assert record["rc"] == 0 and set(record["stage_wall_s"]) == {"teacher", "data_free", "anchor", "mixup"}
        results = record["results"]
        assert results["schema"] >= 1 and results["processes"] == 1 and 0 <= results["test"]["top1"] <= 1
        assert results["settings"]["amp"] == "bf16"
    assert "--nproc-per-node 1" in json.loads((out / "torchrun.json").read_text())["command"]

    bench = json.loads((out / "bench-report.json").read_text())
    assert bench["schema"] == 1 and bench["kind"] == "augkd-edge/bench"
    assert [(r["batch"], r["precision"], r["cuda_graphs"]) for r in bench["results"]] == [(1, "fp32", False),
                                                                                          (2, "fp32", False)]
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and summary.count("| PASS |") == 6 and "6/6 steps passed" in summary
    log = (out / "log.txt").read_text()
    commands = [c["name"] for s in steps["steps"] for c in s["commands"]]
    assert len(commands) == 7  # pytest, kernels x2, throughput, distill, bench, torchrun
    assert re.findall(r"^===== ([\w-]+): rc 0, ", log, re.M) == commands  # each command's output, then its end


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert not out.exists()


def test_a_command_over_its_limit_is_killed_with_its_children_and_the_deadline_holds(tmp_path: Path) -> None:
    dc = _module()
    work = tmp_path / "work"
    work.mkdir()
    check = dc.Check(tmp_path, work, dry_run=True, budget_s=30, env=dict(os.environ))
    pid_file = work / "child.pid"
    slow = [sys.executable, "-c",
            "import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n"]
    t0 = time.monotonic()
    ran = check.run("slow", slow, limit_s=3)
    assert ran.timed_out and time.monotonic() - t0 < 20
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()

    quick = check.run("quick", [sys.executable, "-c", "print('after the time-out')"], limit_s=30)
    assert quick.rc == 0 and not quick.timed_out and "after the time-out" in quick.output

    check.deadline = time.monotonic() + 5
    check.reserve_after = 10  # later steps keep back more than is left: this command never starts
    late = check.run("late", [sys.executable, "-c", "print(1)"], limit_s=30)
    assert late.rc is None and late.timed_out and "no time left" in late.output
    check.log.close()
    log = (tmp_path / "log.txt").read_text()
    assert "(TIMED OUT)" in log and "after the time-out" in log


def test_a_failing_step_is_a_result_and_the_next_steps_still_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dc = _module()

    def crashes(check, step):
        raise RuntimeError("boom")

    def fails(check, step):
        ran = check.run("false", [sys.executable, "-c", "import sys; sys.exit(3)"], limit_s=30)
        step.commands.append(ran)
        step.headline = f"rc {ran.rc}"

    def passes(check, step):
        step.status, step.headline = "pass", "fine"

    monkeypatch.setattr(dc, "PROBED", (*dc.PROBED, "no_such_module_for_device_check"))
    monkeypatch.setattr(dc, "STEPS", [
        ("pytest", "crashes", crashes, ()), ("kernels", "fails", fails, ()),
        ("throughput", "needs a missing module", passes, ("no_such_module_for_device_check",)),
        ("distill", "passes", passes, ()),
    ])
    out = tmp_path / "out"
    assert dc.main(["--dry-run", str(out)]) == 1
    steps = json.loads((out / "steps.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["fail", "fail", "skip", "pass"]
    assert "RuntimeError: boom" in steps[0]["headline"] and steps[1]["commands"][0]["rc"] == 3
    assert "Traceback" in (out / "log.txt").read_text()
    assert "no_such_module_for_device_check" in steps[2]["headline"]
    summary = (out / "summary.md").read_text()
    assert "| crashes | FAIL |" in summary and "| passes | PASS |" in summary and "1/4 steps passed" in summary


def test_the_scratch_package_mirrors_pyproject_package_dir() -> None:
    tomllib = pytest.importorskip("tomllib")
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    outside = {k.split(".", 1)[1]: v for k, v in mapping.items() if k.startswith("augkd_edge.") and
               not v.startswith("augkd_edge")}
    _module()  # loads device_core.py, where the scratch layout is defined, beside it
    assert outside == sys.modules["device_core"].PACKAGE_DIR
