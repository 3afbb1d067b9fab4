"""Every option of ``augkd-edge distill`` as typed dataclasses, with presets.

Configuration flows one way: CLI -> :class:`DistillConfig` -> pipeline ->
modules. A config round-trips through plain JSON (``to_dict`` / ``from_dict``)
so it can be written into the run folder as ``config.json`` and compared with
:meth:`DistillConfig.diff` before a resume: continuing a run with changed
hyperparameters would silently mix two experiments.

Two presets:

- ``quick`` (the default) is sized so that the whole default run (teacher on
  MNIST, Module 1, 2, 3) finishes in under 10 minutes on a 2-core CPU (the
  speeds that set it: docs/decisions.md, "The quick preset"). It is a
  smoke-sized experiment, not the paper's.
- ``paper`` holds the paper's reference hyperparameters (docs/method.md; batch 2048,
  200 epochs per module, Adam lrs, a = 0.6, b = 0.2, u = 0.5, tau = 10); meant for a GPU.

Values given explicitly (``from_dict``, CLI flags) override the preset's.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from augkd_edge.config_io import apply as _apply
from augkd_edge.config_io import diff as _diff
from augkd_edge.errors import UserError
from augkd_edge.methods import AUTO_CANDIDATES, METHODS, Method  # noqa: F401  (the method table, read from here)

PRESETS = ("quick", "paper")
SCHEDULES = ("linear", "step")
CURRICULA = ("none", "energy")
AMP_MODES = ("off", "bf16", "fp16")  # --amp; augkd_edge.precision implements them
ANCHOR_OBJECTIVES = ("bounded", "paper")  # losses.anchor_loss implements them
ANCHOR_CERTAINTY = ("label", "all")  # the bounded objective's energy: the label's, or over all classes
TEACHER_TRUST = ("measured", "fixed")  # method/mixup.py: the teacher's share of Module 3's loss
ANCHOR_SHARE = ("measured", "fidelity", "full")  # method/mixup.py: the anchor's share of Module 3's mixtures
KD_GATES = ("none", "agree", "better", "where-sure")  # method/unlabelled.py: which pool images keep the teacher's KD term


@dataclasses.dataclass
class TeacherRecipe:
    """How a teacher trains: SGD with Nesterov momentum, cosine schedule (``teacher.py``); epochs and lr:
    docs/decisions.md, "Teacher epochs and learning rate". Shared by :class:`TeacherConfig` (``distill``)
    and ``teacher.TeacherSettings`` (``augkd-edge teacher``).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.02
    weight_decay: float = 5e-4
    eval_frac: float = 0.2


@dataclasses.dataclass
class TeacherConfig(TeacherRecipe):
    """Teacher training on the teacher domain (only when no ``teacher_file`` is given)."""

    # Teacher-domain images used for training+eval; None = all. Caps CPU time.
    max_images: int | None = 4000


@dataclasses.dataclass
class DataFreeConfig:
    """Module 1: generator, encoder and student warm-up without teacher data.

    One iteration = 1 generator step + ``k`` student/encoder steps (docs/method.md, "Module 1").
    """

    latent_dim: int = 100
    # Width of the generator / encoder (DCGAN's ngf); G's cost grows with its square.
    gen_width: int = 64
    # quick: 3 x 60 iterations of batch 32 with k = 2 (docs/method.md, "Module 1"); paper: 200 x 200 of
    # batch 2048 with k = 5.
    epochs: int = 3
    iters_per_epoch: int = 60
    batch_size: int = 32
    # quick 3e-3 (paper 1e-3): 180 generator steps are few.
    lr_g: float = 3e-3
    # paper 1e-4; quick 1e-3 (docs/method.md, "Module 1").
    lr_e: float = 1e-3
    lr_s: float = 1e-3
    k: int = 2
    # Weight of sum_c pbar_c log10 pbar_c (class balance); reference 20.
    alpha_g: float = 20.0
    # Weight of the -KL(T||S) adversarial term.
    adv_weight: float = 1.0
    # Weight of CE(T(x), argmax T(x)).
    ce_weight: float = 1.0
    # Weight of the BatchNorm statistics loss (DeepInversion-style); paper 1 (an unweighted sum).
    # quick 0.5: docs/method.md, "Module 1".
    bn_weight: float = 0.5
    # Weight of the encoder's KL(N(mu, sigma^2) || N(0, I)) term.
    encoder_kl_weight: float = 2.5e-4
    # Weight of the encoder's image-space error ||G(E(x, y)) - x||^2 (per-pixel mean); 0 = the paper's
    # latent error alone. docs/method.md, "Module 1".
    encoder_recon_weight: float = 100.0
    # Weight of the teacher's KL(T(x) || T(G(E(x, y)))): the reconstruction must read as the image did.
    encoder_teacher_weight: float = 1.0
    # Size of the fixed validation noise set used for checkpoint selection.
    val_samples: int = 256


@dataclasses.dataclass
class AnchorConfig:
    """Module 2: AnchorNet, mapping student samples to teacher-domain anchors.

    ``objective="bounded"`` (default) is this project's loss, ``"paper"`` the
    published one, which collapses every anchor onto one image; why and the
    measurements behind each default are in docs/method.md ("Module 2").
    """

    # quick: docs/decisions.md, "Module 2 epochs and learning rate".
    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 32
    # "bounded": squared hinge on the label's energy at a margin + label CE + mask + latent keep term;
    # "paper": Energy + lambda_ce * CE + mask (the published loss).
    objective: str = "bounded"
    # Energy temperature: Energy_tau(f) = -tau * logsumexp(f / tau).
    tau: float = 1.0
    # Weight of CE(T(norm(x_a)), y) (paper 0.1).
    lambda_ce: float = 1.0
    # bounded: the energy level below which certainty is not rewarded further; null = the
    # teacher's mean energy on its own domain (measured once per run, docs/method.md).
    energy_margin: float | None = None
    # bounded: certainty measured as the label's energy -f_y ("label") or Energy_tau over all classes ("all").
    certainty: str = "label"
    # bounded: weight of ||z_a - z||^2 / L, which keeps the anchor near the sample's latent; 100 keeps the
    # anchors faithful to their images (10 made class prototypes: docs/method.md, "Anchor fidelity").
    lambda_z: float = 100.0
    # Invariant ratio: fraction of latent dimensions kept; the mask targets L * (1 - alpha) rewritten
    # (paper 0.25).
    alpha: float = 0.75
    # Hidden width of the mapping psi.
    hidden: int = 256
    # psi also sees the label (a per-class bias on its hidden layer); false = the paper's psi(m * z).
    conditional_psi: bool = True
    # Adapt E to the student domain during Module 2 (reconstruction + teacher CE on G(E(x, y)));
    # false = E frozen after Module 1 (the paper).
    adapt_encoder: bool = True
    encoder_lr: float = 1e-3
    # Weight of the per-pixel ||G(E(x, y)) - x||^2 in the encoder adaptation.
    encoder_recon_weight: float = 100.0


@dataclasses.dataclass
class MixupConfig:
    """Module 3 (and the student-domain baselines, so all share one training recipe)."""

    # quick: docs/decisions.md, "Module 3 epochs".
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    # Stage factor f(e) = min(1, b + (1 - b) * e / (a * E)).
    a: float = 0.6
    b: float = 0.2
    # "linear" or "step" (f rounded down to 10% steps).
    schedule: str = "linear"
    # Weight of CE; 1 - u weighs the tau^2 * KL distillation term.
    u: float = 0.5
    tau: float = 10.0
    # "none" or "energy": present the teacher's most certain samples first (see method/mixup.py).
    curriculum: str = "none"
    # "measured": the teacher's share 1 - u (and the curriculum's start b) follow its chance-corrected top-1 on
    # the eval split's raw images and anchors; "fixed": 1 - u throughout (the paper). docs/method.md, "Module 3".
    teacher_trust: str = "measured"
    # "measured": the anchor's share w of the mixtures' latent, z_m = (1 - f) (w z_a + (1 - w) z) + f z, follows the
    # anchors' fidelity on the eval split (augkd_edge.fidelity): 0 at fidelity_floor or below (AuG-KD mixes as the
    # no-anchor ablation does), 1 from fidelity_full on, capped by min(1, (1 - u) / u) since only the KD term reads an
    # anchor; "fidelity": the fidelity alone; "full": w = 1 (the paper). docs/method.md, "Anchor fidelity".
    anchor_share: str = "measured"
    fidelity_floor: float = 0.6
    fidelity_full: float = 0.8
    # Recompute the student's BatchNorm statistics on the training images before each evaluation.
    recompute_bn: bool = True


@dataclasses.dataclass
class PoolConfig:
    """Unlabelled student-domain images (``DistillConfig.unlabelled``): how Module 3 and the baselines use them.

    Per labelled batch of B images the stage draws ``ratio * B`` pool images and adds, with their own weights,
    the teacher's soft labels on them (KD, weighted per image by the teacher's certainty and measured trust) and
    a FixMatch consistency term (the student's confident pseudo-label on a weak view as the target of a strong
    view). method/unlabelled.py; the numbers behind each default: docs/method.md, "Unlabelled images".
    """

    # Pool images used, a seeded subset; None = all (after deduplication).
    max_images: int | None = None
    ratio: int = 4
    kd_weight: float = 1.0
    # "agree": KD only on pool images where the teacher's and the student's top-1 agree; "none": every image.
    kd_gate: str = "where-sure"
    consistency_weight: float = 1.0
    # FixMatch's confidence threshold on the student's weak-view softmax.
    threshold: float = 0.95
    # Benchmark only: train on the pool's true labels too (a same-domain pool), the fully supervised ceiling.
    use_labels: bool = False
    # Module 3 (augkd and its ablations): the KD term reads pool images mixed towards their anchors like the labelled
    # ones, x_m = (1 - f) G(z_m) + f x, labelled by the teacher where it is certain (the others stay raw); with
    # mixup.curriculum="energy" the pool is drawn from its f(e) most teacher-certain share. Off until measured.
    mixup: bool = False
    # Module 2 also trains the AnchorNet (and the encoder's adaptation) on up to this many pool images, those the
    # teacher labels with certainty (the surest first), under the teacher's label; 0 = labelled images only.
    anchor_images: int = 0


@dataclasses.dataclass
class DistillConfig:
    """One ``augkd-edge distill`` run."""

    teacher_data: str = "digits:mnist"
    student_data: str = "digits:optdigits"
    # Labelled student-domain training images per class (few-shot: where the teacher matters).
    shots: int = 10
    # Student-domain eval images per class (checkpoint selection only; the rest is test).
    eval_per_class: int = 5
    teacher_arch: str = "resnet34"
    student_arch: str = "mobilenet_v3_small"
    # A trained teacher to use instead of training one; None = train on teacher_data.
    teacher_file: str | None = None
    # Starting weights: a torchvision weights name of the architecture (DEFAULT, IMAGENET1K_V1, ...; read from
    # torchvision's cache, never downloaded) or a state_dict file; None = random init. augkd_edge/models/weights.py.
    student_weights: str | None = None
    # The same for a teacher trained here (not with teacher_file).
    teacher_weights: str | None = None
    seed: int = 0
    method: str = "augkd"
    input_size: int = 32
    device: str = "auto"
    # Mixed precision: "off" (float32), "bf16" or "fp16" (autocast; fp16 with gradient scaling).
    amp: str = "off"
    preset: str = "quick"
    out: str | None = None
    # A folder for TensorBoard events mirroring metrics.jsonl (augkd_edge.tensorboard_log); None = none.
    tensorboard: str | None = None
    # Unlabelled student-domain images: a folder (nested folders allowed, labels ignored), or the --target spec
    # itself for its held-out pool (augkd_edge.data.unlabelled); None = labelled images only.
    unlabelled: str | None = None
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    data_free: DataFreeConfig = dataclasses.field(default_factory=DataFreeConfig)
    anchor: AnchorConfig = dataclasses.field(default_factory=AnchorConfig)
    mixup: MixupConfig = dataclasses.field(default_factory=MixupConfig)
    pool: PoolConfig = dataclasses.field(default_factory=PoolConfig)

    # ---- construction -------------------------------------------------
    @classmethod
    def preset_config(cls, name: str = "quick") -> "DistillConfig":
        """The defaults of preset ``name``."""
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
        cfg = cls(preset=name)
        if name == "paper":
            cfg.teacher = TeacherConfig(epochs=200, batch_size=256, max_images=None)
            cfg.data_free = DataFreeConfig(epochs=200, iters_per_epoch=200, batch_size=2048, val_samples=2048,
                                           lr_g=1e-3, lr_e=1e-4, k=5, bn_weight=1.0)
            cfg.anchor = AnchorConfig(epochs=200, batch_size=2048, lr=1e-3)
            cfg.mixup = MixupConfig(epochs=200, batch_size=2048)
        cfg.validate()
        return cfg

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "DistillConfig":
        """Build from plain data: the preset named in ``data`` (default quick), then its values.

        ``source`` names the file in error messages.
        """
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object, got {type(data).__name__}")
        cfg = cls.preset_config(str(data.get("preset", "quick")))
        _apply(cfg, data, source, prefix="")
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "DistillConfig":
        """Load a ``config.json`` (e.g. from a run folder)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such config file; check the path") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc}); fix or delete the file") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def diff(self, other: "DistillConfig") -> list[str]:
        """Dotted keys whose values differ, e.g. ``["mixup.epochs", "seed"]``."""
        return _diff(self.to_dict(), other.to_dict(), "")

    # ---- validation ---------------------------------------------------
    def validate(self, source: str = "config") -> None:
        """Raise UserError naming the first impossible value and what would be allowed."""

        def need(ok: bool, key: str, value: Any, allowed: str) -> None:
            if not ok:
                raise UserError(f"{source}: {key} = {value!r} is invalid; {allowed}")

        need(self.method in METHODS, "method", self.method, f"use one of {', '.join(METHODS)}")
        need(self.preset in PRESETS, "preset", self.preset, f"use one of {', '.join(PRESETS)}")
        need(self.amp in AMP_MODES, "amp", self.amp, f"use one of {', '.join(AMP_MODES)}")
        need(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None, "device", self.device,
             "use auto, cpu, cuda or cuda:N")
        for key in ("teacher_data", "student_data", "teacher_arch", "student_arch"):
            need(bool(getattr(self, key)), key, getattr(self, key), "give a non-empty value")
        need(self.unlabelled is None or bool(self.unlabelled.strip()), "unlabelled", self.unlabelled,
             "give a folder of images, the --target spec for its held-out pool, or null")
        need(not METHODS[self.method].needs_pool or self.unlabelled is not None, "method", self.method,
             "it trains on unlabelled images; give them with --unlabelled")
        for key in ("student_weights", "teacher_weights"):
            need(getattr(self, key) is None or bool(getattr(self, key).strip()), key, getattr(self, key),
                 "give a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...), a state_dict file, or null")
        need(not (self.teacher_weights and self.teacher_file), "teacher_weights", self.teacher_weights,
             "it starts a teacher trained here; a given teacher_file (--teacher) is used as it is, drop one of them")
        need(0 <= self.seed < 2**32, "seed", self.seed, "use a value from 0 to 2**32 - 1 (numpy's seed range)")
        for section in ("teacher", "data_free", "anchor", "mixup"):
            size = getattr(self, section).batch_size
            need(size >= 2, f"{section}.batch_size", size,
                 "use at least 2 (BatchNorm cannot train on one image per batch)")
        need(self.shots >= 1, "shots", self.shots, "need at least 1 labelled image per class")
        need(self.eval_per_class >= 1, "eval_per_class", self.eval_per_class, "need at least 1")
        need(self.input_size >= 8 and self.input_size % 4 == 0, "input_size", self.input_size,
             "use a multiple of 4, at least 8 (the generator upsamples twice)")
        _validate_sections(self, need)


def _validate_sections(cfg: "DistillConfig", need: Any) -> None:
    """The hyperparameter sections' ranges and choices (``DistillConfig.validate``'s second half)."""
    _positive(cfg.teacher, "teacher", ("epochs", "batch_size", "lr"), need)
    need(0 < cfg.teacher.eval_frac < 1, "teacher.eval_frac", cfg.teacher.eval_frac, "use a value in (0, 1)")
    need(cfg.teacher.max_images is None or cfg.teacher.max_images >= 10, "teacher.max_images",
         cfg.teacher.max_images, "use null (all images) or at least 10")
    _positive(cfg.data_free, "data_free",
              ("latent_dim", "gen_width", "epochs", "iters_per_epoch", "batch_size", "lr_g", "lr_e", "lr_s", "k",
               "val_samples"), need)
    _positive(cfg.anchor, "anchor", ("epochs", "lr", "batch_size", "tau", "hidden"), need)
    need(0 < cfg.anchor.alpha < 1, "anchor.alpha", cfg.anchor.alpha, "use a value in (0, 1)")
    need(cfg.anchor.objective in ANCHOR_OBJECTIVES, "anchor.objective", cfg.anchor.objective,
         f"use one of {', '.join(ANCHOR_OBJECTIVES)}")
    need(cfg.anchor.certainty in ANCHOR_CERTAINTY, "anchor.certainty", cfg.anchor.certainty,
         f"use one of {', '.join(ANCHOR_CERTAINTY)}")
    _positive(cfg.mixup, "mixup", ("epochs", "lr", "batch_size", "a", "tau"), need)
    need(cfg.mixup.a <= 1, "mixup.a", cfg.mixup.a, "use a value in (0, 1]")
    need(0 <= cfg.mixup.b <= 1, "mixup.b", cfg.mixup.b, "use a value in [0, 1]")
    need(0 <= cfg.mixup.u <= 1, "mixup.u", cfg.mixup.u, "use a value in [0, 1]")
    need(cfg.mixup.schedule in SCHEDULES, "mixup.schedule", cfg.mixup.schedule,
         f"use one of {', '.join(SCHEDULES)}")
    need(cfg.mixup.curriculum in CURRICULA, "mixup.curriculum", cfg.mixup.curriculum,
         f"use one of {', '.join(CURRICULA)}")
    need(cfg.mixup.anchor_share in ANCHOR_SHARE, "mixup.anchor_share", cfg.mixup.anchor_share,
         f"use one of {', '.join(ANCHOR_SHARE)}")
    need(0 <= cfg.mixup.fidelity_floor < cfg.mixup.fidelity_full <= 1, "mixup.fidelity_floor",
         (cfg.mixup.fidelity_floor, cfg.mixup.fidelity_full), "need 0 <= fidelity_floor < fidelity_full <= 1")
    need(cfg.pool.max_images is None or cfg.pool.max_images >= 0, "pool.max_images", cfg.pool.max_images,
         "use null (all) or a count >= 0 (0 holds the pool out of the test split without using it)")
    need(cfg.pool.ratio >= 1, "pool.ratio", cfg.pool.ratio, "use at least 1 pool image per labelled image")
    need(cfg.pool.anchor_images >= 0, "pool.anchor_images", cfg.pool.anchor_images,
         "use 0 (labelled images only) or a positive count")
    need(0 < cfg.pool.threshold <= 1, "pool.threshold", cfg.pool.threshold, "use a value in (0, 1]")
    need(cfg.pool.kd_gate in KD_GATES, "pool.kd_gate", cfg.pool.kd_gate, f"use one of {', '.join(KD_GATES)}")
    need(not cfg.pool.use_labels or cfg.unlabelled == cfg.student_data, "pool.use_labels", cfg.pool.use_labels,
         "the pool's labels exist only for the --target's own held-out pool (--unlabelled equal to --target)")
    need(cfg.mixup.teacher_trust in TEACHER_TRUST, "mixup.teacher_trust", cfg.mixup.teacher_trust,
         f"use one of {', '.join(TEACHER_TRUST)}")
    for section, keys in (("data_free", ("alpha_g", "adv_weight", "ce_weight", "bn_weight",
                                         "encoder_kl_weight", "encoder_recon_weight",
                                         "encoder_teacher_weight")),
                          ("anchor", ("lambda_ce", "lambda_z", "encoder_lr", "encoder_recon_weight")), ("mixup", ("weight_decay",)),
                          ("pool", ("kd_weight", "consistency_weight"))):
        for key in keys:
            value = getattr(getattr(cfg, section), key)
            need(value >= 0, f"{section}.{key}", value, "use a value >= 0")


def _positive(section: Any, name: str, keys: tuple[str, ...], need: Any) -> None:
    for key in keys:
        value = getattr(section, key)
        need(value > 0, f"{name}.{key}", value, "use a value > 0")
