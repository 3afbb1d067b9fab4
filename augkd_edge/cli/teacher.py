"""``augkd-edge teacher``: train a teacher on a teacher-domain spec."""

from __future__ import annotations

import click

from augkd_edge.config import AMP_MODES
from augkd_edge.teacher import TeacherSettings

_D = TeacherSettings()


@click.command("teacher")
@click.option("--data", "data_spec", default="digits:mnist", show_default=True,
              help="Teacher-domain spec: digits:mnist, digits:optdigits, an ImageFolder path "
                   "(root/<class>/<image>), or several joined with '+' (a union).")
@click.option("--arch", default=_D.arch, show_default=True,
              help="torchvision classification model name (resnet18, resnet34, resnet50, mobilenet_v3_small, ...).")
@click.option("--epochs", type=click.IntRange(min=1), default=_D.epochs, show_default=True,
              help="Training epochs; the best epoch by eval top-1 is kept.")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True,
              help="Images per step (at least 2: BatchNorm cannot train on one image).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_D.lr, show_default=True,
              help="Peak learning rate of SGD (Nesterov) with a cosine schedule.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=_D.weight_decay, show_default=True,
              help="L2 weight decay.")
@click.option("--seed", type=int, default=_D.seed, show_default=True, help="Seed for splits, init and data order.")
@click.option("--input-size", type=click.IntRange(min=8), default=_D.input_size, show_default=True,
              help="Square input resolution the images are resized to (the paper uses 32).")
@click.option("--also-eval", "also_eval", multiple=True, metavar="SPEC",
              help="Also report top-1/3/5 on another domain with the same classes (repeatable): shows the shift.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N. Under torchrun each rank takes cuda:LOCAL_RANK.")
@click.option("--amp", type=click.Choice(AMP_MODES), default="off", show_default=True,
              help="Mixed precision: bf16, or fp16 with gradient scaling (for GPUs).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=50, show_default=True,
              help="Also checkpoint every N steps (0: epoch ends only).")
@click.option("--deterministic", is_flag=True, help="Deterministic kernels (same bits on a rerun or resume).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUT/teacher.ckpt when it exists (a finished run is not redone).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/teacher", show_default=True,
              help="Output folder: teacher.pt, teacher.ckpt, metrics.jsonl, results.json, report.md, splits.json.")
def command(data_spec: str, arch: str, epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
            input_size: int, also_eval: tuple[str, ...], device: str, amp: str, checkpoint_every: int,
            deterministic: bool, resume: bool, out_dir: str) -> None:
    """Train a teacher on DATA and report its accuracy on its own eval split
    and, with --also-eval, on another domain.

    Several GPUs (or CPU processes): torchrun --nproc-per-node N -m augkd_edge.cli teacher ...
    """
    from augkd_edge import distributed
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.data import check_same_classes, load_domain
    from augkd_edge.device import set_deterministic
    from augkd_edge.teacher import train_teacher

    settings = TeacherSettings(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                               weight_decay=weight_decay, seed=seed, input_size=input_size, amp=amp)
    from augkd_edge.errors import UserError

    if batch_size < 2:
        raise UserError(f"--batch-size {batch_size}: use at least 2 (BatchNorm cannot train on one image per batch).")
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed {seed}: use a value from 0 to 2**32 - 1 (numpy's seed range).")
    check_writable_dir(out_dir, "--out")
    set_deterministic(deterministic)
    dev = distributed.device_for(device)
    domain = load_domain(data_spec, input_size)
    others = [load_domain(spec, input_size) for spec in also_eval]
    for other in others:  # before training, not after all epochs
        check_same_classes(domain, other)
    with distributed.session(dev) as dist:
        if dist.is_main:
            click.echo(f"teacher {arch} on {data_spec}: {len(domain.labels)} images, {len(domain.classes)} classes, "
                       f"{dev}, {dist.world} process(es)")
        result = train_teacher(domain, settings, out_dir, device=dev, also_eval=others, resume=resume,
                               checkpoint_every=checkpoint_every, progress=dist.is_main)
    if not dist.is_main:
        return
    click.echo(f"eval top-1 on {data_spec}: {result.eval_acc['top1']:.4f}")
    for name, acc in result.other_acc.items():
        click.echo(f"top-1 on {name}: {acc['top1']:.4f}")
    click.echo(f"wrote {result.model_path} and {out_dir}/report.md ({result.wall_s:.0f} s)")
