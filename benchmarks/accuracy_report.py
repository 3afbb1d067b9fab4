"""The accuracy suite's Markdown: per setting the methods table, issue 20's targets and AuG-KD's health, then
the mean over settings (``benchmarks/accuracy.py`` writes it; split out to keep the runner readable)."""

from __future__ import annotations

import json
from typing import Any


def paired(methods: dict[str, Any], a: str, b: str) -> str:
    """`` (paired over N seeds, SE s)``: the standard error of the mean per-seed difference a - b, in points.

    The targets are judged on the means; this says how far those means can be trusted. Both methods of one seed
    share the teacher and Module 1 (and augkd / no-anchor Module 2), so the per-seed difference is the fair unit:
    with 5 seeds and per-seed differences that scatter by several points, a 1-point gap can be noise.
    Empty when fewer than two seeds are common to both methods.
    """
    rows = [{r["seed"]: r["top1"] for r in methods.get(m, {}).get("per_seed", []) if "seed" in r} for m in (a, b)]
    seeds = sorted(set(rows[0]) & set(rows[1]))
    if len(seeds) < 2:
        return ""
    diffs = [100.0 * (rows[0][s] - rows[1][s]) for s in seeds]
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    return f" (paired over {len(seeds)} seeds, SE {sd / len(seeds) ** 0.5:.2f})"


def verdict(methods: dict[str, Any]) -> list[str]:
    """Issue 20's targets for one setting, checked on the means: a line each, PASS or MISS with the gap and the
    gap's paired standard error over seeds (:func:`paired`)."""
    if "augkd" not in methods:
        return []
    ours = methods["augkd"]["top1_mean"]
    lines = []
    if "no-anchor" in methods:
        gap = ours - methods["no-anchor"]["top1_mean"]
        lines.append(f"- AuG-KD - no-anchor: {gap * 100:+.2f} points{paired(methods, 'augkd', 'no-anchor')} "
                     f"(target >= -0.5): {'PASS' if gap >= -0.005 else 'MISS'}")
    others = {m: v["top1_mean"] for m, v in methods.items() if m not in ("augkd", "auto")}
    if others:
        best, best_top1 = max(others.items(), key=lambda kv: kv[1])
        lines.append(f"- AuG-KD - best baseline ({best}): {(ours - best_top1) * 100:+.2f} points"
                     f"{paired(methods, 'augkd', best)} (target >= -1): "
                     f"{'PASS' if ours - best_top1 >= -0.01 else 'MISS'}")
    if "auto" in methods:
        singles = {m: v["top1_mean"] for m, v in methods.items() if m != "auto"}
        best, best_top1 = max(singles.items(), key=lambda kv: kv[1])
        gap = methods["auto"]["top1_mean"] - best_top1
        lines.append(f"- auto - best single method ({best}): {gap * 100:+.2f} points{paired(methods, 'auto', best)} "
                     f"(target >= -1): {'PASS' if gap >= -0.01 else 'MISS'}")
    if "no-kd" in methods:
        gap = ours - methods["no-kd"]["top1_mean"]
        lines.append(f"- AuG-KD - no-kd: {gap * 100:+.2f} points{paired(methods, 'augkd', 'no-kd')} (target >= 0): "
                     f"{'PASS' if gap >= 0 else 'MISS'}")
    return lines


def auto_choices(methods: dict[str, Any]) -> list[str]:
    """Which candidate auto shipped on each seed (chosen on the eval split)."""
    rows = methods.get("auto", {}).get("per_seed", [])
    if not rows:
        return []
    how = "ran `--method auto`" if any(r.get("ran_auto") for r in rows) else (
        "derived: the candidates' standalone runs, chosen by `augkd_edge.auto.choose` on the eval split")
    return [f"- auto ({how}) shipped: " + ", ".join(f"seed {r['seed']} {r['chosen']}" for r in rows)]


def health_markdown(methods: dict[str, Any]) -> list[str]:
    rows = methods.get("augkd", {}).get("per_seed", [])
    rows = [r for r in rows if "anchor_teacher_top1" in r]
    if not rows:
        return []
    lines = ["AuG-KD's Module 1 / Module 2 health per seed (eval split; healthy: anchor top-1 >= 0.90, largest "
             "class share <= 0.30, anchor energy <= the teacher's own domain, reconstructions >= raw images):", "",
             "| seed | anchor top-1 | largest class share | anchor energy | teacher-domain energy | anchor / image "
             "same-class distance | reconstruction top-1 | raw top-1 | anchor / reconstruction fidelity | "
             "anchor share |", "|---:|---:|---:|---:|---:|---|---:|---:|---|---:|"]

    def num(value: Any, fmt: str = ".2f") -> str:
        return "n/a" if value is None else format(value, fmt)

    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['anchor_teacher_top1']:.2f} | {r['anchor_max_class_share']:.2f} | "
            f"{r['anchor_energy_mean']:.2f} | {r['teacher_domain_energy_mean']:.2f} | "
            f"{r['anchor_same_class_distance']:.3f} / {r['source_same_class_distance']:.3f} | "
            f"{r.get('recon_teacher_top1', float('nan')):.2f} | {r.get('teacher_eval_top1', float('nan')):.2f} | "
            f"{num(r.get('anchor_fidelity'))} / {num(r.get('recon_fidelity'))} | {num(r.get('anchor_share'))} |")
    return lines + [""]


def mean_over_settings(settings: list[dict[str, Any]]) -> dict[str, float]:
    """Per method present in every setting, its test top-1 mean averaged over the settings, best first."""
    common = set.intersection(*(set(s["methods"]) for s in settings)) if settings else set()
    means = {m: sum(s["methods"][m]["top1_mean"] for s in settings) / len(settings) for m in common}
    return dict(sorted(means.items(), key=lambda kv: -kv[1]))


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
    """The whole accuracy.md: command, note, every setting, and the cross-setting tables."""
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
        lines += setting_markdown(setting)
    if len(result["settings"]) > 1:
        lines += across_settings_markdown(result["settings"])
    return "\n".join(lines) + "\n"


def setting_markdown(setting: dict[str, Any]) -> list[str]:
    """One setting's section: the methods table, the targets, auto's choices and AuG-KD's health per seed."""
    t = setting["teacher"]
    lines = [
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
        *auto_choices(setting["methods"]),
        "",
        *health_markdown(setting["methods"]),
    ]
    return lines


def across_settings_markdown(settings: list[dict[str, Any]]) -> list[str]:
    """The mean over settings (is AuG-KD first?) and each method's eval-selected setting."""
    means = mean_over_settings(settings)
    lines = ["## Mean over settings", "",
             f"Test top-1 averaged over the {len(settings)} settings (methods run on all of them); "
             "target: AuG-KD first of the methods (auto aside, it chooses among them).", "",
             "| method | mean test top-1 |", "|---|---:|"]
    lines += [f"| {m} | {v:.4f} |" for m, v in means.items()]
    singles = [m for m in means if m != "auto"]
    if "augkd" in singles:
        lines += ["", f"- AuG-KD first of all methods: {'PASS' if singles[0] == 'augkd' else 'MISS'} "
                      f"(first: {singles[0]})"]
    lines += [""]
    lines += [
        "## Selected on the eval split",
        "",
        "Per method, the setting with the best mean eval top-1; its test top-1 is reported.",
        "",
        "| method | chosen setting | eval top-1 | test top-1 | seeds |",
        "|---|---|---:|---|---:|",
    ]
    chosen = eval_selected(settings)
    for method, m in sorted(chosen.items(), key=lambda kv: -kv[1]["top1_mean"]):
        lines.append(f"| {method} | {m['setting']} | {m['eval_top1_mean']:.4f} | "
                     f"{m['top1_mean']:.4f} +- {m['top1_std']:.4f} | {m['n_seeds']} |")
    lines.append("")
    return lines
