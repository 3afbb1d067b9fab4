"""``augkd-edge distill``: the AuG-KD pipeline and its baselines.

Every hyperparameter of the stage configs is a flag generated from the config
dataclasses (``--mixup-tau``, ``--df-lr-g``, ...), so the CLI cannot fall behind
the config; the help texts live here in ``HELP``.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from pathlib import Path
from typing import Any

import click

from augkd_edge.config import (AMP_MODES, METHODS, PRESETS, AnchorConfig, DataFreeConfig, MixupConfig, PoolConfig,
                               TeacherConfig)

SECTIONS = {"teacher": ("teacher", TeacherConfig), "df": ("data_free", DataFreeConfig),
            "anchor": ("anchor", AnchorConfig), "mixup": ("mixup", MixupConfig), "unlabelled": ("pool", PoolConfig)}

HELP = {
    "teacher.epochs": "Teacher training epochs (when no --teacher file is given).",
    "teacher.batch_size": "Teacher training batch size.",
    "teacher.lr": "Teacher peak learning rate (SGD Nesterov, cosine).",
    "teacher.weight_decay": "Teacher weight decay.",
    "teacher.eval_frac": "Fraction of the teacher domain held out for teacher selection.",
    "teacher.max_images": "Cap on teacher-domain images (stratified subset); 0 = all.",
    "data_free.latent_dim": "Latent size L of generator, encoder and AnchorNet.",
    "data_free.gen_width": "Width of the generator and encoder (DCGAN's ngf); cost grows with its square.",
    "data_free.epochs": "Module 1 epochs.",
    "data_free.iters_per_epoch": "Module 1 iterations per epoch (1 generator + k student/encoder steps each).",
    "data_free.batch_size": "Generated images per Module 1 step.",
    "data_free.lr_g": "Generator learning rate (Adam).",
    "data_free.lr_e": "Encoder learning rate (Adam).",
    "data_free.lr_s": "Student learning rate in Module 1 (Adam).",
    "data_free.k": "Student + encoder steps per generator step.",
    "data_free.alpha_g": "Weight of the class-balance term sum pbar log10 pbar (reference 20).",
    "data_free.adv_weight": "Weight of the adversarial -KL(T||S) term.",
    "data_free.ce_weight": "Weight of CE(T(x), argmax T(x)).",
    "data_free.bn_weight": "Weight of the BatchNorm statistics-matching loss.",
    "data_free.encoder_kl_weight": "Weight of the encoder's KL(N(mu, sigma^2) || N(0, I)) term.",
    "data_free.encoder_recon_weight": "Weight of the encoder's image-space error ||G(E(x, y)) - x||^2 "
                                      "(0 = the paper's latent error only).",
    "data_free.encoder_teacher_weight": "Weight of the teacher's KL(T(x) || T(G(E(x, y)))) in the encoder loss "
                                        "(0 = the paper's latent error only).",
    "data_free.val_samples": "Fixed validation noise samples used to select the Module 1 checkpoint.",
    "anchor.epochs": "Module 2 epochs.",
    "anchor.lr": "AnchorNet learning rate (Adam).",
    "anchor.batch_size": "Module 2 batch size.",
    "anchor.tau": "Energy temperature tau of the anchor loss.",
    "anchor.objective": "Anchor loss: bounded (squared energy hinge at a margin + label CE + latent keep term) "
                        "or paper (raw energy + lambda_ce CE; collapses, see docs/method.md).",
    "anchor.lambda_ce": "Weight lambda_ce of CE(T(x_a), y) in the anchor loss (paper 0.1).",
    "anchor.energy_margin": "bounded: energy level at which certainty stops being rewarded; "
                            "default: the teacher's mean energy on its own domain.",
    "anchor.certainty": "bounded: whose energy the hinge bounds: label (-f_y, certainty in the label) or all "
                        "(-tau logsumexp, certainty in any class).",
    "anchor.lambda_z": "bounded: weight of ||z_a - z||^2 / L, keeping anchors near their sample's latent.",
    "anchor.alpha": "Invariant ratio alpha: the mask targets L * (1 - alpha) rewritten dimensions.",
    "anchor.hidden": "Hidden width of the AnchorNet mapping psi.",
    "anchor.conditional_psi": "psi also sees the label (per-class bias); --anchor-no-conditional-psi = the paper's "
                              "psi(m * z).",
    "anchor.adapt_encoder": "Adapt the encoder to the student domain in Module 2 (G(E(x, y)) like x, read as y "
                            "by the teacher); --anchor-no-adapt-encoder keeps it frozen (paper).",
    "anchor.encoder_lr": "Encoder learning rate of the Module 2 adaptation (Adam).",
    "anchor.encoder_recon_weight": "Weight of the per-pixel reconstruction error in the encoder adaptation.",
    "mixup.epochs": "Module 3 epochs (also the baselines' student-domain epochs).",
    "mixup.lr": "Student learning rate (Adam) in Module 3 and the baselines.",
    "mixup.weight_decay": "Student weight decay.",
    "mixup.batch_size": "Real student-domain images per step (the step also holds their mixups).",
    "mixup.a": "Schedule a: f reaches 1 at epoch a * E.",
    "mixup.b": "Schedule b: f starts at b.",
    "mixup.schedule": "Stage-factor schedule: linear or step (10% steps).",
    "mixup.u": "Loss weight u of CE; 1 - u weighs tau^2 * KL(T || S).",
    "mixup.tau": "Distillation temperature tau.",
    "mixup.curriculum": "Uncertainty curriculum: none, or energy (teacher-certain samples first).",
    "mixup.teacher_trust": "measured: the teacher's loss share 1 - u and the curriculum's start follow its "
                           "chance-corrected top-1 on eval images and anchors; fixed: 1 - u throughout (paper).",
    "mixup.anchor_share": "measured: the anchor's share of the mixtures follows the anchors' fidelity on the eval "
                          "split (0 = mixtures as in the no-anchor ablation), capped by min(1, (1 - u) / u); "
                          "fidelity: without the cap; full: anchors at full share (paper).",
    "mixup.fidelity_floor": "measured anchor share: fidelity at or below which anchors get no share (chance 0.5).",
    "mixup.fidelity_full": "measured anchor share: fidelity from which anchors get their full share.",
    "mixup.recompute_bn": "Recompute the student's BatchNorm statistics on the training images before evaluation.",
    "pool.max_images": "Unlabelled images used (a seeded subset) [default: all]; 0 holds a --target's pool out unused.",
    "pool.ratio": "Unlabelled images per labelled image in each training step.",
    "pool.kd_weight": "Weight of the teacher's soft labels on unlabelled images (per image: trust x certainty).",
    "pool.kd_gate": "none: KD on every unlabelled image; agree: only where teacher and student agree on the top-1; "
                    "better: only as far as the teacher's eval top-1 beats the student's (measured every epoch); "
                    "where-sure: the same on the eval images weighted by the teacher's certainty.",
    "pool.consistency_weight": "Weight of the FixMatch term: the student's confident weak-view label on a strong view.",
    "pool.threshold": "FixMatch confidence threshold on the student's weak-view softmax.",
    "pool.use_labels": "Benchmark only: train on the held-out pool's true labels (the fully supervised ceiling).",
    "pool.anchor_images": "Module 2 also learns anchors for up to this many unlabelled images, those the teacher "
                          "labels with certainty, under its label (0: the labelled images only).",
    "pool.mixup": "Module 3 mixes unlabelled images towards their anchors for the KD term (labels: the teacher's "
                  "where it is certain), and the energy curriculum draws them most-certain first.",
}


def _flag(prefix: str, field: str) -> str:
    return f"--{prefix}-{field}".replace("_", "-")


def _hyperparameter_options(func: Any) -> Any:
    for prefix, (section, cls) in reversed(list(SECTIONS.items())):
        defaults = cls()
        hints = typing.get_type_hints(cls)
        for f in reversed(dataclasses.fields(cls)):
            key = f"{section}.{f.name}"
            default = getattr(defaults, f.name)
            # optional fields (default None) take the type they hold when set
            kind = type(default) if default is not None else next(
                t for t in typing.get_args(hints[f.name]) if t is not type(None))
            if isinstance(default, bool):
                option = click.option(f"{_flag(prefix, f.name)}/{_flag(prefix, 'no-' + f.name)}", key.replace(".", "__"),
                                      default=None, help=f"{HELP.get(key, key)} [quick: {default}]")
            else:
                typ = {int: int, float: float, str: str}.get(kind, int)
                option = click.option(_flag(prefix, f.name), key.replace(".", "__"), type=typ, default=None,
                                      help=f"{HELP.get(key, key)} [quick: {default}]")
            func = option(func)
    return func


def _latest_run(root: Path) -> Path | None:
    runs = sorted((p for p in root.glob("distill-*") if (p / "config.json").exists()), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


@click.command("distill")
@click.option("--teacher", "teacher_file", type=click.Path(dir_okay=False), default=None,
              help="Trained teacher: a state_dict (with --teacher-arch), a TorchScript or torch.export archive, "
                   "or an augkd-edge model file. Default: train one on --teacher-data (cached).")
@click.option("--student-weights", default=None, metavar="NAME|FILE",
              help="Start the student from a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...; read from "
                   "$TORCH_HOME/hub/checkpoints/, never downloaded) or a state_dict file; the head is replaced for "
                   "the class count [default: random init].")
@click.option("--teacher-weights", default=None, metavar="NAME|FILE",
              help="The same for a teacher trained here (not with --teacher FILE) [default: random init].")
@click.option("--teacher-arch", default=None, help="torchvision name of the teacher [default: resnet34].")
@click.option("--student", "student_arch", default=None, help="torchvision name of the student [default: mobilenet_v3_small].")
@click.option("--teacher-data", default=None,
              help="Teacher-domain spec, to train the teacher [default: digits:mnist]. Specs: digits:mnist, "
                   "digits:optdigits, an ImageFolder path, or specs joined with '+'.")
@click.option("--target", "student_data", default=None,
              help="Student-domain spec: the few labelled images of the deployment domain [default: digits:optdigits].")
@click.option("--unlabelled", default=None, metavar="FOLDER|SPEC",
              help="Unlabelled images of the target domain: a folder (sub-folders allowed, labels ignored; copies "
                   "of the labelled/eval/test images are dropped), or the --target spec itself for its held-out "
                   "pool (half of the images outside train and eval) [default: none].")
@click.option("--shots", type=click.IntRange(min=1), default=None, help="Labelled training images per class [default: 10].")
@click.option("--eval-per-class", type=click.IntRange(min=1), default=None,
              help="Student-domain eval images per class, for checkpoint selection [default: 5]; the rest is the test split.")
@click.option("--preset", type=click.Choice(PRESETS), default="quick", show_default=True,
              help="quick: sized for a 2-core CPU (<10 min); paper: the paper's hyperparameters, for a GPU.")
@click.option("--method", type=click.Choice(list(METHODS)), default=None,
              help="[default: augkd] " + "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items()) + ".")
@click.option("--seed", type=int, default=None, help="Seed for splits, student init and data order [default: 0].")
@click.option("--input-size", type=click.IntRange(min=8), default=None, help="Square input resolution [default: 32].")
@click.option("--device", default=None,
              help="auto, cpu, cuda or cuda:N [default: auto]. Under torchrun each rank takes cuda:LOCAL_RANK.")
@click.option("--amp", type=click.Choice(AMP_MODES), default=None,
              help="[default: off] Mixed precision: bf16, or fp16 with gradient scaling (for GPUs); losses stay "
                   "float32.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=50, show_default=True,
              help="Also checkpoint every N training steps (0: epoch ends only); --resume continues from the "
                   "last one.")
@click.option("--deterministic", is_flag=True,
              help="Deterministic kernels: a resumed or repeated run gives the same bits (slower on GPUs).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON file of options (a run's config.json works); flags given on the command line override it.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder [default: runs/distill-<date>-<time>].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out (default: the newest runs/distill-*) from its last checkpoints.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default="~/.cache/augkd-edge", show_default=True,
              help="Where trained teachers are cached, keyed by their configuration.")
@click.option("--tensorboard", type=click.Path(file_okay=False), default=None,
              help="Also write every stage's losses, eval metrics and learning rates, and the report's images, as "
                   "TensorBoard events in this folder (tensorboard --logdir DIR); needs the tensorboard extra.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_hyperparameter_options
def command(preset: str, checkpoint_every: int, deterministic: bool, config_file: str | None, out_dir: str | None,
            resume: bool, cache_dir: str, quiet: bool, **options: Any) -> None:
    """Distill a student for the target domain from a teacher trained elsewhere (AuG-KD).

    With no arguments: a real cross-domain benchmark shipped with the
    dependencies. A ResNet-34 teacher is trained on MNIST (cached), and a
    MobileNet-V3-Small student is distilled for UCI optdigits (another writer
    population, another scanner) from 10 labelled images per class. It is
    tested on the remaining ~1,650 optdigits images.

    Several GPUs (or CPU processes): torchrun --nproc-per-node N -m augkd_edge.cli distill ... --out DIR
    """
    from augkd_edge import distributed
    from augkd_edge.device import set_deterministic
    from augkd_edge.pipeline import run_distill

    cfg = _config(config_file, preset, options)
    out = _run_folder(out_dir, resume)
    cfg.out = str(out)
    set_deterministic(deterministic)
    with distributed.session(distributed.device_for(cfg.device)) as dist:
        results = run_distill(cfg, out, resume=resume, progress=not quiet, cache_dir=Path(cache_dir).expanduser(),
                              echo=click.echo, checkpoint_every=checkpoint_every)
    if dist.is_main:
        _print_table(results)
        click.echo(f"\nresults: {out / 'results.json'}  report: {out / 'report.md'}  student: {out / 'student.pt'}")


def _config(config_file: str | None, preset: str, options: dict[str, Any]) -> Any:
    """The run's DistillConfig: the preset, or the --config file, then the flags actually given.

    ``options``: the config flags by destination, ``field`` for top-level ones and
    ``section__field`` for the hyperparameter flags.
    """
    import json

    from augkd_edge.config import DistillConfig
    from augkd_edge.errors import UserError

    data: dict[str, Any] = {"preset": preset}
    if config_file:
        try:
            data = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{config_file}: cannot read a JSON config ({exc}).") from exc
        data.pop("out", None)
        if preset != "quick":
            data["preset"] = preset
    # Only flags actually given override --config; unset ones fall back to the file, then the preset.
    for key, value in options.items():
        if value is None:
            continue
        if "__" not in key:
            data[key] = value
            continue
        section, field = key.split("__")
        if key == "teacher__max_images" and value == 0:
            value = None
        data.setdefault(section, {})[field] = value
    return DistillConfig.from_dict(data, source=config_file or "command line")


def _run_folder(out_dir: str | None, resume: bool) -> Path:
    """--out, or the newest run under runs/ for a bare --resume, or a new dated folder there."""
    from augkd_edge import distributed
    from augkd_edge.errors import UserError

    runs_root = Path("runs")
    if distributed.launched_by_torchrun() and out_dir is None:
        raise UserError("under torchrun give --out RUN_FOLDER (the ranks must agree on one folder).")
    if out_dir is None and resume:
        latest = _latest_run(runs_root)
        if latest is None:
            raise UserError("--resume: no run found under runs/; give --out RUN_FOLDER.")
        return latest
    return Path(out_dir) if out_dir else runs_root / time.strftime("distill-%Y%m%d-%H%M%S")


def _print_table(results: dict[str, Any]) -> None:
    t = results["teacher"]
    rows = []
    if t["own_eval"]:
        rows.append((f"teacher {results['teacher_arch']} on {results['teacher_data']} (eval)", t["own_eval"]))
    rows.append((f"teacher on {results['student_data']} (test)", t["student_test"]))
    rows.append((f"student {results['student_arch']} [{results['method']}] on {results['student_data']} (test)",
                 results["test"]))
    width = max(len(r[0]) for r in rows)
    click.echo("")
    click.echo(f"{'':{width}}  top-1   top-3   top-5")
    for name, acc in rows:
        click.echo(f"{name:{width}}  {acc['top1']:.4f}  {acc['top3']:.4f}  {acc['top5']:.4f}")
    from augkd_edge.data.unlabelled import results_line

    if (pool := results_line(results.get("unlabelled"))) is not None:
        click.echo(pool)
    gen, rec, anc = results.get("generator"), results.get("reconstruction"), results.get("anchor")
    if rec is not None or anc is not None:
        click.echo("\nModule health (eval split):")
        click.echo(f"  teacher top-1 on raw images {t['student_eval']['top1']:.2f}"
                   + (f", on reconstructions G(E(x, y)) {rec['teacher_top1']:.2f}" if rec is not None else ""))
    if gen is not None:
        click.echo(f"  teacher energy on generator samples {gen['teacher_energy_mean']:.2f} "
                   f"(raw student images {gen['student_raw_energy_mean']:.2f}; lower = surer)")
    if anc is not None:
        ref = anc["teacher_domain_energy_mean"]
        click.echo(f"  anchors: teacher top-1 {anc['teacher_top1']:.2f}, largest class share "
                   f"{anc['max_class_share']:.2f}, mean energy {anc['energy_mean']:.2f}"
                   + (f" (teacher's own domain {ref:.2f})" if ref is not None else ""))
        if anc.get("fidelity") is not None:
            click.echo(f"  fidelity (own image closest among its class; chance 0.50): anchors {anc['fidelity']:.2f}, "
                       f"reconstructions {rec['fidelity']:.2f}; anchor share in Module 3 "
                       f"{results.get('anchor_share', 1.0):.2f}")
    for line in results.get("health_problems") or []:
        click.echo(f"  warning: {line}")
    from augkd_edge.auto import cli_lines

    for line in cli_lines(results):
        click.echo(line)
