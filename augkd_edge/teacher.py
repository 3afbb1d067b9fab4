"""Teacher training on the teacher domain.

In the OOD-KD setting the teacher normally arrives trained; this exists so the
embedded benchmark (and users without a teacher) can make one, and so the shift
is visible: the report shows the teacher on its own eval split and on another
domain. An undertrained teacher is useless across a shift (METHOD.md), hence
the second number.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from augkd_edge.data import Domain


@dataclasses.dataclass
class TeacherSettings:
    """Teacher training options (CLI flags of ``augkd-edge teacher``)."""

    arch: str = "resnet34"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.02
    weight_decay: float = 5e-4
    seed: int = 0
    eval_frac: float = 0.2
    input_size: int = 32
    amp: str = "off"
    # Starting weights: a torchvision weights name or a state_dict file (augkd_edge/models/weights.py); None = random.
    weights: str | None = None


def settings_key(settings: TeacherSettings) -> dict[str, Any]:
    """The settings that identify a trained teacher; float32 ("off") keys stay as before ``amp`` existed, and
    random-init keys as before ``weights`` did. Weights are keyed by what they are (torchvision entry or file hash)."""
    key = dataclasses.asdict(settings)
    if key["amp"] == "off":
        del key["amp"]
    if key["weights"] is None:
        del key["weights"]
    else:
        from augkd_edge.models.weights import resolve

        key["weights"] = resolve(settings.arch, settings.weights, "--teacher-weights").identity()
    return key


@dataclasses.dataclass
class TeacherResult:
    model: "nn.Module"
    model_path: Path
    eval_acc: dict[str, float]
    other_acc: dict[str, dict[str, float]]
    wall_s: float


def train_teacher(
    domain: "Domain",
    settings: TeacherSettings,
    out_dir: str | Path,
    *,
    device: "torch.device",
    also_eval: list["Domain"] | None = None,
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 0,
    echo: Callable[[str], None] | None = None,
) -> TeacherResult:
    """Train (or resume) a teacher; writes teacher.pt, metrics.jsonl, results.json, report.md."""
    import torch

    from augkd_edge.checkpoint import write_text_atomic
    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, file_fingerprint, save_splits, teacher_split
    from augkd_edge.distributed import current
    from augkd_edge.engine import MetricsLog, evaluate_classifier, fit, prefetch_depth
    from augkd_edge.method.common import StudentStage, make_augment
    from augkd_edge.models.loading import ModelMeta, save_model_file
    from augkd_edge.models.zoo import build_classifier

    main = current().is_main  # under torchrun every rank trains, rank 0 writes
    out_dir = Path(out_dir)
    torch.manual_seed(settings.seed)
    splits = teacher_split(domain.labels, seed=settings.seed, eval_frac=settings.eval_frac)
    train_idx = torch.as_tensor(splits["train"], dtype=torch.long)
    eval_idx = torch.as_tensor(splits["eval"], dtype=torch.long)

    model = build_classifier(settings.arch, len(domain.classes))
    if settings.weights is not None:
        from augkd_edge.models.weights import initialise

        line = initialise(model, settings.arch, settings.weights, "--teacher-weights")
        if echo is not None and main:
            echo(line)
    model = model.to(device)
    # Written only once the inputs are known to be good: a failed start leaves no half-made folder.
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        save_splits(out_dir / "splits.json", {"teacher": splits}, data={"teacher": file_fingerprint(domain)})
    # The teacher trains like a student without a teacher: CE, one shared loop.
    stage = StudentStage(
        "teacher",
        model,
        domain.images[train_idx],
        domain.labels[train_idx],
        domain.images[eval_idx],
        domain.labels[eval_idx],
        augment=make_augment(domain.kind),
        optimizer="sgd",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        amp=settings.amp,
    )
    fingerprint = json.dumps({"data": domain.name, "trainer": 2, **settings_key(settings)}, sort_keys=True)
    t0 = time.perf_counter()
    result = fit(
        stage,
        settings.epochs,
        out_dir / "teacher.ckpt",
        log=MetricsLog(out_dir / "metrics.jsonl"),
        resume=resume,
        progress=progress,
        fingerprint=fingerprint,
        checkpoint_every=checkpoint_every,
        prefetch_batches=prefetch_depth(device),
    )
    model.load_state_dict(result.best_state["student"])
    model.eval()
    eval_acc = evaluate_classifier(model, domain.images[eval_idx], domain.labels[eval_idx], IMAGENET_MEAN, IMAGENET_STD)
    other: dict[str, dict[str, float]] = {}
    for dom in also_eval or []:
        from augkd_edge.data import check_same_classes

        check_same_classes(domain, dom)
        acc = evaluate_classifier(model, dom.images, dom.labels, IMAGENET_MEAN, IMAGENET_STD)
        other[dom.name] = {**acc, "images": len(dom.labels)}
    meta = ModelMeta(
        arch=settings.arch,
        num_classes=len(domain.classes),
        class_names=list(domain.classes),
        input_size=settings.input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={
            "data": domain.name,
            "splits": {k: [int(i) for i in v] for k, v in splits.items()},
            "data_fingerprint": file_fingerprint(domain),
            "role": "teacher",
            "best_epoch": result.best_epoch,
        },
    )
    model_path = out_dir / "teacher.pt"
    if main:
        save_model_file(model_path, model, meta)
    wall = result.wall_s if result.wall_s else time.perf_counter() - t0
    results = {
        "schema": 1,
        "kind": "teacher",
        "data": domain.name,
        "settings": dataclasses.asdict(settings),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "eval": eval_acc,
        "also_eval": other,
        "best_epoch": result.best_epoch,
        "wall_s": round(wall, 2),
        "device": str(device),
        "processes": current().world,
    }
    if main:
        write_text_atomic(json.dumps(results, indent=2) + "\n", out_dir / "results.json")
        write_text_atomic(_teacher_report(results), out_dir / "report.md")
    return TeacherResult(model, model_path, eval_acc, other, wall)


def _teacher_report(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"# Teacher: {s['arch']} on `{results['data']}`",
        "",
        f"{s['epochs']} epochs, batch {s['batch_size']}, lr {s['lr']}, seed {s['seed']}, "
        f"best epoch {results['best_epoch']}, {results['wall_s']:.0f} s on {results['device']}.",
        "",
        "| data | split | images | top-1 | top-3 | top-5 |",
        "|---|---|---:|---:|---:|---:|",
        f"| `{results['data']}` (own domain) | eval | {results['split_sizes']['eval']} | "
        + " | ".join(f"{results['eval'][k]:.4f}" for k in ("top1", "top3", "top5"))
        + " |",
    ]
    for name, acc in results["also_eval"].items():
        lines.append(
            f"| `{name}` (other domain) | all | {acc['images']} | " + " | ".join(f"{acc[k]:.4f}" for k in ("top1", "top3", "top5")) + " |"
        )
    if results["also_eval"]:
        lines += [
            "",
            "The gap between the two rows is the domain shift: the part of the teacher's knowledge "
            "that does not carry over, which AuG-KD is built to filter.",
        ]
    return "\n".join(lines) + "\n"
