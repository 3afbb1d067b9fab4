"""Issue 21's side-by-side table: per student domain, labelled-only and with-unlabelled rows and the supervised
ceiling, from one (merged) accuracy.json of the ``benchmarks/settings/issue21/`` settings, and its targets.

    python benchmarks/unlabelled_report.py benchmarks/results/accuracy-issue21/accuracy.json \
        --with-pool "kd_gate better" > benchmarks/results/accuracy-issue21/unlabelled.md

A setting's *variant* is what its name says after the domain (``labelled-only``, ``+unlabelled (all)``,
``+unlabelled (all), kd_gate better``, ``supervised ceiling``, ...); ``--with-pool`` picks the variant whose AuG-KD
row the targets judge (its name must contain the text; default: ``+unlabelled (all)`` with no gate named).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TARGET_GAIN = {"digits:optdigits": 3.0, "digits:mnist-m": 10.0}  # points over AuG-KD labelled-only, issue 21
CEILING_GAP = {"digits:optdigits": 2.0}  # at most this far below the fully supervised student


def rows_by_domain(result: dict[str, Any]) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """student domain -> [(variant, method, the method's entry)] in the file's order."""
    out: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for setting in result["settings"]:
        domain = setting["config"]["student_data"]
        variant = setting["name"].split(" ", 1)[1] if " " in setting["name"] else setting["name"]
        for method, entry in setting["methods"].items():
            out.setdefault(domain, []).append((variant, method, entry))
    return out


def _find(rows: list[tuple[str, str, dict[str, Any]]], method: str, pick: Any) -> dict[str, Any] | None:
    hits = [e for v, m, e in rows if m == method and pick(v)]
    return hits[0] if hits else None


def targets(domain: str, rows: list[tuple[str, str, dict[str, Any]]], with_pool: str | None) -> list[str]:
    """The issue's targets on one domain, PASS / MISS with the points, and the seeds each row has."""
    def chosen(variant: str) -> bool:
        if with_pool is None:
            return variant == "+unlabelled (all)"
        return "+unlabelled (all)" in variant and with_pool in variant

    pool = _find(rows, "augkd", chosen)
    if pool is None:
        return [f"- no AuG-KD row with the unlabelled pool ({with_pool or 'default'}) on {domain}"]
    lines = []
    labelled = _find(rows, "augkd", lambda v: v == "labelled-only")
    if labelled is not None and domain in TARGET_GAIN:
        gain = 100 * (pool["top1_mean"] - labelled["top1_mean"])
        lines.append(f"- AuG-KD + pool - AuG-KD labelled-only: {gain:+.2f} points (target >= +{TARGET_GAIN[domain]:.0f}): "
                     f"{'PASS' if gain >= TARGET_GAIN[domain] else 'MISS'}")
    ceiling = _find(rows, "no-kd", lambda v: v == "supervised ceiling")
    if ceiling is not None and domain in CEILING_GAP:
        gap = 100 * (ceiling["top1_mean"] - pool["top1_mean"])
        lines.append(f"- supervised ceiling - AuG-KD + pool: {gap:.2f} points (target <= {CEILING_GAP[domain]:.0f}): "
                     f"{'PASS' if gap <= CEILING_GAP[domain] else 'MISS'}")
    for baseline in ("self-train", "kd-unlabelled"):
        other = _find(rows, baseline, lambda v: v.startswith("+unlabelled (all)"))
        if other is not None:
            diff = 100 * (pool["top1_mean"] - other["top1_mean"])
            need = "never below" if baseline == "self-train" and "inverted" in domain else "beats"
            ok = diff >= 0 if need == "never below" else diff > 0
            lines.append(f"- AuG-KD + pool - {baseline}: {diff:+.2f} points (target: {need}): "
                         f"{'PASS' if ok else 'MISS'}")
    seeds = sorted({e["n_seeds"] for _, _, e in rows})
    lines.append(f"- seeds per row: {', '.join(map(str, seeds))} (the targets ask 5)")
    return lines


def markdown(result: dict[str, Any], with_pool: str | None) -> str:
    lines = ["# With and without the unlabelled pool (issue 21)", "",
             f"From `{result.get('command', '?')}`.", "",
             *([result["note"], ""] if result.get("note") else []),
             "Test top-1, mean +- sample std over seeds (the test split is the same in every row of a domain: the "
             "labelled-only rows hold the pool out unused).", ""]
    for domain, rows in rows_by_domain(result).items():
        lines += [f"## {domain}", "", "| setting | method | top-1 | eval top-1 | seeds |", "|---|---|---|---:|---:|"]
        for variant, method, e in rows:
            lines.append(f"| {variant} | {method} | {e['top1_mean']:.4f} +- {e['top1_std']:.4f} | "
                         f"{e['eval_top1_mean']:.4f} | {e['n_seeds']} |")
        lines += ["", *targets(domain, rows, with_pool), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("accuracy_json")
    parser.add_argument("--with-pool", default=None, help="text naming the pool variant the targets judge")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown(json.loads(Path(args.accuracy_json).read_text()), args.with_pool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
