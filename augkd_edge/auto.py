"""``--method auto``: which student to ship, decided by the run on the eval split.

AuG-KD is not always the best of its own ablations: on a user folder whose
anchors the teacher is fooled by, no-anchor or DFKD + fine-tune won (issue 20).
A run already holds what it takes to find out: the teacher, Module 1 and
Module 2 are trained once, and each candidate of ``config.AUTO_CANDIDATES``
(dfkd-finetune, no-anchor, augkd) trains only its own final stage, starting
from the same Module 1 student, seeded as its standalone run is, so each
candidate is the student ``--method <candidate>`` would give.

The eval split is small (5 images per class by default: one image is 2
points on ten classes), and on the MNIST-M folder the candidate with the best
eval top-1 cost 2.4 points against always shipping AuG-KD, replicated with a
second teacher: 50 images cannot separate students 2-4 points apart. So the
run ships AuG-KD, the method, unless another candidate beats it on the eval
split by more than one standard error of the difference (Agresti-Caffo: each
top-1 counted with one more right and one more wrong image, so that a single
image, or a perfect score, is never evidence alone). Among the candidates
that clear that bar (and AuG-KD) the best eval top-1 wins, equal top-1 is
broken by the lower eval-split CE (the rule checkpoint selection uses), and
an exact tie of both goes to the simpler method (the earlier in the tuple).
The test split of every candidate is recorded for the reader, never used to
choose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from augkd_edge.config import AUTO_CANDIDATES, METHODS

if TYPE_CHECKING:
    from augkd_edge.pipeline import Run

DEFAULT = "augkd"
Z = 1.0  # standard errors by which a candidate must beat the default on the eval split

RULE = (f"{DEFAULT} unless another candidate's eval-split top-1 is higher by more than {Z:g} standard error of the "
        "difference (Agresti-Caffo); among those the best eval top-1, then the lower eval CE, then the simpler method ("
        + ", ".join(AUTO_CANDIDATES) + ", simplest first)")


def evidence(top1: float, baseline: float, n: int) -> float:
    """How many standard errors ``top1`` lies above ``baseline`` on an eval split of ``n`` images (Agresti-Caffo:
    one right and one wrong image added to each count, so that 50/50 against 49/50 is not a certainty)."""
    if n < 1:
        return 0.0
    a, b = (round(top1 * n) + 1) / (n + 2), (round(baseline * n) + 1) / (n + 2)
    return (a - b) / math.sqrt((a * (1 - a) + b * (1 - b)) / (n + 2))


def choose(eval_top1: Mapping[str, float], order: tuple[str, ...] = AUTO_CANDIDATES,
           eval_loss: Mapping[str, float] | None = None, n_eval: int | None = None) -> str:
    """AuG-KD unless a candidate's eval top-1 beats it by more than ``Z`` standard errors on ``n_eval`` images;
    among those (and AuG-KD) the highest eval top-1, then the lowest eval CE (when every candidate has one), then
    the first in ``order``. ``n_eval`` None: no evidence bar (the plain best eval top-1)."""
    if not eval_top1:
        raise ValueError("no candidate to choose from")
    ranked = [m for m in order if m in eval_top1] + [m for m in eval_top1 if m not in order]
    if n_eval is not None and DEFAULT in eval_top1:
        ranked = [m for m in ranked
                  if m == DEFAULT or evidence(eval_top1[m], eval_top1[DEFAULT], n_eval) > Z]
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
    base, n_eval = candidates[DEFAULT]["eval"]["top1"], len(run.y["eval"])
    chosen = choose({m: c["eval"]["top1"] for m, c in candidates.items()},
                    eval_loss={m: c["eval"]["loss"] for m, c in candidates.items()}, n_eval=n_eval)
    run.student.load_state_dict(students[chosen])
    run.auto = {"candidates": candidates, "chosen": chosen, "rule": RULE, "n_eval": n_eval}
    for method, c in candidates.items():
        lead = "" if method == DEFAULT else f"  lead {evidence(c['eval']['top1'], base, n_eval):+.2f} SE"
        run.echo(f"  {method:14s} eval top-1 {c['eval']['top1']:.4f}  CE {c['eval']['loss']:.4f}{lead}"
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


def _against_default(results: Mapping[str, Any], method: str, top1: float) -> str:
    """A candidate's eval lead over AuG-KD in standard errors ('' for AuG-KD or results without ``n_eval``)."""
    auto = results.get("auto") or {}
    base = (auto.get("candidates") or {}).get(DEFAULT)
    if method == DEFAULT or base is None or auto.get("n_eval") is None:
        return ""
    return f"{evidence(top1, base['eval']['top1'], auto['n_eval']):+.2f}"


def auto_markdown(results: dict[str, Any]) -> list[str]:
    """``--method auto``: every candidate's eval and test top-1, and which student the run kept."""
    rows = candidate_rows(results)
    if not rows:
        return []
    auto = results["auto"]
    lines = ["## Which student to ship (`--method auto`)", "",
             f"Chosen: **{auto['chosen']}** ({auto['rule']}). The test split is shown, never used to choose.", "",
             f"| candidate | eval top-1 | eval CE | lead over {DEFAULT} (SE) | test top-1 | |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {m} | {ev:.4f} | {_ce(ce)} | {_against_default(results, m, ev)} | {te:.4f} | "
              f"{'shipped' if chosen else ''} |" for m, ev, ce, te, chosen in rows]
    return lines + [""]


def cli_lines(results: Mapping[str, Any]) -> list[str]:
    """The closing lines of an auto run in the terminal: every candidate, and which one shipped."""
    rows = candidate_rows(results)
    if not rows:
        return []
    lines = [f"\n--method auto ({results['auto']['rule']}):"]
    lines += [f"  {m:14s} eval top-1 {ev:.4f}" + (f"  CE {ce:.4f}" if ce is not None else "")
              + (f"  lead {lead} SE" if (lead := _against_default(results, m, ev)) else "")
              + f"  test top-1 {te:.4f}" + ("  <- shipped" if chosen else "") for m, ev, ce, te, chosen in rows]
    return lines
