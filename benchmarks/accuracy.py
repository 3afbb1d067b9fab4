"""Accuracy benchmark: methods x seeds x settings, with shared stages computed once.

    python benchmarks/accuracy.py                       # all methods, seeds 0-4, MNIST -> optdigits, quick preset
    python benchmarks/accuracy.py --seeds 0,1 --methods augkd,kd --set mixup.epochs=40

Per seed the teacher (cached by config), Module 1 and Module 2 (shared by the
methods that use them, ``config.METHODS``) are trained once and reused through
``augkd_edge.distill``'s ``shared_dir``, also across settings
that differ only in Module 3 options (e.g. a sweep of u). Every method of
a seed starts from the same student initialisation and uses the same splits.
Selection is on the eval split only; the test split is reported.

A setting may name ``"student_folder": SOURCE`` (mnist-m, optdigits, optdigits-inverted) instead of a
``student_data`` spec: the source is written once as PNG class folders at its natural size under
``<work>/folders/`` (``benchmarks/digit_folders.py``) and read back through the ImageFolder loader, the path a
user's ``--target FOLDER`` takes. When augkd, no-anchor and dfkd-finetune are all among the methods, an ``auto``
row is added: per seed, ``augkd_edge.auto.choose`` applied to their eval top-1, which is what ``--method auto``
ships, since its candidates are those standalone students (``tests/test_auto.py`` checks they are equal),
without training them a second time.

Writes ``<out>/accuracy.json`` (schema below) and ``<out>/accuracy.md`` with
the exact command. Interrupted? Run the same command again: finished runs are
skipped and unfinished ones resume from their checkpoints.

accuracy.json, schema 1::

    {"schema": 1, "command": str, "preset": str, "wall_s": float,
     "settings": [{"name": "mnist->optdigits", "config": {...overrides...},
                   "methods": {"augkd": {"top1_mean", "top1_std", "top3_mean", "top3_std", "top5_mean",
                                         "top5_std", "eval_top1_mean", "n_seeds",
                                         "per_seed": [{"seed", "top1", "top3", "top5", "eval_top1", "eval_loss", "wall_s",
                                                       "chosen" (auto), health fields}]},
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
from augkd_edge.auto import choose
from augkd_edge.config import AUTO_CANDIDATES, METHODS
from augkd_edge.report import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_report import (  # noqa: E402,F401  (sibling scripts, not a package; re-exported for the tests)
    auto_choices, eval_selected, health_markdown, markdown, mean_over_settings, paired, verdict)
from digit_folders import write_digit_folder  # noqa: E402

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
    """Settings that differ only in Module 3 options or the unlabelled pool (which only Module 3 and the baselines
    read, unless its labels train, ``pool.use_labels``, or Module 2 learns its anchors, ``pool.anchor_images``)
    share the teacher, Module 1 and Module 2."""
    import hashlib

    pool = overrides.get("pool", {})
    core = {k: v for k, v in overrides.items() if k not in ("mixup", "unlabelled", "pool")} | {"preset": preset}
    if pool.get("use_labels", False) or pool.get("anchor_images", 0):  # Module 2 reads the pool too
        core["pool"] = pool
    if pool.get("anchor_images", 0):
        core["unlabelled"] = overrides.get("unlabelled")
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]


def health_row(res: dict[str, Any]) -> dict[str, Any]:
    """Module 1 / Module 2 health of one run (eval split; results.json schema 2-3), flattened."""
    out: dict[str, Any] = {}
    if res.get("anchor"):
        a = res["anchor"]
        out |= {"anchor_teacher_top1": a["teacher_top1"], "anchor_max_class_share": a["max_class_share"],
                "anchor_energy_mean": a["energy_mean"], "teacher_domain_energy_mean": a["teacher_domain_energy_mean"],
                "anchor_same_class_distance": a["same_class_distance"],
                "source_same_class_distance": a["source_same_class_distance"],
                "anchor_fidelity": a.get("fidelity"), "anchor_share": res.get("anchor_share")}
    if res.get("reconstruction"):
        out["recon_teacher_top1"] = res["reconstruction"]["teacher_top1"]
        out["recon_fidelity"] = res["reconstruction"].get("fidelity")
        out["teacher_eval_top1"] = res["teacher"]["student_eval"]["top1"]
    return out


def run_row(res: dict[str, Any], seed: int) -> dict[str, Any]:
    """One method's per-seed row from its results.json (a real ``--method auto`` run's says what it chose)."""
    row = {"seed": seed, **{k: res["test"][k] for k in ("top1", "top3", "top5")},
           "eval_top1": res["eval"]["top1"], "eval_loss": res["eval"].get("loss"),
           "eval_n": res.get("split_sizes", {}).get("eval"),
           "wall_s": sum(res["stage_wall_s"].values()),
           "stage_wall_s": res["stage_wall_s"], **health_row(res)}
    return row | ({"chosen": res["auto"]["chosen"], "ran_auto": True} if res.get("auto") else {})


def auto_rows(per_method: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per seed, the candidate ``--method auto`` ships (``augkd_edge.auto.choose``: AuG-KD unless beaten on the eval
    split by more than one standard error, where the rows record the eval split's size; then eval top-1, then eval CE
    where every candidate recorded one), as its own row."""
    rows = []
    for i in range(len(per_method[AUTO_CANDIDATES[0]])):
        by_method = {m: per_method[m][i] for m in AUTO_CANDIDATES}
        losses = {m: r["eval_loss"] for m, r in by_method.items() if r.get("eval_loss") is not None}
        sizes = {r.get("eval_n") for r in by_method.values()}
        n_eval = sizes.pop() if len(sizes) == 1 else None
        chosen = choose({m: r["eval_top1"] for m, r in by_method.items()}, eval_loss=losses or None, n_eval=n_eval)
        shared = by_method[chosen]
        # one auto run trains the shared stages (teacher, Module 1, Module 2) once: each stage name counts once
        stages = {k: v for r in by_method.values() for k, v in r.get("stage_wall_s", {}).items()}
        wall = sum(stages.values()) if stages else sum(r["wall_s"] for r in by_method.values())
        rows.append({k: shared[k] for k in ("seed", "top1", "top3", "top5", "eval_top1")}
                    | {"wall_s": wall, "chosen": chosen})
    return rows


def with_auto(methods: dict[str, Any]) -> dict[str, Any]:
    """Summarised methods plus the derived auto row, where every candidate ran the same seeds and no real
    ``--method auto`` run is there to report instead."""
    ran_auto = any(r.get("ran_auto") for r in methods.get("auto", {}).get("per_seed", []))
    if ran_auto or not set(AUTO_CANDIDATES) <= set(methods):
        return methods
    seeds = [[r["seed"] for r in methods[m]["per_seed"]] for m in AUTO_CANDIDATES]
    if any(s != seeds[0] for s in seeds):
        return methods
    return methods | summarise({"auto": auto_rows({m: methods[m]["per_seed"] for m in AUTO_CANDIDATES})})


def folder_overrides(overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """A setting's overrides with ``student_folder`` replaced by the written folder's path as ``student_data``."""
    if "student_folder" not in overrides:
        return overrides
    source = overrides["student_folder"]
    root = write_digit_folder(source, work / "folders" / source)
    return {k: v for k, v in overrides.items() if k != "student_folder"} | {"student_data": str(root.resolve())}


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


def _seed_count(setting: dict[str, Any]) -> int:
    return max((e.get("n_seeds", len(e.get("per_seed", []))) for m, e in setting["methods"].items() if m != "auto"),
               default=0)


def _pooled_teacher(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The teacher's test top-1 over the union of two files' seeds (each file's mean weighted by its seed count:
    the test split, and so the teacher's score on it, differs per seed)."""
    n_old, n_new = _seed_count(old), _seed_count(new)
    a, b = old["teacher"]["top1_on_student_test"], new["teacher"]["top1_on_student_test"]
    pooled = (a * n_old + b * n_new) / (n_old + n_new) if n_old + n_new else b
    return {**new["teacher"], "top1_on_student_test": pooled}


def merge_settings(parts: list[dict[str, Any]], union_seeds: bool = False) -> list[dict[str, Any]]:
    """The settings of several accuracy.json files, in order of first appearance; a setting in several files
    takes each method's rows from the last file that ran it (e.g. AuG-KD rerun alone after a change to it), or with
    ``union_seeds`` the union of their seeds (a later file's row for the same seed wins), summarised again; its
    auto row is derived again from the candidates' rows."""
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for setting in part["settings"]:
            if setting["name"] not in merged:
                merged[setting["name"]] = {**setting, "methods": dict(setting["methods"])}
                continue
            old = merged[setting["name"]]
            if union_seeds:
                old["teacher"] = _pooled_teacher(old, setting)
                rows = {m: {r["seed"]: r for r in e["per_seed"]} for m, e in old["methods"].items() if m != "auto"}
                for method, entry in setting["methods"].items():
                    if method != "auto":
                        rows.setdefault(method, {}).update({r["seed"]: r for r in entry["per_seed"]})
                old["methods"] = summarise({m: [by[s] for s in sorted(by)] for m, by in rows.items()})
            else:
                old["methods"] = {**old["methods"], **setting["methods"]}
                old["teacher"] = setting["teacher"]
    for setting in merged.values():
        setting["methods"] = with_auto(setting["methods"])
    return list(merged.values())


def merge(paths: list[str], out_dir: Path, note: str = "", union_seeds: bool = False) -> int:
    """One accuracy.json/.md from several (settings in file order, methods from the last file that has them, or
    with ``union_seeds`` every file's seeds; commands joined)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    result = {**parts[0], "command": " && ".join(p["command"] for p in parts),
              "wall_s": sum(p["wall_s"] for p in parts), "settings": merge_settings(parts, union_seeds)}
    if note:
        result["note"] = note
    result["eval_selected"] = eval_selected(result["settings"])
    write_json(result, out_dir / "accuracy.json")
    (out_dir / "accuracy.md").write_text(markdown(result))
    print((out_dir / "accuracy.md").read_text())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "auto" and not METHODS[m].needs_pool),
                        help="comma-separated methods (auto's row is derived from its candidates when they run; "
                             "name auto to run --method auto itself; self-train and kd-unlabelled need a setting "
                             "with unlabelled images)")
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
    parser.add_argument("--merge-seeds", action="store_true",
                        help="with --merge: a method in several files keeps the union of their seeds (e.g. seeds "
                             "0-1 from one run and 2-4 from another) instead of the last file's rows")
    return parser


def run_setting(name: str, overrides: dict[str, Any], methods: list[str], seeds: list[int],
                args: argparse.Namespace) -> dict[str, Any]:
    """Every method x seed of one setting (finished runs are read back, unfinished ones resume)."""
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    teacher_test, teacher_own = [], None
    config = folder_overrides(overrides, Path(args.work))
    for seed in seeds:
        base = Path(args.work) / name.replace(">", "").replace(" ", "_") / f"seed{seed}"
        shared = Path(args.work) / "shared" / f"{_shared_key(config, args.preset)}-seed{seed}"
        for method in methods:
            out = base / method
            if (out / "results.json").exists():
                res = json.loads((out / "results.json").read_text())
            else:
                print(f"[{name}] seed {seed} {method}", flush=True)
                # resume an interrupted run; a folder without one starts fresh (resume of nothing is refused)
                res = augkd_edge.distill(
                    _merge(config, {"preset": args.preset, "method": method, "seed": seed, "device": args.device}),
                    out, resume=(out / "config.json").exists(), cache_dir=args.cache_dir, shared_dir=shared,
                    progress=sys.stderr.isatty())
            per_method[method].append(run_row(res, seed))
            teacher_own = (res["teacher"]["own_eval"] or {}).get("top1", teacher_own)
        teacher_test.append(res["teacher"]["student_test"]["top1"])
    return {
        "name": name,
        "config": overrides,
        "methods": with_auto(summarise(per_method)),
        "teacher": {"top1_on_student_test": sum(teacher_test) / len(teacher_test), "own_eval_top1": teacher_own},
    }


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out), args.note, args.merge_seeds)
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
