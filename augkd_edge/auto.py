"""``--method auto``: which student to ship, decided by the run on the eval split.

AuG-KD is not always the best of its own ablations: on a user folder whose
anchors the teacher is fooled by, no-anchor or DFKD + fine-tune won (issue 20).
A run already holds what it takes to find out: the teacher, Module 1 and
Module 2 are trained once, and each candidate of ``config.AUTO_CANDIDATES``
(dfkd-finetune, no-anchor, augkd) trains only its own final stage, starting
from the same Module 1 student, seeded as its standalone run is, so each
candidate is the student ``--method <candidate>`` would give.
The student with the best eval-split top-1 is kept. Equal top-1 is frequent
(the default eval split holds 5 images per class, so one image is 2 points
on ten classes) and is broken by the eval-split CE, the rule checkpoint
selection already uses (``evaluate.classifier_metrics``); only an exact tie
of both goes to the simpler method (the earlier in the tuple). The test
split of every candidate is recorded for the reader, never used to choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from augkd_edge.config import AUTO_CANDIDATES, METHODS

if TYPE_CHECKING:
    from augkd_edge.pipeline import Run

RULE = ("best eval-split top-1; equal top-1 broken by the lower eval-split CE; exact ties go to the simpler "
        "method (" + ", ".join(AUTO_CANDIDATES) + ", simplest first)")


def choose(eval_top1: Mapping[str, float], order: tuple[str, ...] = AUTO_CANDIDATES,
           eval_loss: Mapping[str, float] | None = None) -> str:
    """The candidate with the highest eval top-1; among equals the lowest eval CE (when every candidate has
    one), then the first in ``order``."""
    if not eval_top1:
        raise ValueError("no candidate to choose from")
    ranked = [m for m in order if m in eval_top1] + [m for m in eval_top1 if m not in order]
    losses = eval_loss if eval_loss is not None and all(m in eval_loss for m in ranked) else {m: 0.0 for m in ranked}
    return max(ranked, key=lambda m: (eval_top1[m], -losses[m], -ranked.index(m)))


def auto_step(run: "Run") -> None:
    """Train every candidate's final stage on ``run`` and leave the chosen student in ``run.student``.

    The candidates without an AnchorNet read the Module 1 encoder, as their
    standalone runs do (Module 2 adapts the encoder for augkd only).
    """
    from augkd_edge.engine import detached
    from augkd_edge.evaluate import evaluate_classifier
    from augkd_edge.stages import measure_health, train_final

    common = run.common()
    start = run.module1_states
    if start is None:
        raise RuntimeError("auto needs the Module 1 states (pipeline.module1_step keeps them)")
    adapted_encoder = detached(run.encoder.state_dict())
    anchor, candidates, students = run.anchor, {}, {}
    for method in AUTO_CANDIDATES:
        spec = METHODS[method]
        run.student.load_state_dict(start["student"])
        run.encoder.load_state_dict(adapted_encoder if spec.anchor else start["encoder"])
        run.anchor = anchor if spec.anchor else None
        health = run.health if spec.anchor else measure_health(run)
        run.echo(f"auto: candidate {method}")
        train_final(run, method, health)
        acc = {split: evaluate_classifier(run.student, run.x[split], run.y[split], common["mean"], common["std"],
                                          with_loss=split == "eval")
               for split in ("eval", "test")}
        candidates[method] = {"eval": acc["eval"], "test": acc["test"],
                              "anchor_share": run.anchor_share if spec.anchor else None,
                              "wall_s": round(run.wall.get(spec.stage_name or "", 0.0), 2)}
        students[method] = detached(run.student.state_dict())
    run.encoder.load_state_dict(adapted_encoder)
    run.anchor = anchor
    chosen = choose({m: c["eval"]["top1"] for m, c in candidates.items()},
                    eval_loss={m: c["eval"]["loss"] for m, c in candidates.items()})
    run.student.load_state_dict(students[chosen])
    run.auto = {"candidates": candidates, "chosen": chosen, "rule": RULE}
    for method, c in candidates.items():
        run.echo(f"  {method:14s} eval top-1 {c['eval']['top1']:.4f}  CE {c['eval']['loss']:.4f}"
                 + ("   <- chosen" if method == chosen else ""))


def candidate_rows(results: Mapping[str, Any]) -> list[tuple[str, float, float | None, float, bool]]:
    """(method, eval top-1, eval CE or None, test top-1, chosen) per candidate of an auto run's results.json,
    in the order the rule ranks them (results written before the CE was recorded have None)."""
    auto = results.get("auto") or {}
    rows = [(m, c["eval"]["top1"], c["eval"].get("loss"), c["test"]["top1"], m == auto.get("chosen"))
            for m, c in (auto.get("candidates") or {}).items()]
    return sorted(rows, key=lambda r: (-r[1], r[2] if r[2] is not None else 0.0))


def _ce(loss: float | None) -> str:
    return "" if loss is None else f"{loss:.4f}"


def auto_markdown(results: dict[str, Any]) -> list[str]:
    """``--method auto``: every candidate's eval and test top-1, and which student the run kept."""
    rows = candidate_rows(results)
    if not rows:
        return []
    auto = results["auto"]
    lines = ["## Which student to ship (`--method auto`)", "",
             f"Chosen: **{auto['chosen']}** ({auto['rule']}). The test split is shown, never used to choose.", "",
             "| candidate | eval top-1 | eval CE | test top-1 | |", "|---|---:|---:|---:|---|"]
    lines += [f"| {m} | {ev:.4f} | {_ce(ce)} | {te:.4f} | {'shipped' if chosen else ''} |"
              for m, ev, ce, te, chosen in rows]
    return lines + [""]


def cli_lines(results: Mapping[str, Any]) -> list[str]:
    """The closing lines of an auto run in the terminal: every candidate, and which one shipped."""
    rows = candidate_rows(results)
    if not rows:
        return []
    lines = [f"\n--method auto ({results['auto']['rule']}):"]
    lines += [f"  {m:14s} eval top-1 {ev:.4f}" + (f"  CE {ce:.4f}" if ce is not None else "") + f"  test top-1 {te:.4f}"
              + ("  <- shipped" if chosen else "") for m, ev, ce, te, chosen in rows]
    return lines
