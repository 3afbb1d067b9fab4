"""The run report: pictures, curves and the "what was transferred" view.

A distillation run is only trustworthy if a person can see what each module
did: what the generator learned to draw (Module 1), how student images were
moved towards the teacher's domain (Module 2), what the student was trained on
along the curriculum (Module 3), and which part of the student domain the
teacher is certain about (the energy view). Everything here writes files under
the run folder and returns their relative names for ``report.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch


def save_grid(images: "torch.Tensor", path: str | Path, nrow: int = 10) -> Path:
    """[N,3,H,W] images in [0,1] as one PNG grid, upscaled so 32x32 digits are visible."""
    import torch.nn.functional as F
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[-1] < 64:
        x = F.interpolate(x, scale_factor=max(1, 64 // x.shape[-1]), mode="nearest")
    save_image(x, path, nrow=nrow, padding=2, pad_value=1.0)
    return path


def plot_curves(history: dict[str, list[dict[str, float]]], path: str | Path) -> Path | None:
    """One panel per stage: training losses and the eval selection metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [(name, rows) for name, rows in history.items() if rows]
    if not stages:
        return None
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], stages):
        epochs = [r["epoch"] for r in rows]
        keys = sorted({k for r in rows for k in r if k.startswith(("train_", "eval_top1", "select"))})
        for key in keys:
            ax.plot(epochs, [r.get(key, float("nan")) for r in rows], label=key, marker="." if len(rows) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def energy_summary(
    energy: Sequence[float], labels: Sequence[int], preds: Sequence[int], classes: Sequence[str]
) -> dict[str, Any]:
    """Per-class teacher certainty on the student domain.

    Low energy means the teacher is sure. A class where the teacher is both sure
    and right is knowledge that transfers; sure and wrong is the harmful part
    AuG-KD is meant to filter out.
    """
    import numpy as np

    e = np.asarray(energy, dtype=np.float64)
    y = np.asarray(labels)
    p = np.asarray(preds)
    if len(e) == 0:
        return {"n": 0, "per_class": []}
    sure = e <= np.median(e)
    rows = []
    for c, name in enumerate(classes):
        m = y == c
        if not m.any():
            continue
        rows.append(
            {
                "class": name,
                "n": int(m.sum()),
                "mean_energy": float(e[m].mean()),
                "teacher_top1": float((p[m] == c).mean()),
                "sure_fraction": float(sure[m].mean()),
                "sure_and_wrong": int((sure & m & (p != c)).sum()),
            }
        )
    return {
        "n": int(len(e)),
        "median_energy": float(np.median(e)),
        "teacher_top1": float((p == y).mean()),
        "teacher_top1_sure_half": float((p[sure] == y[sure]).mean()) if sure.any() else float("nan"),
        "teacher_top1_unsure_half": float((p[~sure] == y[~sure]).mean()) if (~sure).any() else float("nan"),
        "per_class": rows,
    }


def energy_markdown(summary: dict[str, Any]) -> list[str]:
    if not summary.get("n"):
        return []
    lines = [
        "## What the teacher knows about the student domain",
        "",
        f"Teacher energy score `-logsumexp(logits)` on the {summary['n']} labelled student-domain training "
        f"images (lower = more certain; per-sample values in `uncertainty.json`). The teacher is right on "
        f"{summary['teacher_top1_sure_half']:.0%} of the images it is most certain about (lower half of energy) "
        f"and on {summary['teacher_top1_unsure_half']:.0%} of the others.",
        "",
        "| class | images | mean energy | teacher top-1 | in certain half | certain but wrong |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["per_class"]:
        lines.append(
            f"| {r['class']} | {r['n']} | {r['mean_energy']:.2f} | {r['teacher_top1']:.2f} | "
            f"{r['sure_fraction']:.2f} | {r['sure_and_wrong']} |"
        )
    return lines + [""]


def accuracy_table(rows: list[tuple[str, dict[str, float] | None]]) -> list[str]:
    lines = ["| model / data | top-1 | top-3 | top-5 |", "|---|---:|---:|---:|"]
    for name, acc in rows:
        if acc is None:
            continue
        lines.append(f"| {name} | " + " | ".join(f"{acc.get(k, float('nan')):.4f}" for k in ("top1", "top3", "top5")) + " |")
    return lines


def health_markdown(results: dict[str, Any]) -> list[str]:
    """The Module 1 / Module 2 health numbers and, in words, what failed and what to try."""
    from augkd_edge.health import FIDELITY_LOST

    gen, rec, anc = results.get("generator"), results.get("reconstruction"), results.get("anchor")
    if rec is None and anc is None:
        return []
    raw = results["teacher"]["student_eval"]["top1"]
    lines = [
        "## Are Modules 1 and 2 doing their job? (eval split)",
        "",
        "| check | value | healthy when |",
        "|---|---:|---|",
        f"| teacher top-1 on the raw images | {raw:.2f} | (reference) |",
    ]
    if gen is not None:
        lines.append(f"| teacher energy on the generator's samples G(z) | {gen['teacher_energy_mean']:.2f} | <= on the raw "
                     f"images ({gen['student_raw_energy_mean']:.2f}) |")
    if rec is not None:
        lines.append(f"| teacher top-1 on reconstructions G(E(x, y)) | {rec['teacher_top1']:.2f} | >= the raw images' |")
        if rec.get("fidelity") is not None:
            lines.append(f"| fidelity of reconstructions (closest to their own image among their class) | "
                         f"{rec['fidelity']:.2f} | >= {FIDELITY_LOST} (chance 0.50) |")
    if anc is not None:
        ref = anc["teacher_domain_energy_mean"]
        lines += [
            f"| teacher top-1 on anchors | {anc['teacher_top1']:.2f} | >= 0.90 (collapse below 0.5) |",
            f"| largest share of anchors in one class | {anc['max_class_share']:.2f} | <= 0.30 (collapse above 0.5) |",
            f"| mean teacher energy on anchors | {anc['energy_mean']:.2f} | <= its own domain's "
            + (f"({ref:.2f}, {results.get('teacher_domain_energy_source')})" if ref is not None else "") + " |",
            f"| pixel distance between anchors of one class | {anc['same_class_distance']:.3f} | > 0 (images: "
            f"{anc['source_same_class_distance']:.3f}) |",
        ]
        if anc.get("fidelity") is not None:
            lines.append(f"| fidelity of anchors (closest to their own image among their class) | {anc['fidelity']:.2f} "
                         f"| >= {FIDELITY_LOST} (chance 0.50) |")
        if results.get("anchor_share") is not None:
            lines.append("| anchor share w in Module 3's mixtures (from the fidelity, capped by the KD weight) "
                         f"| {results['anchor_share']:.2f} "
                         "| 1 (0 = the no-anchor ablation) |")
    lines.append("")
    problems = results.get("health_problems") or []
    lines += [f"**Warning.** {p}" for p in problems] or ["Both modules pass these checks."]
    return lines + [""]


def write_json(obj: Any, path: str | Path) -> Path:
    from augkd_edge.checkpoint import write_text_atomic

    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def write_uncertainty(path: Path, energy, labels, preds, indices, classes) -> None:  # type: ignore[no-untyped-def]
    """uncertainty.json: the teacher's energy and prediction per labelled student-domain training image."""
    write_json(
        {
            "schema": 1,
            "what": "teacher energy -logsumexp(logits) per labelled student-domain training image (low = certain)",
            "classes": list(classes),
            "samples": [
                {"index": int(i), "label": int(lab), "teacher_pred": int(p), "energy": round(float(e), 5)}
                for i, lab, p, e in zip(indices, labels.tolist(), preds.tolist(), energy.tolist())
            ],
        },
        path,
    )


def _one_per_class(labels: "torch.Tensor", per_class: int = 1) -> "torch.Tensor":
    import torch

    picks = [torch.nonzero(labels == c).flatten()[:per_class] for c in torch.unique(labels)]
    return torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)


def generated_views(
    train_x: "torch.Tensor",
    train_y: "torch.Tensor",
    *,
    generator: Any,
    encoder: Any,
    anchor: Any,
    latent_dim: int,
    factors: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0),
    anchor_share: float | None = None,
) -> dict[str, "torch.Tensor"]:
    """The pictures of Modules 1-3, computed with the trained (frozen) nets.

    ``anchor_share``: Module 3's measured anchor share w, so the mixup row shows what the student trained on.

    - ``generator``: G(z) for a fixed noise batch;
    - ``anchors``: per class, a student image, its reconstruction G(E(x, y)) and its anchor G(A(E(x, y), y));
    - ``mixup``: per class, the Module 3 training image x_m at each stage factor f.
    """
    import torch

    from augkd_edge.method.mixup import mixup_images, mixup_latent

    out: dict[str, torch.Tensor] = {}
    if generator is None:
        return out
    device = next(generator.parameters()).device
    generator.eval()
    with torch.no_grad():
        z = torch.randn(40, latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
        out["generator"] = generator(z).cpu()
        if encoder is None:
            return out
        encoder.eval()
        idx = _one_per_class(train_y)
        x, y = train_x[idx].to(device), train_y[idx].to(device)
        _, mu, _ = encoder(x, y)
        rows = [x, generator(mu)]
        if anchor is not None:
            anchor.eval()
            rows.append(generator(mixup_latent(mu, y, anchor, 0.0)))  # f = 0: the anchor z_a
        out["anchors"] = torch.cat(rows).cpu()
        weight = 1.0 if anchor_share is None else anchor_share
        columns = [mixup_images(x, mu, y, f, generator, anchor, weight) for f in factors]
        # one row per class, one column per f
        out["mixup"] = torch.stack(columns, dim=1).flatten(0, 1).cpu()
    return out


def _init_line(cfg: Any) -> str:
    """How the networks were initialised (``--student-weights`` / ``--teacher-weights``)."""
    student = getattr(cfg, "student_weights", None)
    teacher = None if cfg.teacher_file else getattr(cfg, "teacher_weights", None)
    if not student and cfg.teacher_file:
        return "The student starts from scratch (no --student-weights)."
    if not student and not teacher:
        return ("Both networks start from scratch (no --student-weights / --teacher-weights); with a pretrained "
                "teacher the teacher rows, and so what distillation can add, would be higher.")
    parts = [f"the {role} from `{spec}`" for role, spec in (("student", student), ("teacher", teacher)) if spec]
    return "Pretrained starting weights: " + " and ".join(parts) + " (head replaced for the class count)."


def write_run_report(
    out_dir: str | Path,
    results: dict[str, Any],
    history: dict[str, list[dict[str, float]]],
    classes: Sequence[str],
    train_x: "torch.Tensor",
    train_y: "torch.Tensor",
    *,
    generator: Any,
    encoder: Any,
    anchor: Any,
    cfg: Any,
) -> Path:
    """report.md with the accuracy table, pictures, curves and the teacher-energy view."""
    from augkd_edge.checkpoint import write_text_atomic

    out_dir = Path(out_dir)
    img = out_dir / "images"
    img.mkdir(parents=True, exist_ok=True)
    factors = (0.2, 0.4, 0.6, 0.8, 1.0)
    views = generated_views(train_x, train_y, generator=generator, encoder=encoder, anchor=anchor,
                            latent_dim=cfg.data_free.latent_dim, factors=factors,
                            anchor_share=results.get("anchor_share"))
    lines = _summary_lines(results, cfg)
    if len(train_y):
        student_samples(train_x, train_y, img / "student_samples.png")
        lines += ["## The student domain", "", f"Labelled training images of `{results['student_data']}`, one row "
                  "per class.", "", "![student samples](images/student_samples.png)", ""]
    lines += _module_views(views, img, results, anchor is not None, factors)
    if plot_curves(history, img / "curves.png") is not None:
        lines += ["## Curves", "", "![curves](images/curves.png)", ""]
    unc_path = out_dir / "uncertainty.json"
    if unc_path.exists():
        unc = json.loads(unc_path.read_text())["samples"]
        summary = energy_summary([s["energy"] for s in unc], [s["label"] for s in unc],
                                 [s["teacher_pred"] for s in unc], classes)
        lines += energy_markdown(summary)
    return write_text_atomic("\n".join(lines) + "\n", out_dir / "report.md")


def _summary_lines(results: dict[str, Any], cfg: Any) -> list[str]:
    """The report's head: what ran, the accuracy table, the unlabelled pool, initialisation and wall times."""
    from augkd_edge.data.unlabelled import results_line

    t = results["teacher"]
    return [
        f"# augkd-edge distill: `{results['method']}`, seed {results['seed']}",
        "",
        f"Teacher `{results['teacher_arch']}` ({results['teacher_file'] or results['teacher_data']}) -> student "
        f"`{results['student_arch']}` on `{results['student_data']}` with {cfg.shots} labelled images per class "
        f"(splits: " + ", ".join(f"{k} {v}" for k, v in results["split_sizes"].items()) + f"), preset `{cfg.preset}`, "
        f"device {results['device']}.",
        "",
        *accuracy_table([
            ("teacher on its own domain (eval split)", t["own_eval"]),
            ("teacher on the student domain (test split)", t["student_test"]),
            (f"student `{results['method']}` on the student domain (eval split)", results["eval"]),
            (f"**student `{results['method']}` on the student domain (test split)**", results["test"]),
        ]),
        "",
        *([f"{pool}.", ""] if (pool := results_line(results.get("unlabelled"))) else []),
        _init_line(cfg),
        "",
        "Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["stage_wall_s"].items()) + ".",
        "",
    ]


def _module_views(views: dict[str, Any], img: Path, results: dict[str, Any], has_anchor: bool,
                  factors: Sequence[float]) -> list[str]:
    """The pictures of Modules 1-3 (saved under ``img``) and the health table, as report lines."""
    from augkd_edge.config import METHODS

    lines: list[str] = []
    if "generator" in views:
        save_grid(views["generator"], img / "generator.png", nrow=10)
        lines += ["## Module 1: what the generator draws for the teacher", "", "![generator](images/generator.png)", ""]
    if "anchors" in views:
        save_grid(views["anchors"], img / "anchors.png", nrow=len(views["anchors"]) // (3 if has_anchor else 2))
        lines += [
            "## Module 2: student images and their anchors",
            "",
            "Rows: student-domain image x (one per class); its reconstruction G(E(x, y)); "
            + ("its anchor G(A(E(x, y), y)) in the teacher's domain." if has_anchor else "(no AnchorNet in this method)."),
            "",
            "![anchors](images/anchors.png)",
            "",
        ]
    from augkd_edge.auto import auto_markdown

    lines += health_markdown(results) + auto_markdown(results)
    if "mixup" in views and METHODS[results["method"]].mixup:
        save_grid(views["mixup"], img / "mixup.png", nrow=len(factors))
        lines += [
            "## Module 3: the curriculum",
            "",
            "One row per class; columns are the stage factor f = " + ", ".join(str(f) for f in factors)
            + " (f = 1 is the real image): x_m = (1 - f) G((1 - f) (w z_a + (1 - w) z) + f z) + f x"
            + (f", with the measured anchor share w = {results['anchor_share']:.2f}."
               if results.get("anchor_share") is not None else "."),
            "",
            "![mixup](images/mixup.png)",
            "",
        ]
    return lines


def student_samples(images: "torch.Tensor", labels: "torch.Tensor", path: str | Path, *, per_class: int = 8) -> Path:
    """A PNG grid of student-domain images: one row per class present, its first ``per_class`` images.

    Shows a reader what the student domain looks like (e.g. MNIST-M's digits on
    colour patches). A class with fewer images is padded with white tiles so
    the rows stay aligned. ``images`` ``[N, 3, H, W]``
    in [0, 1], ``labels`` ``[N]``; returns the written path.
    """
    import torch

    if len(images) == 0 or per_class < 1:
        raise ValueError("student_samples needs at least one image and per_class >= 1")
    blank = torch.ones_like(images[:1])
    rows = []
    for c in torch.unique(labels):
        picked = images[torch.nonzero(labels == c).flatten()[:per_class]]
        rows += [picked, blank.expand(per_class - len(picked), -1, -1, -1)]
    return save_grid(torch.cat(rows), path, nrow=per_class)
