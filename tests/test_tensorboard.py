"""``distill --tensorboard DIR`` (issue 23, item 4): real event files read back with tensorboard's reader.
Resume without duplicate steps is checked under SIGKILL in ``tests/test_resume.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard", reason="tensorboard is the optional extra augkd-edge[tensorboard]")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from augkd_edge.tensorboard_log import tag  # noqa: E402
from test_hostile import TINY, cli, export_archive, image_folder, refused, tiny_net  # noqa: E402


def test_tags_group_the_metrics_jsonl_keys() -> None:
    assert [tag(k) for k in ("train_loss", "eval_top1", "lr_opt_g", "select", "f")] == [
        "train/loss", "eval/top1", "lr/opt_g", "select", "f"]


def test_every_stage_metric_and_the_report_images_are_events(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data")
    teacher = export_archive(tmp_path / "two.pt2", model=tiny_net(2))
    out, tb = tmp_path / "r", tmp_path / "tb"
    res = cli("distill", "--teacher", teacher, "--target", data, "--method", "augkd", *TINY,
              "--mixup-epochs", "3", "--out", out, "--tensorboard", tb)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"data_free", "anchor", "mixup"}
    for stage in ("data_free", "anchor", "mixup"):
        acc = EventAccumulator(str(tb / stage))
        acc.Reload()
        rows = [r for r in records if r["stage"] == stage]
        expected = {tag(k) for r in rows for k, v in r.items() if k not in ("stage", "epoch")
                    and isinstance(v, (int, float))}
        assert set(acc.Tags()["scalars"]) == expected, stage
        assert any(t.startswith("lr/") for t in expected), f"{stage}: no learning rate logged"
        for key in ("select",):
            assert [(e.step, e.value) for e in acc.Scalars(key)] == [
                (r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows]
    acc = EventAccumulator(str(tb / "report"), size_guidance={"images": 0})
    acc.Reload()
    pictures = {p.stem for p in (out / "images").glob("*.png")}
    assert pictures and set(acc.Tags()["images"]) == pictures


def test_missing_tensorboard_is_one_line_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    data = image_folder(tmp_path / "data")
    teacher = export_archive(tmp_path / "two.pt2", model=tiny_net(2))
    refused(cli("distill", "--teacher", teacher, "--target", data, *TINY, "--out", tmp_path / "r",
                "--tensorboard", tmp_path / "tb"), "pip install 'augkd-edge[tensorboard]'")
    assert not (tmp_path / "r" / "metrics.jsonl").exists() and not (tmp_path / "tb").exists()
