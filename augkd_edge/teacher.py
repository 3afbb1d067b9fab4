"""Teacher training on the teacher domain.

In the OOD-KD setting the teacher normally arrives trained; this exists so the
embedded benchmark (and users without a teacher) can make one, and so the shift
is visible: the report shows the teacher on its own eval split and on another
domain. An undertrained teacher is useless across a shift (docs/decisions.md,
"Teacher epochs and learning rate"), hence the second number.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from augkd_edge.config import TeacherRecipe
from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from augkd_edge.config import DistillConfig
    from augkd_edge.data import Domain


# The teacher is an input of the experiment, like a downloaded one: trained
# once with a fixed seed and shared by every student seed.
TEACHER_SEED = 0


@dataclasses.dataclass
class TeacherSettings(TeacherRecipe):
    """Teacher training options (CLI flags of ``augkd-edge teacher``): the recipe and what it trains."""

    arch: str = "resnet34"
    seed: int = 0
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

    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, file_fingerprint, save_splits, teacher_split
    from augkd_edge.distributed import current
    from augkd_edge.evaluate import evaluate_classifier
    from augkd_edge.rundir import save_trained_model

    main = current().is_main  # under torchrun every rank trains, rank 0 writes
    out_dir = Path(out_dir)
    torch.manual_seed(settings.seed)
    splits = teacher_split(domain.labels, seed=settings.seed, eval_frac=settings.eval_frac)
    train_idx = torch.as_tensor(splits["train"], dtype=torch.long)
    eval_idx = torch.as_tensor(splits["eval"], dtype=torch.long)
    model = _initial_model(settings, len(domain.classes), device, echo if main else None)
    # Written only once the inputs are known to be good: a failed start leaves no half-made folder.
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        save_splits(out_dir / "splits.json", {"teacher": splits}, data={"teacher": file_fingerprint(domain)})
    t0 = time.perf_counter()
    result = _fit_teacher(model, domain, settings, train_idx, eval_idx, out_dir, resume=resume, progress=progress,
                          checkpoint_every=checkpoint_every, device=device)
    model.load_state_dict(result.best_state["student"])
    model.eval()
    eval_acc = evaluate_classifier(model, domain.images[eval_idx], domain.labels[eval_idx], IMAGENET_MEAN, IMAGENET_STD)
    other = _other_domains(model, domain, also_eval or [])
    model_path = out_dir / "teacher.pt"
    if main:
        save_trained_model(model_path, model, arch=settings.arch, domain=domain, data=domain.name,
                           input_size=settings.input_size, splits=splits, role="teacher",
                           best_epoch=result.best_epoch)
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
        from augkd_edge.checkpoint import write_text_atomic

        write_text_atomic(json.dumps(results, indent=2) + "\n", out_dir / "results.json")
        write_text_atomic(_teacher_report(results), out_dir / "report.md")
    return TeacherResult(model, model_path, eval_acc, other, wall)


def _initial_model(settings: TeacherSettings, num_classes: int, device: "torch.device",
                   echo: Callable[[str], None] | None) -> "nn.Module":
    """The untrained teacher: random init, or the starting weights of ``settings.weights``."""
    from augkd_edge.models.zoo import build_classifier

    model = build_classifier(settings.arch, num_classes)
    if settings.weights is not None:
        from augkd_edge.models.weights import initialise

        line = initialise(model, settings.arch, settings.weights, "--teacher-weights")
        if echo is not None:
            echo(line)
    return model.to(device)


def _fit_teacher(model: "nn.Module", domain: "Domain", settings: TeacherSettings, train_idx: "torch.Tensor",
                 eval_idx: "torch.Tensor", out_dir: Path, *, resume: bool, progress: bool, checkpoint_every: int,
                 device: "torch.device") -> Any:
    """The teacher trains like a student without a teacher: CE, one shared loop (``student_stage``)."""
    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, make_augment
    from augkd_edge.device import prefetch_depth
    from augkd_edge.engine import fit
    from augkd_edge.metrics_log import MetricsLog
    from augkd_edge.student_stage import StudentStage

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
    return fit(stage, settings.epochs, out_dir / "teacher.ckpt", log=MetricsLog(out_dir / "metrics.jsonl"),
               resume=resume, progress=progress, fingerprint=fingerprint, checkpoint_every=checkpoint_every,
               prefetch_batches=prefetch_depth(device))


def _other_domains(model: "nn.Module", domain: "Domain", others: list["Domain"]) -> dict[str, dict[str, float]]:
    """The trained teacher's accuracy on other domains (all their images), to show the shift."""
    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, check_same_classes
    from augkd_edge.evaluate import evaluate_classifier

    other: dict[str, dict[str, float]] = {}
    for dom in others:
        check_same_classes(domain, dom)
        acc = evaluate_classifier(model, dom.images, dom.labels, IMAGENET_MEAN, IMAGENET_STD)
        other[dom.name] = {**acc, "images": len(dom.labels)}
    return other


def _subset(domain: "Domain", max_images: int | None, seed: int) -> "Domain":
    """A stratified, seeded subset (the quick preset caps teacher-domain images to bound CPU time)."""
    import numpy as np

    if max_images is None or max_images >= len(domain.labels):
        return domain
    from augkd_edge.data import teacher_split

    frac = max_images / len(domain.labels)
    keep = np.sort(teacher_split(domain.labels, seed=seed, eval_frac=frac)["eval"])
    return dataclasses.replace(domain, images=domain.images[keep], labels=domain.labels[keep],
                               files=None if domain.files is None else [domain.files[i] for i in keep])


def obtain_teacher(
    cfg: "DistillConfig", num_classes: int, *, device: "torch.device", cache_dir: Path, progress: bool,
    checkpoint_every: int = 0, given: "nn.Module | None" = None, echo: Callable[[str], None] | None = None,
) -> tuple["nn.Module", dict[str, Any] | None, float]:
    """The user's teacher file (``given`` when already loaded), or a teacher trained on ``teacher_data``
    and cached by its config.

    Returns (teacher, its own-domain eval accuracy or None, wall seconds spent).
    """
    from augkd_edge.engine import config_fingerprint
    from augkd_edge.models.loading import load_teacher

    t0 = time.perf_counter()
    if cfg.teacher_file:
        if given is None:
            given = load_teacher(cfg.teacher_file, cfg.teacher_arch, num_classes, input_size=cfg.input_size)
        return given.to(device), None, time.perf_counter() - t0

    from augkd_edge.data import load_domain
    from augkd_edge.models.loading import load_model_file

    tc = cfg.teacher
    recipe = {f.name: getattr(tc, f.name) for f in dataclasses.fields(TeacherRecipe)}
    settings = TeacherSettings(arch=cfg.teacher_arch, seed=TEACHER_SEED, input_size=cfg.input_size, amp=cfg.amp,
                               weights=cfg.teacher_weights, **recipe)
    key = config_fingerprint({"data": cfg.teacher_data, "max_images": tc.max_images, **settings_key(settings),
                              "format": 2})
    tdir = cache_dir / "teachers" / f"{cfg.teacher_arch}-{key}"
    results_path = tdir / "results.json"
    if (tdir / "teacher.pt").exists() and results_path.exists():
        teacher, _ = load_model_file(tdir / "teacher.pt")
        own = json.loads(results_path.read_text())["eval"]
        return teacher.to(device), own, time.perf_counter() - t0
    domain = _subset(load_domain(cfg.teacher_data, cfg.input_size), tc.max_images, TEACHER_SEED)
    if len(domain.classes) != num_classes:
        raise UserError(
            f"teacher data {cfg.teacher_data!r} has {len(domain.classes)} classes, the student data {num_classes}."
        )
    result = train_teacher(domain, settings, tdir, device=device, resume=True, progress=progress,
                           checkpoint_every=checkpoint_every, echo=echo)
    return result.model, result.eval_acc, time.perf_counter() - t0


def teacher_domain_energy(
    cfg: "DistillConfig", teacher: "nn.Module", generator: "nn.Module | None"
) -> tuple[float | None, str | None]:
    """The teacher's mean energy on its own domain, and what it was measured on.

    The bounded anchor loss stops rewarding certainty at this level, and the
    health check compares the anchors' energy with it (docs/method.md). A
    teacher trained here has its own eval split; a teacher file comes without
    its data, so Module 1's generated images (drawn to look like the teacher's
    domain) stand in.
    """
    import torch

    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, load_domain, teacher_split
    from augkd_edge.evaluate import teacher_energies

    if not cfg.teacher_file:
        domain = _subset(load_domain(cfg.teacher_data, cfg.input_size), cfg.teacher.max_images, TEACHER_SEED)
        idx = teacher_split(domain.labels, seed=TEACHER_SEED, eval_frac=cfg.teacher.eval_frac)["eval"]
        images, source = domain.images[torch.as_tensor(idx, dtype=torch.long)], "teacher-domain eval split"
    elif generator is not None:
        device = next(generator.parameters()).device
        z = torch.randn(256, cfg.data_free.latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
        generator.eval()
        with torch.no_grad():
            images, source = generator(z.to(device)).float().cpu(), "Module 1 generator samples"
    else:
        return None, None
    return float(teacher_energies(teacher, images, IMAGENET_MEAN, IMAGENET_STD).mean()), source


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
