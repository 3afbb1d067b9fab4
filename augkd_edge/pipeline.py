"""teacher -> Module 1 -> Module 2 -> Module 3 (or a baseline) in one run folder.

Run folder::

    config.json      the DistillConfig (a resume with another config is refused)
    splits.json      student-domain train/eval/test indices (+ the teacher's)
    metrics.jsonl    one line per stage epoch (engine.MetricsLog)
    ckpt/            one engine checkpoint per stage: data_free, anchor, mixup / baseline
    student.pt       the selected student (augkd-edge model file, with data spec and splits)
    uncertainty.json per-sample teacher energy on the student-domain training images
    results.json     versioned results (schema below), report.md + images/

Stages shared between methods (the teacher, Module 1, Module 2) depend only on
the config parts they use, so the accuracy benchmark points several methods of
one seed at one ``shared_dir`` and each stage is trained once.

results.json, schema 2 (2 added ``anchor``, ``reconstruction``)::

    {"schema": 2, "method", "seed", "settings": DistillConfig, "teacher_arch",
     "student_arch", "teacher_data", "student_data", "split_sizes": {...},
     "stage_wall_s": {"teacher", "data_free", "anchor", "<final stage>"},
     "eval": {"top1","top3","top5"}, "test": {...},
     "teacher": {"own_eval": {...} | null, "student_test": {...}, "student_eval": {...}},
     "anchor": {"teacher_top1", "max_class_share", "energy_mean", "teacher_domain_energy_mean",
                "same_class_distance", "source_same_class_distance"} | null,
     "reconstruction": {"teacher_top1"} | null,
     "generator": {"teacher_energy_mean", "student_raw_energy_mean"} | null,
     "teacher_domain_energy_source": "teacher-domain eval split" | "Module 1 generator samples" | null,
     "health_problems": [str],
     "device", "processes" (torchrun world size), "augkd_edge_version"}

``anchor``, ``reconstruction`` and ``generator`` are measured on the
student-domain eval split (``augkd_edge.health``); null for methods without
Module 2 / Module 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from augkd_edge import __version__
from augkd_edge.config import METHODS
from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from augkd_edge.config import DistillConfig
    from augkd_edge.data import Domain

RESULTS_SCHEMA = 2
# The teacher is an input of the experiment, like a downloaded one: trained
# once with a fixed seed and shared by every student seed.
TEACHER_SEED = 0
# Where a run is and how it runs, not what it computes: may change on resume.
RUN_ONLY_KEYS = ("out", "device")


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_started(out_dir: Path) -> bool:
    """Whether a stage of the run in ``out_dir`` has started (a checkpoint, a metrics line or results exist)."""
    metrics = out_dir / "metrics.jsonl"
    ckpt = out_dir / "ckpt"
    return ((metrics.exists() and metrics.stat().st_size > 0) or (out_dir / "results.json").exists()
            or (ckpt.is_dir() and any(ckpt.iterdir())))


def check_run_dir(cfg: "DistillConfig", out_dir: Path, resume: bool) -> None:
    """Refuse an --out that cannot take this run, before anything is written.

    A folder whose config.json was written but in which no stage started (the
    run failed on its inputs) is reused as if empty, with or without --resume.
    """
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.config import DistillConfig

    check_writable_dir(out_dir, "--out")
    cfg_path = out_dir / "config.json"
    if not cfg_path.exists() or not _run_started(out_dir):
        if resume and not cfg_path.exists():
            raise UserError(f"--resume: {out_dir} holds no run (no config.json); check --out, or drop --resume "
                            f"to start a new run there.")
        return
    if not resume:
        raise UserError(f"{out_dir} already holds a run; add --resume to continue it or choose another --out.")
    old = DistillConfig.from_file(cfg_path)
    diffs = [k for k in cfg.diff(old) if k not in RUN_ONLY_KEYS]
    if diffs:
        raise UserError(
            f"{cfg_path}: cannot resume with a changed configuration ({', '.join(diffs)} differ); "
            f"use the original options or another --out."
        )


def check_same_data(out_dir: Path, student_dom: "Domain") -> None:
    """A started run continues only on the image list its splits were drawn from (splits.json's fingerprint)."""
    from augkd_edge.data import check_fingerprint

    path = out_dir / "splits.json"
    if not _run_started(out_dir) or not path.exists():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("data", {}).get("student")
    except (OSError, ValueError, AttributeError):
        return  # an older or damaged split file: nothing recorded to compare with
    check_fingerprint(recorded, student_dom)


def prepare_run_dir(cfg: "DistillConfig", out_dir: Path, resume: bool) -> None:
    """Write config.json, or check it against the existing run when resuming.

    Under torchrun every rank checks before rank 0 writes (a rank checking
    after the write would see "a run already exists").
    """
    from augkd_edge.checkpoint import write_text_atomic
    from augkd_edge.distributed import current

    check_run_dir(cfg, out_dir, resume)
    dist = current()
    dist.barrier()
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cfg.to_json(), out_dir / "config.json")
    dist.barrier()


def check_inputs(cfg: "DistillConfig", student_dom: "Domain", cache_dir: Path) -> "nn.Module | None":
    """Everything a run needs that can be checked before it writes: names, class counts, the cache, the teacher.

    Returns the user's teacher (``cfg.teacher_file``) loaded and probed, or None.
    """
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.models.zoo import model_builder

    if len(student_dom.classes) < 2:
        raise UserError(f"student data {cfg.student_data!r} has one class ({student_dom.classes[0]!r}); "
                        f"a classifier needs at least 2 class folders.")
    model_builder(cfg.student_arch)
    check_weights(cfg.student_arch, cfg.student_weights, len(student_dom.classes), "--student-weights")
    if cfg.teacher_file:
        return load_teacher_file(cfg, student_dom.classes)
    model_builder(cfg.teacher_arch)
    check_weights(cfg.teacher_arch, cfg.teacher_weights, len(student_dom.classes), "--teacher-weights")
    check_writable_dir(cache_dir, "--cache-dir")
    return None


def check_weights(arch: str, spec: str | None, num_classes: int, flag: str) -> None:
    """Load ``--*-weights`` into a throwaway model, so a missing or unfitting file fails before anything is written."""
    if spec:
        from augkd_edge.models.weights import initialise
        from augkd_edge.models.zoo import build_classifier

        initialise(build_classifier(arch, num_classes), arch, spec, flag)


def load_teacher_file(cfg: "DistillConfig", class_names: list[str]) -> "nn.Module":
    """The user's teacher, checked on the run's input size, class count and (when recorded) class names."""
    from augkd_edge.models.loading import load_teacher

    return load_teacher(cfg.teacher_file, cfg.teacher_arch, len(class_names), input_size=cfg.input_size,
                        class_names=list(class_names))


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
    from augkd_edge.models.loading import load_teacher
    from augkd_edge.teacher import settings_key

    t0 = time.perf_counter()
    if cfg.teacher_file:
        if given is None:
            given = load_teacher(cfg.teacher_file, cfg.teacher_arch, num_classes, input_size=cfg.input_size)
        return given.to(device), None, time.perf_counter() - t0

    from augkd_edge.data import load_domain
    from augkd_edge.models.loading import load_model_file
    from augkd_edge.teacher import TeacherSettings, train_teacher

    tc = cfg.teacher
    settings = TeacherSettings(arch=cfg.teacher_arch, epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr,
                               weight_decay=tc.weight_decay, seed=TEACHER_SEED, eval_frac=tc.eval_frac,
                               input_size=cfg.input_size, amp=cfg.amp, weights=cfg.teacher_weights)
    key = _fingerprint({"data": cfg.teacher_data, "max_images": tc.max_images, **settings_key(settings),
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
    from augkd_edge.method.common import teacher_energies

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


def seed_stage(seed: int, name: str) -> None:
    """Seed the global RNG before a stage builds its networks and trains.

    Without it a stage would start from whatever RNG state the previous stage
    left, and a resumed run, where a finished stage returns from its
    checkpoint without drawing a number, would initialise the AnchorNet and
    draw Module 3's dropout masks differently from an uninterrupted run.
    """
    import torch

    torch.manual_seed(int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:12], 16))


def _stage_ckpt(shared: Path, name: str) -> Path:
    return shared / f"{name}.ckpt"


def run_distill(
    cfg: "DistillConfig",
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    cache_dir: str | Path,
    shared_dir: str | Path | None = None,
    echo: Callable[[str], None] = print,
    checkpoint_every: int = 0,
) -> dict[str, Any]:
    """Run ``cfg.method`` end to end; returns the results.json content.

    ``checkpoint_every``: also checkpoint every that many training steps
    (0: at epoch ends only). Under torchrun, call inside
    ``distributed.session``: every rank computes, rank 0 writes.
    """
    import torch

    from augkd_edge.data import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        check_same_classes,
        file_fingerprint,
        load_domain,
        save_splits,
        student_split,
    )
    from augkd_edge.distributed import current, device_for
    from augkd_edge.engine import MetricsLog, evaluate_classifier, fit, prefetch_depth
    from augkd_edge.method.common import make_augment, recompute_bn_stats, teacher_energies
    from augkd_edge.models.weights import initialise, resolve
    from augkd_edge.models.zoo import build_classifier

    out_dir = Path(out_dir)
    dist = current()
    if not dist.is_main:
        echo = _silent
    check_run_dir(cfg, out_dir, resume)  # validate everything before writing anything
    shared = Path(shared_dir) if shared_dir is not None else out_dir / "ckpt"
    ckpt_dir = out_dir / "ckpt"
    device = device_for(cfg.device)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    wall: dict[str, float] = {}

    # ---- data and splits ------------------------------------------------
    student_dom = load_domain(cfg.student_data, cfg.input_size)
    if not cfg.teacher_file:
        check_same_classes(load_domain(cfg.teacher_data, cfg.input_size), student_dom)
    num_classes = len(student_dom.classes)
    given_teacher = check_inputs(cfg, student_dom, Path(cache_dir))
    check_same_data(out_dir, student_dom)
    splits = student_split(student_dom.labels, cfg.shots, cfg.seed, cfg.eval_per_class, classes=student_dom.classes)
    prepare_run_dir(cfg, out_dir, resume)
    log = MetricsLog(out_dir / "metrics.jsonl")
    if dist.is_main:
        save_splits(out_dir / "splits.json", {"student": splits}, data={"student": file_fingerprint(student_dom)})
    idx = {k: torch.as_tensor(v, dtype=torch.long) for k, v in splits.items()}
    x = {k: student_dom.images[i] for k, i in idx.items()}
    y = {k: student_dom.labels[i] for k, i in idx.items()}
    augment = make_augment(student_dom.kind)
    echo(f"student domain {cfg.student_data}: {num_classes} classes, "
         + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f"; device {device}")

    # ---- teacher ------------------------------------------------------------
    teacher, teacher_own, wall["teacher"] = obtain_teacher(
        cfg, num_classes, device=device, cache_dir=Path(cache_dir), progress=progress,
        checkpoint_every=checkpoint_every, given=given_teacher, echo=echo,
    )
    teacher.eval()
    teacher_student = {
        split: evaluate_classifier(teacher, x[split], y[split], mean, std) for split in ("eval", "test")
    }
    energy = teacher_energies(teacher, x["train"], mean, std)
    preds = _predictions(teacher, x["train"], mean, std)
    if dist.is_main:
        _write_uncertainty(out_dir, energy, y["train"], preds, splits["train"], student_dom.classes)
    echo(f"teacher {cfg.teacher_arch}: "
         + (f"own-domain eval top-1 {teacher_own['top1']:.4f}, " if teacher_own else "")
         + f"student-domain test top-1 {teacher_student['test']['top1']:.4f}")

    # ---- student, same init for every method of a seed -------------------
    torch.manual_seed(cfg.seed)
    student = build_classifier(cfg.student_arch, num_classes)
    if cfg.student_weights:
        echo(initialise(student, cfg.student_arch, cfg.student_weights, "--student-weights"))
    student = student.to(device)
    common = dict(mean=mean, std=std, seed=cfg.seed, amp=cfg.amp)
    history: dict[str, list[dict[str, float]]] = {}
    generator = encoder = anchor = None
    teacher_id = cfg.teacher_file or cfg.teacher_data
    base_fp = {"teacher": teacher_id, "teacher_arch": cfg.teacher_arch, "teacher_cfg": dataclasses.asdict(cfg.teacher),
               "student_arch": cfg.student_arch, "seed": cfg.seed, "input_size": cfg.input_size}
    if cfg.amp != "off":  # keeps the fingerprints of float32 runs as they were
        base_fp["amp"] = cfg.amp
    for key, arch in (("student_weights", cfg.student_arch), ("teacher_weights", cfg.teacher_arch)):
        if getattr(cfg, key):  # what the weights are, not their name or path; random-init fingerprints stay
            base_fp[key] = resolve(arch, getattr(cfg, key), "--" + key.replace("_", "-")).identity()

    def run_stage(stage: Any, epochs: int, path: Path, fp: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = fit(stage, epochs, path, log=log, resume=True, progress=progress, fingerprint=_fingerprint(fp),
                     checkpoint_every=checkpoint_every, prefetch_batches=prefetch_depth(device))
        wall[stage.name] = result.wall_s
        history[stage.name] = result.history
        echo(f"  {stage.name}: best epoch {result.best_epoch}/{epochs}, "
             f"select {result.best_metrics.get('select', float('nan')):.4f} "
             f"({time.perf_counter() - t0:.0f} s this session)")
        return result.best_state

    if METHODS[cfg.method].data_free:
        from augkd_edge.method.data_free import DataFreeStage
        from augkd_edge.models.generative import Encoder, Generator

        dc = cfg.data_free
        seed_stage(cfg.seed, "data_free")
        generator = Generator(dc.latent_dim, cfg.input_size, width=dc.gen_width).to(device)
        encoder = Encoder(dc.latent_dim, num_classes, cfg.input_size, width=dc.gen_width).to(device)
        stage = DataFreeStage(teacher, student, generator, encoder, dc, **common)
        echo("Module 1 (data-free generator, encoder, student warm-up)")
        best = run_stage(stage, dc.epochs, _stage_ckpt(shared, "data_free"),
                         {**base_fp, "data_free": dataclasses.asdict(dc)})
        generator.load_state_dict(best["generator"])
        encoder.load_state_dict(best["encoder"])
        student.load_state_dict(best["student"])

    reference_energy, reference_source = (
        teacher_domain_energy(cfg, teacher, generator) if generator is not None else (None, None))
    if METHODS[cfg.method].anchor:
        from augkd_edge.method.anchor import AnchorStage
        from augkd_edge.method.common import freeze
        from augkd_edge.models.anchornet import AnchorNet

        ac = cfg.anchor
        seed_stage(cfg.seed, "anchor")
        anchor = AnchorNet(cfg.data_free.latent_dim, num_classes, ac.alpha, ac.hidden, ac.conditional_psi).to(device)
        stage = AnchorStage(teacher, generator, encoder, anchor, x["train"], y["train"], x["eval"], y["eval"], ac,
                            augment=augment, margin=reference_energy, **common)
        echo("Module 2 (AnchorNet)")
        best = run_stage(stage, ac.epochs, _stage_ckpt(shared, "anchor"),
                         {**base_fp, "data_free": dataclasses.asdict(cfg.data_free), "anchor": dataclasses.asdict(ac),
                          "student_data": cfg.student_data, "shots": cfg.shots, "eval_per_class": cfg.eval_per_class})
        anchor.load_state_dict(best["anchor"])
        if "encoder" in best:
            encoder.load_state_dict(best["encoder"])
        freeze(encoder)

    from augkd_edge.health import module_health, problems

    health = module_health(teacher, generator, encoder, anchor, x["eval"], y["eval"], mean=mean, std=std,
                           teacher_domain_energy=reference_energy)
    findings = problems(health, teacher_student["eval"]["top1"], cfg.anchor.objective)
    for line in findings:
        echo(f"  warning: {line}")
    seed_stage(cfg.seed, cfg.method)
    final = _final_stage(cfg, student, teacher, generator, encoder, anchor, x, y, augment, common,
                         _trust(cfg, health, teacher_student["eval"]["top1"], num_classes))
    if final is not None:
        echo({"augkd": "Module 3 (uncertainty-guided mixup)"}.get(cfg.method, f"{cfg.method}: student training"))
        run_cfg = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_KEYS}
        best = run_stage(final, cfg.mixup.epochs, ckpt_dir / f"{final.name}.ckpt", {**base_fp, "cfg": run_cfg})
        student.load_state_dict(best["student"])
    elif cfg.mixup.recompute_bn:
        # dfkd: the Module 1 student as is, with BN statistics measured like every other method's.
        recompute_bn_stats(student, x["train"], mean, std)

    student.eval()
    acc = {split: evaluate_classifier(student, x[split], y[split], mean, std) for split in ("eval", "test")}
    results = {
        "schema": RESULTS_SCHEMA,
        "method": cfg.method,
        "seed": cfg.seed,
        "settings": cfg.to_dict(),
        "teacher_arch": cfg.teacher_arch,
        "student_arch": cfg.student_arch,
        "teacher_data": None if cfg.teacher_file else cfg.teacher_data,
        "teacher_file": cfg.teacher_file,
        "student_data": cfg.student_data,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "stage_wall_s": {k: round(v, 2) for k, v in wall.items()},
        "eval": acc["eval"],
        "test": acc["test"],
        "teacher": {"own_eval": teacher_own, "student_eval": teacher_student["eval"],
                    "student_test": teacher_student["test"]},
        "generator": health["generator"],
        "anchor": health["anchor"],
        "reconstruction": health["reconstruction"],
        "teacher_domain_energy_source": reference_source,
        "health_problems": findings,
        "device": str(device),
        "processes": dist.world,
        "augkd_edge_version": __version__,
    }
    if dist.is_main:
        from augkd_edge.report import write_json, write_run_report

        _save_student(out_dir / "student.pt", student, cfg, student_dom, splits)
        write_json(results, out_dir / "results.json")
        write_run_report(out_dir, results, history, student_dom.classes, x["train"], y["train"],
                         generator=generator, encoder=encoder, anchor=anchor, cfg=cfg)
    return results


def _silent(_: str) -> None:
    """The echo of ranks other than 0."""


def _trust(cfg: "DistillConfig", health: dict[str, Any], raw_top1: float, num_classes: int) -> tuple[float, float] | None:
    """Module 3's (raw, anchored) teacher reliabilities from the eval split; None for a fixed u.

    Anchored images are the anchors (reconstructions for no-anchor, whose z_a = z).
    """
    from augkd_edge.method.mixup import reliability

    if cfg.mixup.teacher_trust == "fixed":
        return None
    made = health["anchor"] or health["reconstruction"]
    anchored = made["teacher_top1"] if made is not None else raw_top1
    return reliability(raw_top1, num_classes), reliability(anchored, num_classes)


def _final_stage(cfg, student, teacher, generator, encoder, anchor, x, y, augment, common, trust):  # type: ignore[no-untyped-def]
    """The student-domain stage of ``cfg.method`` (None for dfkd, which trains nothing more).

    ``trust``: Module 3's teacher reliabilities (``_trust``); the KD baseline keeps its fixed u.
    """
    final = METHODS[cfg.method].final
    if final == "mixup":
        from augkd_edge.method.mixup import build_mixup_stage

        return build_mixup_stage(cfg.method, student, teacher, generator, encoder, x["train"], y["train"],
                                 x["eval"], y["eval"], cfg.mixup, anchor=anchor, augment=augment, trust=trust,
                                 **common)
    if final is None:
        return None
    from augkd_edge.method.baselines import build_baseline_stage

    return build_baseline_stage(cfg.method, student, x["train"], y["train"], x["eval"], y["eval"], cfg.mixup,
                                teacher=teacher, augment=augment, **common)


def _predictions(model: "nn.Module", images: "torch.Tensor", mean, std) -> "torch.Tensor":  # type: ignore[no-untyped-def]
    from augkd_edge.engine import predict_logits

    return predict_logits(model, images, mean, std).argmax(dim=1).cpu()


def _write_uncertainty(out_dir: Path, energy, labels, preds, indices, classes) -> None:  # type: ignore[no-untyped-def]
    from augkd_edge.report import write_json

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
        out_dir / "uncertainty.json",
    )


def _save_student(path: Path, student: "nn.Module", cfg: "DistillConfig", domain: "Domain", splits) -> None:  # type: ignore[no-untyped-def]
    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, file_fingerprint
    from augkd_edge.models.loading import ModelMeta, save_model_file

    meta = ModelMeta(
        arch=cfg.student_arch,
        num_classes=len(domain.classes),
        class_names=list(domain.classes),
        input_size=cfg.input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={
            "role": "student",
            "method": cfg.method,
            "seed": cfg.seed,
            "data": cfg.student_data,
            "splits": {k: [int(i) for i in v] for k, v in splits.items()},
            "data_fingerprint": file_fingerprint(domain),
        },
    )
    save_model_file(path, student, meta)
