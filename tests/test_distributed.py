"""Data-parallel training under torchrun: 2 CPU processes with gloo, every module, the teacher, a baseline.

The launches are real (``python -m torch.distributed.run``); each takes ~10-20 s
on 2 cores. What a single process and two must share exactly is checked on a
BatchNorm-free toy through the real engine (tests/scripts/ddp_exact.py); the
full pipeline (BatchNorm everywhere) is checked for completing cleanly with
rank-0-only outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from augkd_edge.distributed import Dist

SCRIPTS = Path(__file__).parent / "scripts"
TINY = [
    "--teacher-arch", "resnet18", "--teacher-epochs", "1", "--teacher-max-images", "300",
    "--df-epochs", "2", "--df-iters-per-epoch", "2", "--df-batch-size", "8", "--df-val-samples", "16", "--df-k", "2",
    "--anchor-epochs", "2", "--anchor-batch-size", "16",
    "--mixup-epochs", "2", "--mixup-batch-size", "16",
    "--shots", "3", "--eval-per-class", "2", "--quiet", "--device", "cpu", "--checkpoint-every", "1",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


# ---------------------------------------------------------------- pure logic of the shares
@pytest.mark.parametrize("n,world", [(7, 2), (8, 2), (10, 3), (2, 2), (129, 4)])
def test_shares_cover_the_batch_once_and_weights_average_to_one(n: int, world: int) -> None:
    parts = [Dist(rank=r, world=world).bounds(n) for r in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    weights = [Dist(rank=r, world=world).weight(n) for r in range(world)]
    assert sum(weights) / world == pytest.approx(1.0)
    x = torch.arange(n)
    assert torch.equal(torch.cat([Dist(rank=r, world=world).shard(x) for r in range(world)]), x)


def test_single_process_is_untouched() -> None:
    single = Dist()
    x = torch.arange(5)
    assert single.shard(x) is x and single.weight(5) == 1.0 and not single.enabled and single.is_main


def test_too_small_batch_for_the_processes_is_a_user_error() -> None:
    from augkd_edge.errors import UserError

    with pytest.raises(UserError, match="cannot be shared by 2 processes"):
        Dist(rank=0, world=2).check_batch(3, "training batch")


# ---------------------------------------------------------------- real 2-process jobs
def test_two_processes_train_like_one_where_the_math_allows(tmp_path: Path) -> None:
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    single = subprocess.run([sys.executable, str(SCRIPTS / "ddp_exact.py"), str(one)], capture_output=True,
                            text=True, env=_env())
    assert single.returncode == 0, single.stderr
    proc = _torchrun(str(SCRIPTS / "ddp_exact.py"), str(two))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a["world"] == 1 and b["world"] == 2
    for key in a["state"]:
        torch.testing.assert_close(b["state"][key], a["state"][key], rtol=1e-5, atol=1e-6, msg=key)
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["eval_top1"] == ha["eval_top1"]
        assert hb["eval_loss"] == pytest.approx(ha["eval_loss"], rel=1e-5)


def test_distill_every_module_under_torchrun_gloo(tmp_path: Path) -> None:
    """Teacher training, Module 1, 2, 3 in 2 processes; then a baseline (kd) reusing the cached teacher."""
    cache = tmp_path / "cache"
    for method in ("augkd", "kd"):
        out = tmp_path / method
        proc = _torchrun("-m", "augkd_edge.cli", "distill", *TINY, "--method", method, "--out", str(out),
                         "--cache-dir", str(cache))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "abort" not in proc.stderr.lower()
        results = json.loads((out / "results.json").read_text())
        assert results["processes"] == 2 and results["method"] == method
        # rank 0 alone logs: one line per stage epoch, one result table
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        stages = ["data_free", "anchor", "mixup"] if method == "augkd" else ["kd"]
        for stage in stages:
            assert [r["epoch"] for r in records if r["stage"] == stage] == [1, 2], stage
            ckpt = torch.load(out / "ckpt" / f"{stage}.ckpt", weights_only=True)
            assert ckpt["world"] == 2 and len(ckpt["rng_ranks"]) == 2 and ckpt["done"]
        assert proc.stdout.count("results: ") == 1
    teacher_dirs = list((cache / "teachers").iterdir())
    assert len(teacher_dirs) == 1
    teacher = json.loads((teacher_dirs[0] / "results.json").read_text())
    assert teacher["processes"] == 2


def test_teacher_command_under_torchrun(tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    proc = _torchrun("-m", "augkd_edge.cli", "teacher", "--data", "digits:optdigits", "--arch", "resnet18",
                     "--epochs", "1", "--input-size", "16", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["processes"] == 2
    assert proc.stdout.count("eval top-1") == 1  # rank 0 alone reports
    from augkd_edge.models.loading import load_model_file

    model, meta = load_model_file(out / "teacher.pt")
    assert meta.arch == "resnet18"


def test_resume_with_another_process_count_is_refused(tmp_path: Path) -> None:
    """A stage interrupted in a 2-process run cannot continue in 1 process (other batch shares)."""
    out = tmp_path / "run"
    proc = _torchrun(str(SCRIPTS / "ddp_exact.py"), str(out / "w.pt"))
    assert proc.returncode == 0, proc.stderr
    ckpt_path = (out / "w.pt").with_suffix(".ckpt")
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt.update(done=False, epoch=1, step=2)
    torch.save(ckpt, ckpt_path)
    from torch import nn

    from augkd_edge.engine import fit
    from augkd_edge.errors import UserError
    from augkd_edge.student_stage import StudentStage

    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 4))
    stage = StudentStage("toy", student, torch.rand(8, 3, 8, 8), torch.arange(8) % 4, torch.rand(4, 3, 8, 8),
                         torch.arange(4), mean=(0.5,) * 3, std=(0.25,) * 3, epochs=3, batch_size=7, lr=0.01,
                         weight_decay=0.0, seed=1)
    with pytest.raises(UserError, match="2 process"):
        fit(stage, 3, ckpt_path, progress=False)


def test_torchrun_without_out_is_a_user_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from augkd_edge.cli import main

    res = CliRunner().invoke(main, ["distill", "--quiet"], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert res.exit_code == 2 and "under torchrun give --out" in res.output


def test_a_one_process_torchrun_job_still_joins_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """`torchrun --nproc-per-node 1` initialises and leaves the backend (NCCL on one GPU: device_check.py)."""
    import socket

    import torch.distributed as tdist

    from augkd_edge import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not distributed.launched_by_torchrun()  # WORLD_SIZE 1 from anything but torchrun: one plain process
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    assert distributed.launched_by_torchrun()
    with distributed.session(torch.device("cpu")) as dist:
        assert tdist.is_initialized() and tdist.get_world_size() == 1 and dist.backend == "gloo"
        assert not dist.enabled and dist.is_main  # one rank: no sharding, no DDP wrapper
    assert not tdist.is_initialized()
