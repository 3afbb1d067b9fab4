"""teacher -> Module 1 -> Module 2 -> Module 3 (or a baseline) in one run folder.

Run folder::

    config.json      the DistillConfig (a resume with another config is refused)
    splits.json      student-domain train/eval/test indices (+ the teacher's)
    metrics.jsonl    one line per stage epoch (metrics_log.MetricsLog)
    ckpt/            one engine checkpoint per stage: data_free, anchor, mixup / baseline
    student.pt       the selected student (augkd-edge model file, with data spec and splits)
    uncertainty.json per-sample teacher energy on the student-domain training images
    results.json     versioned results (schema below), report.md + images/

Stages shared between methods (the teacher, Module 1, Module 2) depend only on
the config parts they use, so the accuracy benchmark points several methods of
one seed at one ``shared_dir`` and each stage is trained once.

results.json, schema 4 (2 added ``anchor``, ``reconstruction``; 3 added their ``fidelity``, ``anchor_share``
and ``auto``; 4 added ``unlabelled``)::

    {"schema": 4, "method", "seed", "settings": DistillConfig, "teacher_arch",
     "student_arch", "teacher_data", "student_data", "split_sizes": {...},
     "stage_wall_s": {"teacher", "data_free", "anchor", "<final stage>"},
     "eval": {"top1","top3","top5","loss" (mean CE)}, "test": {"top1","top3","top5"},
     "teacher": {"own_eval": {...} | null, "student_test": {...}, "student_eval": {...}},
     "anchor": {"teacher_top1", "max_class_share", "energy_mean", "teacher_domain_energy_mean",
                "same_class_distance", "source_same_class_distance", "fidelity"} | null,
     "reconstruction": {"teacher_top1", "fidelity"} | null,
     "generator": {"teacher_energy_mean", "student_raw_energy_mean"} | null,
     "teacher_domain_energy_source": "teacher-domain eval split" | "Module 1 generator samples" | null,
     "health_problems": [str],
     "anchor_share": float | null (Module 3's anchor share w: the anchors' fidelity, capped by min(1, (1 - u) / u)),
     "auto": {"candidates": {method: {"eval": {...}, "test": {...}, "anchor_share", "wall_s"}},
              "chosen": method, "rule": str, "n_eval": int} | null (``--method auto`` only; chosen on the eval
              split: augkd unless beaten by more than one standard error, ``augkd_edge.auto``),
     "unlabelled": {"spec", "kind": "folder" | "held-out", "images", "sha256", "dropped": {reason: count},
                    "leaked_examples": [file], "terms": "kd+consistency" | "consistency" | "kd" | "labels" | "none",
                    "kd_trust", "kd_weight_mean"} | null (``--unlabelled`` only; data.unlabelled, method.unlabelled),
     "device", "processes" (torchrun world size), "augkd_edge_version"}

``anchor``, ``reconstruction`` and ``generator`` are measured on the
student-domain eval split (``augkd_edge.health``); null for methods without
Module 2 / Module 1.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from augkd_edge._version import __version__
from augkd_edge.config import METHODS
from augkd_edge.stages import fit_stage, seed_stage

if TYPE_CHECKING:
    import torch
    from torch import nn

    from augkd_edge.config import DistillConfig
    from augkd_edge.data import Domain

RESULTS_SCHEMA = 4


@dataclasses.dataclass
class Run:
    """What the steps of one distill run share: where it runs, its data, its networks and what it measured.

    Each step of :data:`STEPS` reads what the steps before it set and sets its own part.
    """

    cfg: "DistillConfig"
    out_dir: Path
    shared: Path  # checkpoints of the stages a seed's methods share (teacher-independent of the method)
    cache_dir: Path
    device: "torch.device"
    resume: bool
    progress: bool
    checkpoint_every: int
    echo: Callable[[str], None]
    log: Any = None  # metrics_log.MetricsLog of metrics.jsonl
    domain: "Domain | None" = None  # the student domain
    splits: dict[str, Any] = dataclasses.field(default_factory=dict)  # split name -> indices
    x: dict[str, "torch.Tensor"] = dataclasses.field(default_factory=dict)  # split name -> images (y: labels)
    y: dict[str, "torch.Tensor"] = dataclasses.field(default_factory=dict)
    augment: Any = None
    given_teacher: "nn.Module | None" = None  # the user's teacher file, loaded and probed
    teacher: "nn.Module | None" = None
    teacher_own: dict[str, float] | None = None  # its own-domain eval accuracy (a teacher trained here)
    teacher_student: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    student: "nn.Module | None" = None
    generator: "nn.Module | None" = None
    encoder: "nn.Module | None" = None
    anchor: "nn.Module | None" = None
    base_fp: dict[str, Any] = dataclasses.field(default_factory=dict)  # what every stage's fingerprint holds
    reference_energy: float | None = None  # the teacher's mean energy on its own domain
    reference_source: str | None = None
    health: dict[str, Any] = dataclasses.field(default_factory=dict)
    anchor_share: float | None = None  # Module 3's anchor share w (method/mixup.anchor_weight); None without anchors
    module1_states: dict[str, Any] | None = None  # auto: the Module 1 student and encoder, each candidate's start
    auto: dict[str, Any] | None = None  # auto: the candidates' accuracies and the choice (augkd_edge.auto)
    pool: Any = None  # data.unlabelled.Pool of --unlabelled, or None
    pool_stats: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # method -> KD weights
    findings: list[str] = dataclasses.field(default_factory=list)
    wall: dict[str, float] = dataclasses.field(default_factory=dict)
    history: dict[str, list[dict[str, float]]] = dataclasses.field(default_factory=dict)
    _teacher_logits: dict[str, "torch.Tensor"] = dataclasses.field(default_factory=dict)

    def teacher_logits(self, split: str) -> "torch.Tensor":
        """The fixed teacher's logits (on the CPU) on a split's images, or ``"pool"``'s: computed once per run, so
        the uncertainty file, the pool's certainty weights and every auto candidate's pool term share one pass."""
        if split not in self._teacher_logits:
            from augkd_edge.evaluate import predict_logits

            common = self.common()
            images = self.pool.images if split == "pool" else self.x[split]
            self._teacher_logits[split] = predict_logits(self.teacher, images, common["mean"], common["std"]).cpu()
        return self._teacher_logits[split]

    def common(self) -> dict[str, Any]:
        """The keywords every stage takes."""
        from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD

        return dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=self.cfg.seed, amp=self.cfg.amp)


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
    from augkd_edge.distributed import current, device_for
    from augkd_edge.run_checks import check_run_dir

    out_dir = Path(out_dir)
    if not current().is_main:
        echo = silent
    check_run_dir(cfg, out_dir, resume)  # validate everything before writing anything
    shared = Path(shared_dir) if shared_dir is not None else out_dir / "ckpt"
    run = Run(cfg, out_dir, shared, Path(cache_dir), device_for(cfg.device), resume, progress, checkpoint_every, echo)
    for step in STEPS:
        step(run)
    return results_step(run)


def splits_step(run: Run) -> None:
    """The student domain, its checks and seeded splits; config.json and splits.json."""
    import torch

    from augkd_edge.data import check_same_classes, file_fingerprint, load_domain, make_augment, save_splits, student_split
    from augkd_edge.distributed import current
    from augkd_edge.method.unlabelled import pool_step
    from augkd_edge.metrics_log import MetricsLog
    from augkd_edge.run_checks import check_inputs, check_same_data, prepare_run_dir

    cfg = run.cfg
    run.domain = load_domain(cfg.student_data, cfg.input_size)
    if not cfg.teacher_file:
        check_same_classes(load_domain(cfg.teacher_data, cfg.input_size), run.domain)
    run.given_teacher = check_inputs(cfg, run.domain, run.cache_dir)
    check_same_data(run.out_dir, run.domain)
    run.splits = student_split(run.domain.labels, cfg.shots, cfg.seed, cfg.eval_per_class, classes=run.domain.classes)
    data = {"student": file_fingerprint(run.domain)}
    if cfg.unlabelled is not None:
        data["unlabelled"] = pool_step(run)
    prepare_run_dir(cfg, run.out_dir, run.resume)
    run.log = MetricsLog(run.out_dir / "metrics.jsonl", tensorboard=cfg.tensorboard if current().is_main else None)
    if current().is_main:
        save_splits(run.out_dir / "splits.json", {"student": run.splits}, data=data)
    idx = {k: torch.as_tensor(v, dtype=torch.long) for k, v in run.splits.items() if k != "pool"}
    run.x = {k: run.domain.images[i] for k, i in idx.items()}
    run.y = {k: run.domain.labels[i] for k, i in idx.items()}
    if cfg.pool.use_labels:  # the benchmark's supervised ceiling: the held-out pool with its labels
        run.x["train"] = torch.cat([run.x["train"], run.pool.images])
        run.y["train"] = torch.cat([run.y["train"], run.pool.labels])
    run.augment = make_augment(run.domain.kind)
    run.echo(f"student domain {cfg.student_data}: {len(run.domain.classes)} classes, "
             + ", ".join(f"{k} {len(v)}" for k, v in run.splits.items()) + f"; device {run.device}")


def teacher_step(run: Run) -> None:
    """The teacher (the user's, or trained here and cached), its accuracy and energy on the student domain."""
    from augkd_edge.distributed import current
    from augkd_edge import losses
    from augkd_edge.evaluate import evaluate_classifier
    from augkd_edge.report import write_uncertainty
    from augkd_edge.teacher import obtain_teacher

    cfg, x, y, common = run.cfg, run.x, run.y, run.common()
    teacher, run.teacher_own, run.wall["teacher"] = obtain_teacher(
        cfg, len(run.domain.classes), device=run.device, cache_dir=run.cache_dir, progress=run.progress,
        checkpoint_every=run.checkpoint_every, given=run.given_teacher, echo=run.echo,
    )
    teacher.eval()
    run.teacher = teacher
    run.teacher_student = {split: evaluate_classifier(teacher, x[split], y[split], common["mean"], common["std"])
                           for split in ("eval", "test")}
    logits = run.teacher_logits("train")  # one pass for both
    energy, preds = losses.energy(logits), logits.argmax(dim=1)
    if current().is_main:
        write_uncertainty(run.out_dir / "uncertainty.json", energy, y["train"], preds, run.splits["train"],
                          run.domain.classes)
    run.echo(f"teacher {cfg.teacher_arch}: "
             + (f"own-domain eval top-1 {run.teacher_own['top1']:.4f}, " if run.teacher_own else "")
             + f"student-domain test top-1 {run.teacher_student['test']['top1']:.4f}")


def student_step(run: Run) -> None:
    """The student, initialised alike for every method of a seed, and the fingerprint every stage shares."""
    import torch

    from augkd_edge.models.weights import initialise, resolve
    from augkd_edge.models.zoo import build_classifier

    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    student = build_classifier(cfg.student_arch, len(run.domain.classes))
    if cfg.student_weights:
        run.echo(initialise(student, cfg.student_arch, cfg.student_weights, "--student-weights"))
    run.student = student.to(run.device)
    teacher_id = cfg.teacher_file or cfg.teacher_data
    run.base_fp = {"teacher": teacher_id, "teacher_arch": cfg.teacher_arch,
                   "teacher_cfg": dataclasses.asdict(cfg.teacher), "student_arch": cfg.student_arch,
                   "seed": cfg.seed, "input_size": cfg.input_size}
    if cfg.amp != "off":  # keeps the fingerprints of float32 runs as they were
        run.base_fp["amp"] = cfg.amp
    for key, arch in (("student_weights", cfg.student_arch), ("teacher_weights", cfg.teacher_arch)):
        if getattr(cfg, key):  # what the weights are, not their name or path; random-init fingerprints stay
            run.base_fp[key] = resolve(arch, getattr(cfg, key), "--" + key.replace("_", "-")).identity()


def module1_step(run: Run) -> None:
    """Module 1 (``method/data_free.py``): generator, encoder and the student's warm-up, for methods that use it."""
    if not METHODS[run.cfg.method].data_free:
        return
    from augkd_edge.engine import detached
    from augkd_edge.method.data_free import DataFreeStage
    from augkd_edge.models.generative import Encoder, Generator

    cfg, dc = run.cfg, run.cfg.data_free
    seed_stage(cfg.seed, "data_free")
    run.generator = Generator(dc.latent_dim, cfg.input_size, width=dc.gen_width).to(run.device)
    run.encoder = Encoder(dc.latent_dim, len(run.domain.classes), cfg.input_size, width=dc.gen_width).to(run.device)
    stage = DataFreeStage(run.teacher, run.student, run.generator, run.encoder, dc, **run.common())
    run.echo("Module 1 (data-free generator, encoder, student warm-up)")
    best = fit_stage(run, stage, dc.epochs, run.shared / "data_free.ckpt",
                      {**run.base_fp, "data_free": dataclasses.asdict(dc)})
    run.generator.load_state_dict(best["generator"])
    run.encoder.load_state_dict(best["encoder"])
    run.student.load_state_dict(best["student"])
    if METHODS[cfg.method].final == "auto":  # Module 2 adapts the encoder; the other candidates start from these
        run.module1_states = {"student": detached(run.student.state_dict()),
                              "encoder": detached(run.encoder.state_dict())}


def module2_step(run: Run) -> None:
    """The teacher's own-domain energy (the anchor margin), then Module 2 (``method/anchor.py``) where used."""
    from augkd_edge.teacher import teacher_domain_energy

    cfg = run.cfg
    if run.generator is not None:
        run.reference_energy, run.reference_source = teacher_domain_energy(cfg, run.teacher, run.generator)
    if not METHODS[run.cfg.method].anchor:
        return
    import torch

    from augkd_edge.method.anchor import AnchorStage
    from augkd_edge.method.unlabelled import anchor_images
    from augkd_edge.models.anchornet import AnchorNet
    from augkd_edge.models.setup import freeze

    ac = cfg.anchor
    seed_stage(cfg.seed, "anchor")
    run.anchor = AnchorNet(cfg.data_free.latent_dim, len(run.domain.classes), ac.alpha, ac.hidden,
                           ac.conditional_psi).to(run.device)
    extra_x, extra_y = anchor_images(run)  # --unlabelled-anchor-images: pool images under the teacher's label
    stage = AnchorStage(run.teacher, run.generator, run.encoder, run.anchor, torch.cat([run.x["train"], extra_x]),
                        torch.cat([run.y["train"], extra_y]), run.x["eval"], run.y["eval"], ac, augment=run.augment,
                        margin=run.reference_energy, **run.common())
    run.echo("Module 2 (AnchorNet)" + (f", with {len(extra_y)} unlabelled images" if len(extra_y) else ""))
    pool_fp = run.pool.fingerprint()["sha256"] if run.pool is not None else None
    best = fit_stage(run, stage, ac.epochs, run.shared / "anchor.ckpt",
                      {**run.base_fp, "data_free": dataclasses.asdict(cfg.data_free), "anchor": dataclasses.asdict(ac),
                       "student_data": cfg.student_data, "shots": cfg.shots, "eval_per_class": cfg.eval_per_class}
                      | ({"pool_labels": pool_fp} if cfg.pool.use_labels else {})
                      | ({"pool_anchor_images": [len(extra_y), pool_fp]} if len(extra_y) else {}))
    run.anchor.load_state_dict(best["anchor"])
    if "encoder" in best:
        run.encoder.load_state_dict(best["encoder"])
    freeze(run.encoder)


def final_step(run: Run) -> None:
    """The health of Modules 1 and 2, then the method's student-domain stage (Module 3 or a baseline), or for
    ``auto`` each candidate's stage and the choice between them (``augkd_edge.auto``)."""
    from augkd_edge.health import problems
    from augkd_edge.method.mixup import anchor_cap, anchor_weight
    from augkd_edge.stages import measure_health, train_final

    cfg = run.cfg
    run.health = measure_health(run)
    run.findings = problems(run.health, run.teacher_student["eval"]["top1"], cfg.anchor.objective)
    for line in run.findings:
        run.echo(f"  warning: {line}")
    if run.anchor is not None:
        run.anchor_share = anchor_weight(cfg.mixup, run.health)
        run.echo(f"  anchor fidelity {run.health['anchor']['fidelity']:.2f} (reconstructions "
                 f"{run.health['reconstruction']['fidelity']:.2f}; chance 0.50): anchor share {run.anchor_share:.2f}"
                 + (f" (capped at {cap:.2f} by u = {cfg.mixup.u:g})" if (cap := anchor_cap(cfg.mixup)) < 1 else ""))
    if METHODS[cfg.method].final == "auto":
        from augkd_edge.auto import auto_step

        auto_step(run)
    else:
        train_final(run, cfg.method, run.health)


def results_step(run: Run) -> dict[str, Any]:
    """The student's accuracy; results.json, student.pt and the run report (rank 0)."""
    from augkd_edge.distributed import current
    from augkd_edge.evaluate import evaluate_classifier
    from augkd_edge.method.unlabelled import pool_results

    cfg, common, dist = run.cfg, run.common(), current()
    run.student.eval()
    acc = {split: evaluate_classifier(run.student, run.x[split], run.y[split], common["mean"], common["std"],
                                      with_loss=split == "eval")
           for split in ("eval", "test")}
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
        "split_sizes": {k: len(v) for k, v in run.splits.items()},
        "stage_wall_s": {k: round(v, 2) for k, v in run.wall.items()},
        "eval": acc["eval"],
        "test": acc["test"],
        "teacher": {"own_eval": run.teacher_own, "student_eval": run.teacher_student["eval"],
                    "student_test": run.teacher_student["test"]},
        "generator": run.health["generator"],
        "anchor": run.health["anchor"],
        "reconstruction": run.health["reconstruction"],
        "teacher_domain_energy_source": run.reference_source,
        "health_problems": run.findings,
        "anchor_share": run.anchor_share,
        "auto": run.auto,
        "unlabelled": pool_results(run),
        "device": str(run.device),
        "processes": dist.world,
        "augkd_edge_version": __version__,
    }
    if dist.is_main:
        _write_outputs(run, results)
    return results


# The steps of a run, in order; ``results_step`` ends it.
STEPS = (splits_step, teacher_step, student_step, module1_step, module2_step, final_step)


def _write_outputs(run: Run, results: dict[str, Any]) -> None:
    from augkd_edge.report import write_json, write_run_report
    from augkd_edge.rundir import save_trained_model

    cfg = run.cfg
    save_trained_model(run.out_dir / "student.pt", run.student, arch=cfg.student_arch, domain=run.domain,
                       data=cfg.student_data, input_size=cfg.input_size, splits=run.splits, role="student",
                       method=cfg.method, seed=cfg.seed)
    write_json(results, run.out_dir / "results.json")
    write_run_report(run.out_dir, results, run.history, run.domain.classes, run.x["train"], run.y["train"],
                     generator=run.generator, encoder=run.encoder, anchor=run.anchor, cfg=cfg)
    run.log.finish(run.out_dir / "images")


def silent(_: str) -> None:
    """The echo of ranks other than 0, and of a silent run (augkd_edge.distill(echo=None))."""
