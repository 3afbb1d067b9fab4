"""End-to-end ``augkd-edge distill`` on tiny settings: every method, resume, user errors.

Sizes are cut to a few steps per stage; accuracy is not checked here (see
benchmarks/accuracy.py), only that each method runs through the real stack
and writes what it promises.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from augkd_edge.cli import main
from augkd_edge.config import METHODS

TINY = [
    "--teacher-arch", "resnet18", "--teacher-epochs", "1", "--teacher-max-images", "300",
    "--df-epochs", "1", "--df-iters-per-epoch", "2", "--df-batch-size", "8", "--df-val-samples", "16", "--df-k", "2",
    "--anchor-epochs", "1", "--anchor-batch-size", "32",
    "--mixup-epochs", "2", "--mixup-batch-size", "32",
    "--shots", "3", "--eval-per-class", "2", "--quiet",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _distill(args: list[str]) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, ["distill", *args], catch_exceptions=False)


@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].needs_pool])  # those: test_unlabelled.py
def test_every_method_runs_and_reports(method: str, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / method
    res = _distill([*TINY, "--method", method, "--cache-dir", str(cache_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == 4 and results["method"] == method and results["unlabelled"] is None
    for split in ("eval", "test"):
        assert 0.0 <= results[split]["top1"] <= results[split]["top3"] <= results[split]["top5"] <= 1.0
    assert results["split_sizes"] == {"train": 30, "eval": 20, "test": 1797 - 50}
    assert 0.0 <= results["teacher"]["student_test"]["top1"] <= 1.0
    assert f"[{method}]" in res.output and "top-1" in res.output
    report = (out / "report.md").read_text()
    assert "What the teacher knows about the student domain" in report
    if method in ("augkd", "auto"):
        for name in ("generator", "anchors", "mixup", "curves", "student_samples"):
            assert (out / "images" / f"{name}.png").stat().st_size > 1000
    _check_health_fields(method, results, out, res.output, report)
    from augkd_edge.rundir import load_student, split_arrays

    model, meta = load_student(out)
    images, labels = split_arrays(meta, "test")
    assert images.shape == (1747, 3, 32, 32) and meta.extra["method"] == method


def _check_health_fields(method: str, results: dict, out: Path, output: str, report: str) -> None:
    """Schema 3's health sections: present where the method has the module, consistent with metrics.jsonl."""
    data_free = method in ("augkd", "dfkd", "dfkd-finetune", "no-anchor", "no-mixup", "auto")
    anchored = method in ("augkd", "no-mixup", "auto")
    assert (results["auto"] is not None) == (method == "auto")
    assert (results["anchor_share"] is not None) == anchored
    assert (results["reconstruction"] is not None) == data_free and (results["generator"] is not None) == data_free
    assert (results["anchor"] is not None) == anchored
    assert isinstance(results["health_problems"], list)
    if data_free:
        assert 0.0 <= results["reconstruction"]["teacher_top1"] <= 1.0
        assert "Module health" in output and "Are Modules 1 and 2 doing their job?" in report
        assert results["teacher_domain_energy_source"] == "teacher-domain eval split"
    if anchored:
        anchor = results["anchor"]
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in lines if r["stage"] == "anchor"]
        best = min(epochs, key=lambda r: r["select"])  # the engine keeps the best-selected epoch
        n_eval = results["split_sizes"]["eval"]
        # the same anchors, evaluated by the stage (folded teacher) and by the health check: at most one flip
        assert abs(best["eval_anchor_teacher_top1"] - anchor["teacher_top1"]) <= 1.0 / n_eval + 1e-9
        assert abs(best["eval_anchor_max_class_share"] - anchor["max_class_share"]) <= 1.0 / n_eval + 1e-9
        assert anchor["energy_mean"] == pytest.approx(best["eval_energy"], abs=0.05)
        assert anchor["teacher_domain_energy_mean"] < 0 and "anchors: teacher top-1" in output
        assert 0.0 <= anchor["fidelity"] <= 1.0 and 0.0 <= results["reconstruction"]["fidelity"] <= 1.0
        assert "fidelity of anchors" in report and "anchor share in Module 3" in output
        _check_anchor_share_reached_module_3(results, lines)
    for problem in results["health_problems"]:
        assert problem in report and problem.split(":")[0] in output


def _check_anchor_share_reached_module_3(results: dict, lines: list[dict]) -> None:
    """The curriculum's start in metrics.jsonl is the one results.json's health and anchor share give."""
    from augkd_edge.config import DistillConfig
    from augkd_edge.fidelity import anchor_share, kd_balance
    from augkd_edge.losses import stage_factor
    from augkd_edge.method.mixup import reliability

    cfg = DistillConfig.from_dict(results["settings"])
    m = cfg.mixup
    w = anchor_share(results["anchor"]["fidelity"], m.fidelity_floor, m.fidelity_full) * kd_balance(m.u)
    assert results["anchor_share"] == pytest.approx(w)
    mixup = [r for r in lines if r["stage"] == "mixup"]
    if results["method"] == "no-mixup" or not mixup:
        return
    k = 10  # the digits classes
    r_anchor = w * reliability(results["anchor"]["teacher_top1"], k) + (1 - w) * reliability(
        results["reconstruction"]["teacher_top1"], k)
    b = 1.0 - (1.0 - m.b) * r_anchor
    assert mixup[0]["f"] == pytest.approx(stage_factor(0, m.epochs, m.a, b, m.schedule), abs=1e-6)


def test_resume_refuses_changed_config_and_existing_run(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    assert _distill([*TINY, "--method", "no-kd", "--cache-dir", str(cache_dir), "--out", str(out)]).exit_code == 0
    res = CliRunner().invoke(main, ["distill", *TINY, "--method", "no-kd", "--cache-dir", str(cache_dir),
                                    "--out", str(out)])
    assert res.exit_code == 2 and "already holds a run" in res.output
    res = CliRunner().invoke(main, ["distill", *TINY, "--method", "no-kd", "--mixup-tau", "3", "--cache-dir",
                                    str(cache_dir), "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "mixup.tau" in res.output


def test_bad_target_is_one_line_exit_2(tmp_path: Path, cache_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "augkd_edge.cli", "distill", "--target", str(tmp_path / "missing"), "--cache-dir",
         str(cache_dir), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(tmp_path / "missing") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_kill_during_module_1_then_resume(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "augkd_edge.cli", "distill", *TINY, "--df-epochs", "4", "--cache-dir",
            str(cache_dir), "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "ckpt" / "data_free.ckpt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run ended before Module 1 wrote a checkpoint"
    res = _distill([*TINY, "--df-epochs", "4", "--cache-dir", str(cache_dir), "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    epochs = [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["stage"] == "data_free"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4, f"Module 1 epochs redone or lost: {epochs}"
    assert json.loads((out / "results.json").read_text())["method"] == "augkd"


def test_every_hyperparameter_is_a_documented_flag() -> None:
    import dataclasses

    from augkd_edge.cli.distill import HELP, SECTIONS

    fields = {f"{section}.{f.name}" for section, cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    assert fields == set(HELP), f"undocumented: {fields - set(HELP)}; stale: {set(HELP) - fields}"
    res = CliRunner().invoke(main, ["distill", "--help"])
    assert "--mixup-tau" in res.output and "--df-lr-g" in res.output and "--anchor-lambda-ce" in res.output


def test_config_file_values_survive_unset_flags(tmp_path: Path, cache_dir: Path) -> None:
    """--config's method/seed are kept unless the flag is given (click defaults must not override them)."""
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"method": "no-kd", "seed": 3}))
    out = tmp_path / "run"
    res = _distill([*TINY, "--config", str(cfg), "--cache-dir", str(cache_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "no-kd" and results["seed"] == 3
