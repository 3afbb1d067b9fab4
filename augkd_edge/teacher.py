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
from typing import TYPE_CHECKING, Any, Iterable

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


class ClassifierStage:
    """Cross-entropy training of one classifier on labelled [0,1] images.

    SGD with Nesterov momentum and a per-epoch cosine schedule: it reaches a
    strong from-scratch ResNet on digits in a few epochs on a CPU.
    """

    def __init__(
        self,
        name: str,
        model: "nn.Module",
        train_x: "torch.Tensor",
        train_y: "torch.Tensor",
        eval_x: "torch.Tensor",
        eval_y: "torch.Tensor",
        *,
        kind: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        seed: int,
    ):
        import torch

        self.name = name
        self.model = model
        self.train_x, self.train_y = train_x, train_y
        self.eval_x, self.eval_y = eval_x, eval_y
        self.kind, self.mean, self.std = kind, mean, std
        self.batch_size, self.seed = batch_size, seed
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(epochs, 1))
        self._mean_t = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self._std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    def train_mode(self) -> None:
        self.model.train()

    def batches(self, epoch: int) -> Iterable[tuple["torch.Tensor", "torch.Tensor"]]:
        import torch

        from augkd_edge.data import augment

        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_y), generator=gen)
        n_full = len(order) // self.batch_size * self.batch_size or len(order)
        for start in range(0, n_full, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = augment(self.train_x[idx], self.kind, gen).to(self.device, non_blocking=True)
            yield x, self.train_y[idx].to(self.device, non_blocking=True)

    def train_step(self, batch: tuple["torch.Tensor", "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        import torch.nn.functional as F

        x, y = batch
        logits = self.model((x - self._mean_t) / self._std_t)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def end_epoch(self, epoch: int) -> None:
        self.scheduler.step()

    def evaluate(self) -> dict[str, float]:
        from augkd_edge.engine import evaluate_classifier

        acc = evaluate_classifier(self.model, self.eval_x, self.eval_y, self.mean, self.std)
        return {f"eval_{k}": v for k, v in acc.items()} | {"select": 1.0 - acc["top1"]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def best_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}


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
) -> TeacherResult:
    """Train (or resume) a teacher; writes teacher.pt, metrics.jsonl, results.json, report.md."""
    import torch

    from augkd_edge.checkpoint import write_text_atomic
    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, save_splits, teacher_split
    from augkd_edge.engine import MetricsLog, evaluate_classifier, fit
    from augkd_edge.models.loading import ModelMeta, save_model_file
    from augkd_edge.models.zoo import build_classifier

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    splits = teacher_split(domain.labels, seed=settings.seed, eval_frac=settings.eval_frac)
    save_splits(out_dir / "splits.json", {"teacher": splits})
    train_idx = torch.as_tensor(splits["train"], dtype=torch.long)
    eval_idx = torch.as_tensor(splits["eval"], dtype=torch.long)

    model = build_classifier(settings.arch, len(domain.classes)).to(device)
    stage = ClassifierStage(
        "teacher",
        model,
        domain.images[train_idx],
        domain.labels[train_idx],
        domain.images[eval_idx],
        domain.labels[eval_idx],
        kind=domain.kind,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
    )
    fingerprint = json.dumps({"data": domain.name, **dataclasses.asdict(settings)}, sort_keys=True)
    t0 = time.perf_counter()
    result = fit(
        stage,
        settings.epochs,
        out_dir / "teacher.ckpt",
        log=MetricsLog(out_dir / "metrics.jsonl"),
        resume=resume,
        progress=progress,
        fingerprint=fingerprint,
    )
    model.load_state_dict(result.best_state["model"])
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
            "role": "teacher",
            "best_epoch": result.best_epoch,
        },
    )
    model_path = save_model_file(out_dir / "teacher.pt", model, meta)
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
    }
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
