"""benchmarks/accuracy.py: aggregation, overrides and the Markdown table (pure logic)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "accuracy_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
)
acc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(acc)


def test_summarise_mean_and_sample_std() -> None:
    rows = [{"seed": s, "top1": v, "top3": 1.0, "top5": 1.0, "eval_top1": v, "wall_s": 1.0}
            for s, v in enumerate([0.8, 0.9, 1.0])]
    out = acc.summarise({"augkd": rows})["augkd"]
    assert out["n_seeds"] == 3
    assert out["top1_mean"] == pytest.approx(0.9)
    assert out["top1_std"] == pytest.approx(0.1)  # sample std (ddof=1) of 0.8, 0.9, 1.0
    assert acc.summarise({"kd": rows[:1]})["kd"]["top1_std"] == 0.0


def test_overrides_nest_and_parse_json_values() -> None:
    assert acc._overrides(["mixup.tau=4", "shots=5", "mixup.schedule=step", "teacher.max_images=null"]) == {
        "mixup": {"tau": 4, "schedule": "step"}, "shots": 5, "teacher": {"max_images": None}}
    with pytest.raises(SystemExit):
        acc._overrides(["mixup.tau"])
    assert acc._merge({"mixup": {"tau": 10, "u": 0.5}}, {"mixup": {"tau": 4}}) == {"mixup": {"tau": 4, "u": 0.5}}


def test_markdown_ranks_methods_and_shows_command() -> None:
    row = {"seed": 0, "top1": 0.5, "top3": 0.7, "top5": 0.9, "eval_top1": 0.5, "wall_s": 3.0}
    result = {
        "command": "python benchmarks/accuracy.py --seeds 0", "preset": "quick", "wall_s": 60.0, "machine": "x86_64",
        "settings": [{"name": "a->b", "config": {}, "teacher": {"top1_on_student_test": 0.7, "own_eval_top1": 0.97},
                      "methods": acc.summarise({"kd": [row], "augkd": [{**row, "top1": 0.6}]})}],
    }
    md = acc.markdown(result)
    assert "python benchmarks/accuracy.py --seeds 0" in md
    assert md.index("| augkd |") < md.index("| kd |")
    assert "| *teacher* | 0.7000" in md and not math.isnan(result["settings"][0]["methods"]["kd"]["top1_mean"])


def test_eval_selection_uses_eval_not_test() -> None:
    def setting(name: str, eval_top1: float, test_top1: float) -> dict:
        row = {"seed": 0, "top1": test_top1, "top3": 1.0, "top5": 1.0, "eval_top1": eval_top1, "wall_s": 1.0}
        return {"name": name, "methods": acc.summarise({"kd": [row]})}

    chosen = acc.eval_selected([setting("u=0.5", 0.9, 0.5), setting("u=0.8", 0.8, 0.99)])
    assert chosen["kd"]["setting"] == "u=0.5" and chosen["kd"]["top1_mean"] == 0.5
    assert acc._shared_key({"shots": 10, "mixup": {"u": 0.5}}, "quick") == acc._shared_key(
        {"shots": 10, "mixup": {"u": 0.8}}, "quick")
    assert acc._shared_key({"shots": 10}, "quick") != acc._shared_key({"shots": 5}, "quick")
