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
    # the pool shares Module 2 unless Module 2 learns anchors on it (or its labels train)
    pooled = {"shots": 10, "unlabelled": "digits:optdigits", "pool": {"max_images": 100}}
    assert acc._shared_key(pooled, "quick") == acc._shared_key({"shots": 10}, "quick")
    with_anchors = {**pooled, "pool": {"anchor_images": 50}}
    assert acc._shared_key(with_anchors, "quick") != acc._shared_key({"shots": 10}, "quick")
    assert acc._shared_key(with_anchors, "quick") != acc._shared_key({**with_anchors, "unlabelled": "/cam"}, "quick")


def test_runs_end_to_end_on_tiny_settings_then_skips_finished_runs(tmp_path: Path) -> None:
    """The real pipeline under the benchmark: two methods sharing Module 1, health rows, verdict, a rerun that skips."""
    sets = ["teacher_arch=\"resnet18\"", "teacher.epochs=1", "teacher.max_images=300", "data_free.epochs=1",
            "data_free.iters_per_epoch=2", "data_free.batch_size=8", "data_free.val_samples=16", "data_free.k=2",
            "anchor.epochs=1", "mixup.epochs=2", "shots=3", "eval_per_class=2"]
    argv = ["--methods", "augkd,no-anchor", "--seeds", "0", "--work", str(tmp_path / "work"),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    for pair in sets:
        argv += ["--set", pair]
    assert acc.main(argv) == 0
    result = __import__("json").loads((tmp_path / "out" / "accuracy.json").read_text())
    methods = result["settings"][0]["methods"]
    row = methods["augkd"]["per_seed"][0]
    assert {"anchor_teacher_top1", "anchor_max_class_share", "recon_teacher_top1"} <= set(row)
    assert "anchor_teacher_top1" not in methods["no-anchor"]["per_seed"][0]
    md = (tmp_path / "out" / "accuracy.md").read_text()
    assert "AuG-KD - no-anchor" in md and "health per seed" in md
    stamp = (tmp_path / "work" / "mnist-optdigits" / "seed0" / "augkd" / "results.json").stat().st_mtime_ns
    assert acc.main(argv) == 0  # finished runs are read back, not redone
    assert (tmp_path / "work" / "mnist-optdigits" / "seed0" / "augkd" / "results.json").stat().st_mtime_ns == stamp


def test_verdict_checks_the_targets_on_means() -> None:
    m = {k: {"top1_mean": v} for k, v in {"augkd": 0.93, "no-anchor": 0.90, "no-kd": 0.91, "kd": 0.92}.items()}
    lines = acc.verdict(m)
    assert lines[0].startswith("- AuG-KD - no-anchor: +3.00 points") and lines[0].endswith("PASS")
    assert "(kd): +1.00 points" in lines[1] and lines[1].endswith("PASS")
    assert lines[2].endswith("PASS")
    m["no-anchor"]["top1_mean"] = 0.936  # AuG-KD 0.6 points below its ablation: over the 0.5-point allowance
    m["no-kd"]["top1_mean"] = 0.945  # the student alone is better by 1.5 points: over the 1-point allowance
    lines = acc.verdict(m)
    assert lines[0].endswith("MISS") and lines[1].endswith("MISS") and lines[2].endswith("MISS")
    m["no-anchor"]["top1_mean"], m["no-kd"]["top1_mean"] = 0.934, 0.939  # within both allowances, below no-kd
    lines = acc.verdict(m)
    assert lines[0].endswith("PASS") and lines[1].endswith("PASS") and lines[2].endswith("MISS")
    assert acc.verdict({"kd": {"top1_mean": 0.5}}) == []


def test_verdict_gives_the_paired_standard_error_of_each_gap() -> None:
    def rows(*top1: float) -> list[dict[str, float]]:
        return [{"seed": s, "top1": t} for s, t in enumerate(top1)]

    m = {"augkd": {"top1_mean": 0.85, "per_seed": rows(0.90, 0.80)},
         "no-anchor": {"top1_mean": 0.85, "per_seed": rows(0.88, 0.82)}}
    # per-seed differences +2 and -2 points: sd 2.83, SE 2.83 / sqrt(2) = 2.00
    assert acc.paired(m, "augkd", "no-anchor") == " (paired over 2 seeds, SE 2.00)"
    line = acc.verdict(m)[0]
    assert line == "- AuG-KD - no-anchor: +0.00 points (paired over 2 seeds, SE 2.00) (target >= -0.5): PASS"
    m["no-anchor"]["per_seed"] = rows(0.88, 0.82)[1:]  # one common seed: no error to give
    assert acc.paired(m, "augkd", "no-anchor") == ""
    assert acc.paired(m, "augkd", "dfkd") == ""


def test_merge_joins_settings_of_parallel_runs(tmp_path: Path) -> None:
    import json

    def part(name: str, top1: float) -> dict:
        rows = [{"seed": 0, "top1": top1, "top3": 1.0, "top5": 1.0, "eval_top1": top1, "wall_s": 1.0}]
        return {"schema": 1, "command": f"python accuracy.py --settings {name}", "preset": "quick", "machine": "x",
                "wall_s": 10.0, "settings": [{"name": name, "config": {}, "methods": acc.summarise({"augkd": rows}),
                                              "teacher": {"top1_on_student_test": 0.5, "own_eval_top1": 0.9}}]}
    for name, top1 in (("a", 0.8), ("b", 0.9)):
        (tmp_path / f"{name}.json").write_text(json.dumps(part(name, top1)))
    assert acc.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "accuracy.json").read_text())
    assert [s["name"] for s in merged["settings"]] == ["a", "b"] and merged["wall_s"] == 20.0
    assert " && " in merged["command"] and merged["eval_selected"]["augkd"]["setting"] == "b"


def _row(seed: int, top1: float, eval_top1: float) -> dict:
    return {"seed": seed, "top1": top1, "top3": 1.0, "top5": 1.0, "eval_top1": eval_top1, "wall_s": 1.0}


def test_auto_rows_choose_on_eval_only_and_merge_replaces_a_rerun_method() -> None:
    per_method = {"augkd": [_row(0, 0.10, 0.9), _row(1, 0.99, 0.5)],
                  "no-anchor": [_row(0, 0.99, 0.8), _row(1, 0.20, 0.9)],
                  "dfkd-finetune": [_row(0, 0.50, 0.9), _row(1, 0.30, 0.1)]}
    rows = acc.auto_rows(per_method)
    # seed 0: augkd and dfkd-finetune tie on eval -> the simpler (dfkd-finetune); seed 1: no-anchor; never the test
    assert [r["chosen"] for r in rows] == ["dfkd-finetune", "no-anchor"]
    assert [r["top1"] for r in rows] == [0.50, 0.20]
    old = {"settings": [{"name": "s", "config": {}, "teacher": {}, "methods": acc.summarise(per_method)}]}
    rerun = {"augkd": [_row(0, 0.7, 0.95), _row(1, 0.7, 0.95)]}
    new = {"settings": [{"name": "s", "config": {}, "teacher": {"x": 1}, "methods": acc.summarise(rerun)}]}
    merged = acc.merge_settings([old, new])
    assert len(merged) == 1 and merged[0]["methods"]["augkd"]["top1_mean"] == pytest.approx(0.7)
    assert merged[0]["methods"]["no-anchor"]["top1_mean"] == pytest.approx(0.595)  # kept from the first file
    assert [r["chosen"] for r in merged[0]["methods"]["auto"]["per_seed"]] == ["augkd", "augkd"]  # derived again
    lines = acc.verdict(merged[0]["methods"])
    assert any(line.startswith("- auto - best single method") and "PASS" in line for line in lines)
    assert any(line.startswith("- AuG-KD - no-anchor") and "PASS" in line for line in lines)
    means = acc.mean_over_settings(merged)
    assert list(means)[0] == "augkd" or list(means)[0] == "auto"


def test_auto_rows_break_an_eval_top1_tie_by_the_recorded_eval_ce() -> None:
    per_method = {m: [_row(0, top1, 0.32) | {"eval_loss": ce}]
                  for m, top1, ce in (("augkd", 0.25, 1.8), ("no-anchor", 0.21, 2.0), ("dfkd-finetune", 0.15, 2.2))}
    assert [r["chosen"] for r in acc.auto_rows(per_method)] == ["augkd"]
    del per_method["no-anchor"][0]["eval_loss"]  # an older run without the CE: top-1, then the simpler method
    assert [r["chosen"] for r in acc.auto_rows(per_method)] == ["dfkd-finetune"]


def test_auto_rows_keep_augkd_unless_the_recorded_eval_size_makes_a_lead_evidence() -> None:
    def rows(n: int | None) -> dict:
        return {m: [_row(0, top1, ev) | {"eval_n": n}]
                for m, top1, ev in (("augkd", 0.25, 0.26), ("no-anchor", 0.21, 0.30), ("dfkd-finetune", 0.15, 0.20))}

    assert [r["chosen"] for r in acc.auto_rows(rows(50))] == ["augkd"]  # 15/50 against 13/50: 0.4 SE
    assert [r["chosen"] for r in acc.auto_rows(rows(2000))] == ["no-anchor"]  # the same gap on 2000 images
    assert [r["chosen"] for r in acc.auto_rows(rows(None))] == ["no-anchor"]  # no size recorded: best eval


def test_folder_setting_is_written_once_and_read_through_the_image_folder_loader(tmp_path: Path) -> None:
    from augkd_edge.data import load_domain

    config = acc.folder_overrides({"student_folder": "optdigits-inverted", "shots": 10}, tmp_path)
    assert "student_folder" not in config and config["shots"] == 10
    root = Path(config["student_data"])
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [str(d) for d in range(10)]
    stamp = (root / "0").stat().st_mtime_ns
    assert acc.folder_overrides({"student_folder": "optdigits-inverted"}, tmp_path) == {"student_data": str(root)}
    assert (root / "0").stat().st_mtime_ns == stamp  # reused, not rewritten
    domain = load_domain(str(root), 32)
    assert domain.files is not None and len(domain) == 1797 and domain.kind == "natural"
    # the source's own look: dark digits on a light ground, an 8x8 grid upsampled by the loader
    assert float(domain.images.mean()) > 0.6
    from PIL import Image

    with Image.open(domain.files[0]) as image:
        assert image.size == (8, 8)


def _entry(top1: float, n: int = 2) -> dict:
    return {"top1_mean": top1, "top1_std": 0.01, "eval_top1_mean": top1, "n_seeds": n}


def test_unlabelled_report_sets_labelled_only_beside_the_pool_and_judges_the_targets() -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "unlabelled_report.py"
    spec = importlib.util.spec_from_file_location("unlabelled_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    dom = {"student_data": "digits:optdigits"}
    result = {"command": "x", "settings": [
        {"name": "mnist->optdigits labelled-only", "config": dom, "methods": {"augkd": _entry(0.92)}},
        {"name": "mnist->optdigits +unlabelled (all)", "config": dom,
         "methods": {"augkd": _entry(0.94), "self-train": _entry(0.95), "kd-unlabelled": _entry(0.84)}},
        {"name": "mnist->optdigits +unlabelled (all), kd_gate better", "config": dom,
         "methods": {"augkd": _entry(0.955)}},
        {"name": "mnist->optdigits supervised ceiling", "config": dom, "methods": {"no-kd": _entry(0.98)}},
    ]}
    default = report.markdown(result, None)
    assert "| labelled-only | augkd | 0.9200 +- 0.0100 | 0.9200 | 2 |" in default
    assert "- AuG-KD + pool - AuG-KD labelled-only: +2.00 points (target >= +3): MISS" in default
    assert "- AuG-KD + pool - self-train: -1.00 points (target: beats): MISS" in default
    better = report.markdown(result, "kd_gate better")
    assert "labelled-only: +3.50 points (target >= +3): PASS" in better
    assert "- supervised ceiling - AuG-KD + pool: 2.50 points (target <= 2): MISS" in better
    assert "- AuG-KD + pool - kd-unlabelled: +11.50 points (target: beats): PASS" in better


def test_merge_seeds_takes_the_union_of_the_files_seeds() -> None:
    def part(rows: dict[str, list[tuple[int, float]]], teacher: float) -> dict:
        methods = {m: acc.summarise({m: [{"seed": s, "top1": v, "top3": 1.0, "top5": 1.0, "eval_top1": v,
                                          "wall_s": 1.0} for s, v in r]})[m] for m, r in rows.items()}
        return {"settings": [{"name": "x", "config": {}, "methods": methods,
                              "teacher": {"top1_on_student_test": teacher, "own_eval_top1": 0.97}}]}

    a = part({"augkd": [(0, 0.8), (1, 0.9)], "kd": [(0, 0.5)]}, 0.30)
    b = part({"augkd": [(2, 1.0), (3, 0.7), (4, 0.6)]}, 0.40)
    setting = acc.merge_settings([a, b], union_seeds=True)[0]
    # the teacher's test top-1 is a mean over all five seeds' test splits, not the last file's
    assert setting["teacher"]["top1_on_student_test"] == pytest.approx((2 * 0.30 + 3 * 0.40) / 5)
    b = part({"augkd": [(2, 1.0), (1, 0.7)]}, 0.40)
    merged = acc.merge_settings([a, b], union_seeds=True)[0]["methods"]
    assert [r["seed"] for r in merged["augkd"]["per_seed"]] == [0, 1, 2]
    assert merged["augkd"]["top1_mean"] == pytest.approx((0.8 + 0.7 + 1.0) / 3) and merged["kd"]["n_seeds"] == 1
    assert acc.merge_settings([a, b])[0]["methods"]["augkd"]["n_seeds"] == 2  # default: the last file's rows
