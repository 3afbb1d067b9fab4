"""Accuracy benchmark: methods x seeds x settings, with shared stages computed once.

    python benchmarks/accuracy.py                       # all methods, seeds 0-4, MNIST -> optdigits, quick preset
    python benchmarks/accuracy.py --seeds 0,1 --methods augkd,kd --set mixup.epochs=40

Per seed the teacher (cached by config), Module 1 and Module 2 (shared by the
methods that use them, ``config.METHODS``) are trained once and reused through
``augkd_edge.distill``'s ``shared_dir``, also across settings
that differ only in Module 3 options (e.g. a sweep of u). Every method of
a seed starts from the same student initialisation and uses the same splits.
Selection is on the eval split only; the test split is reported.

Writes ``<out>/accuracy.json`` (schema below) and ``<out>/accuracy.md`` with
the exact command. Interrupted? Run the same command again: finished runs are
skipped and unfinished ones resume from their checkpoints.

accuracy.json, schema 1::

    {"schema": 1, "command": str, "preset": str, "wall_s": float,
     "settings": [{"name": "mnist->optdigits", "config": {...overrides...},
                   "methods": {"augkd": {"top1_mean", "top1_std", "top3_mean", "top3_std", "top5_mean",
                                         "top5_std", "eval_top1_mean", "n_seeds",
                                         "per_seed": [{"seed", "top1", "top3", "top5", "eval_top1", "wall_s"}]},
                               ...},
                   "teacher": {"top1_on_student_test": mean over seeds, "own_eval_top1": float | null}}]}

Std is the sample standard deviation (ddof = 1) over seeds; 0 for one seed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import augkd_edge
from augkd_edge.config import METHODS
from augkd_edge.report import write_json

DEFAULT_SETTINGS = {
    "mnist->optdigits": {"teacher_data": "digits:mnist", "student_data": "digits:optdigits", "shots": 10},
}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``section.key=value`` strings -> nested dict for DistillConfig.from_dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE, e.g. mixup.tau=4")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse_value(value)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _shared_key(overrides: dict[str, Any], preset: str) -> str:
    """Settings that differ only in Module 3 options share the teacher, Module 1 and Module 2."""
    import hashlib

    core = {k: v for k, v in overrides.items() if k != "mixup"} | {"preset": preset}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]


def health_row(res: dict[str, Any]) -> dict[str, Any]:
    """Module 1 / Module 2 health of one run (eval split; results.json schema 2), flattened."""
    out: dict[str, Any] = {}
    if res.get("anchor"):
        a = res["anchor"]
        out |= {"anchor_teacher_top1": a["teacher_top1"], "anchor_max_class_share": a["max_class_share"],
                "anchor_energy_mean": a["energy_mean"], "teacher_domain_energy_mean": a["teacher_domain_energy_mean"],
                "anchor_same_class_distance": a["same_class_distance"],
                "source_same_class_distance": a["source_same_class_distance"]}
    if res.get("reconstruction"):
        out["recon_teacher_top1"] = res["reconstruction"]["teacher_top1"]
        out["teacher_eval_top1"] = res["teacher"]["student_eval"]["top1"]
    return out


def verdict(methods: dict[str, Any]) -> list[str]:
    """The issue's targets for one setting, checked on the means: a line each, PASS or MISS with the gap."""
    if "augkd" not in methods:
        return []
    ours = methods["augkd"]["top1_mean"]
    lines = []
    if "no-anchor" in methods:
        gap = ours - methods["no-anchor"]["top1_mean"]
        lines.append(f"- AuG-KD - no-anchor: {gap * 100:+.2f} points (target >= +2): {'PASS' if gap >= 0.02 else 'MISS'}")
    others = {m: v["top1_mean"] for m, v in methods.items() if m != "augkd"}
    if others:
        best, best_top1 = max(others.items(), key=lambda kv: kv[1])
        lines.append(f"- AuG-KD - best other method ({best}): {(ours - best_top1) * 100:+.2f} points (target > 0): "
                     f"{'PASS' if ours > best_top1 else 'MISS'}")
    if "no-kd" in methods:
        gap = ours - methods["no-kd"]["top1_mean"]
        lines.append(f"- AuG-KD - no-kd: {gap * 100:+.2f} points (target >= 0): {'PASS' if gap >= 0 else 'MISS'}")
    return lines


def health_markdown(methods: dict[str, Any]) -> list[str]:
    rows = methods.get("augkd", {}).get("per_seed", [])
    rows = [r for r in rows if "anchor_teacher_top1" in r]
    if not rows:
        return []
    lines = ["AuG-KD's Module 1 / Module 2 health per seed (eval split; healthy: anchor top-1 >= 0.90, largest "
             "class share <= 0.30, anchor energy <= the teacher's own domain, reconstructions >= raw images):", "",
             "| seed | anchor top-1 | largest class share | anchor energy | teacher-domain energy | anchor / image "
             "same-class distance | reconstruction top-1 | raw top-1 |", "|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['anchor_teacher_top1']:.2f} | {r['anchor_max_class_share']:.2f} | "
            f"{r['anchor_energy_mean']:.2f} | {r['teacher_domain_energy_mean']:.2f} | "
            f"{r['anchor_same_class_distance']:.3f} / {r['source_same_class_distance']:.3f} | "
            f"{r.get('recon_teacher_top1', float('nan')):.2f} | {r.get('teacher_eval_top1', float('nan')):.2f} |")
    return lines + [""]


def _stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(per_method: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    methods = {}
    for method, rows in per_method.items():
        entry: dict[str, Any] = {"n_seeds": len(rows), "per_seed": rows}
        for key in ("top1", "top3", "top5", "eval_top1"):
            entry[f"{key}_mean"], entry[f"{key}_std"] = _stats([r[key] for r in rows])
        methods[method] = entry
    return methods


def eval_selected(settings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, the setting with the best mean *eval* top-1, and its test figures.

    This is how a hyperparameter sweep (settings differing in, say, u) is
    reported without tuning on the test split.
    """
    best: dict[str, dict[str, Any]] = {}
    for setting in settings:
        for method, m in setting["methods"].items():
            if method not in best or m["eval_top1_mean"] > best[method]["eval_top1_mean"]:
                best[method] = {"setting": setting["name"], **{k: m[k] for k in (
                    "eval_top1_mean", "top1_mean", "top1_std", "top3_mean", "top5_mean", "n_seeds")}}
    return best


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Accuracy benchmark",
        "",
        f"Command: `{result['command']}`",
        "",
        *([result["note"], ""] if result.get("note") else []),
        f"Preset `{result['preset']}`, total wall time {result['wall_s'] / 60:.1f} min on {result['machine']}. "
        "Top-k on the student-domain test split, mean +- sample std over seeds; checkpoints selected on the "
        "eval split only.",
        "",
    ]
    for setting in result["settings"]:
        t = setting["teacher"]
        lines += [
            f"## {setting['name']}",
            "",
            f"Overrides: `{json.dumps(setting['config'])}`",
            "",
            "| method | top-1 | top-3 | top-5 | eval top-1 | seeds | mean wall (s) |",
            "|---|---|---|---|---|---:|---:|",
        ]
        ranked = sorted(setting["methods"].items(), key=lambda kv: -kv[1]["top1_mean"])
        for method, m in ranked:
            wall = sum(r["wall_s"] for r in m["per_seed"]) / max(len(m["per_seed"]), 1)
            lines.append(
                f"| {method} | {m['top1_mean']:.4f} +- {m['top1_std']:.4f} | {m['top3_mean']:.4f} +- "
                f"{m['top3_std']:.4f} | {m['top5_mean']:.4f} +- {m['top5_std']:.4f} | {m['eval_top1_mean']:.4f} | "
                f"{m['n_seeds']} | {wall:.0f} |"
            )
        own = t["own_eval_top1"]
        lines += [
            f"| *teacher* | {t['top1_on_student_test']:.4f} | | | | | |",
            "",
            f"Teacher top-1 on its own domain (eval split): {own:.4f}." if own is not None else "",
            "",
            *verdict(setting["methods"]),
            "",
            *health_markdown(setting["methods"]),
        ]
    if len(result["settings"]) > 1:
        lines += [
            "## Selected on the eval split",
            "",
            "Per method, the setting with the best mean eval top-1; its test top-1 is reported.",
            "",
            "| method | chosen setting | eval top-1 | test top-1 | seeds |",
            "|---|---|---:|---|---:|",
        ]
        chosen = eval_selected(result["settings"])
        for method, m in sorted(chosen.items(), key=lambda kv: -kv[1]["top1_mean"]):
            lines.append(f"| {method} | {m['setting']} | {m['eval_top1_mean']:.4f} | "
                         f"{m['top1_mean']:.4f} +- {m['top1_std']:.4f} | {m['n_seeds']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def merge(paths: list[str], out_dir: Path) -> int:
    """One accuracy.json/.md from several (settings in file order; commands joined)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    result = {**parts[0], "command": " && ".join(p["command"] for p in parts),
              "wall_s": sum(p["wall_s"] for p in parts), "settings": [s for p in parts for s in p["settings"]]}
    result["eval_selected"] = eval_selected(result["settings"])
    write_json(result, out_dir / "accuracy.json")
    (out_dir / "accuracy.md").write_text(markdown(result))
    print((out_dir / "accuracy.md").read_text())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--settings", default="mnist->optdigits",
                        help=f"comma-separated names from {sorted(DEFAULT_SETTINGS)} or a JSON file "
                             "{name: {config overrides}}")
    parser.add_argument("--preset", default="quick", choices=["quick", "paper"])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for every run, e.g. mixup.epochs=40 (repeatable)")
    parser.add_argument("--work", default="runs/accuracy", help="folder for the individual runs")
    parser.add_argument("--cache-dir", default=str(Path("~/.cache/augkd-edge").expanduser()))
    parser.add_argument("--out", default="benchmarks/results", help="where accuracy.json/.md go")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--note", default="",
                        help="a sentence for the report on how the runs were made (e.g. in parallel processes)")
    parser.add_argument("--merge", nargs="+", metavar="ACCURACY_JSON",
                        help="only combine the settings of these accuracy.json files (e.g. from runs made in "
                             "parallel) into --out")
    return parser


def run_setting(name: str, overrides: dict[str, Any], methods: list[str], seeds: list[int],
                args: argparse.Namespace) -> dict[str, Any]:
    """Every method x seed of one setting (finished runs are read back, unfinished ones resume)."""
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    teacher_test, teacher_own = [], None
    for seed in seeds:
        base = Path(args.work) / name.replace(">", "").replace(" ", "_") / f"seed{seed}"
        shared = Path(args.work) / "shared" / f"{_shared_key(overrides, args.preset)}-seed{seed}"
        for method in methods:
            out = base / method
            if (out / "results.json").exists():
                res = json.loads((out / "results.json").read_text())
            else:
                print(f"[{name}] seed {seed} {method}", flush=True)
                # resume an interrupted run; a folder without one starts fresh (resume of nothing is refused)
                res = augkd_edge.distill(
                    _merge(overrides, {"preset": args.preset, "method": method, "seed": seed, "device": args.device}),
                    out, resume=(out / "config.json").exists(), cache_dir=args.cache_dir, shared_dir=shared,
                    progress=sys.stderr.isatty())
            per_method[method].append({
                "seed": seed, **{k: res["test"][k] for k in ("top1", "top3", "top5")},
                "eval_top1": res["eval"]["top1"], "wall_s": sum(res["stage_wall_s"].values()),
                **health_row(res),
            })
            teacher_own = (res["teacher"]["own_eval"] or {}).get("top1", teacher_own)
        teacher_test.append(res["teacher"]["student_test"]["top1"])
    return {
        "name": name,
        "config": overrides,
        "methods": summarise(per_method),
        "teacher": {"top1_on_student_test": sum(teacher_test) / len(teacher_test), "own_eval_top1": teacher_own},
    }


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if Path(args.settings).is_file():
        settings = json.loads(Path(args.settings).read_text())
    else:
        settings = {name: DEFAULT_SETTINGS[name] for name in args.settings.split(",")}
    extra = _overrides(args.overrides)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])

    t0 = time.perf_counter()
    result: dict[str, Any] = {"schema": 1, "command": command, "preset": args.preset,
                              "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
                              "note": args.note, "settings": []}
    for name, setting in settings.items():
        result["settings"].append(run_setting(name, _merge(setting, extra), methods, seeds, args))
        result["wall_s"] = time.perf_counter() - t0
        result["eval_selected"] = eval_selected(result["settings"])
        out_dir = Path(args.out)
        write_json(result, out_dir / "accuracy.json")
        (out_dir / "accuracy.md").write_text(markdown(result))
    print((Path(args.out) / "accuracy.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
