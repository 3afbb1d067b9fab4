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


def write_json(obj: Any, path: str | Path) -> Path:
    from augkd_edge.checkpoint import write_text_atomic

    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)
