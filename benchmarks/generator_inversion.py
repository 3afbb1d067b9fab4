"""Can the default teacher alone lead a generator to draw digits? (issue 13, part 2)

Module 1 has only the teacher to learn from. This script measures how
digit-like the images are that the teacher's signals (confident class,
class balance, BatchNorm statistics) lead to, in and beyond the quick preset's
budget, with a judge the method never sees: a small CNN trained on MNIST
(the teacher's domain, which exists here because the benchmark is built from
it). The judge's agreement with the label the image was drawn for (the
teacher's argmax for G(z), the target for pixel inversion) is the score:
about 0.9 for real MNIST digits, 0.1 for images with no digit in them.

Rows:

- ``generator ...``: the generator-only part of Module 1 (L_G without the
  adversarial term: ``ce`` + ``alpha_g`` class balance + ``bn`` x L_BN, the
  quick preset's weights, Adam lr 3e-3 beta1 0.5, cosine), G as in
  ``models/generative.py``; ``res 8`` draws 8x8 and upsamples bilinearly to
  32x32, as the digits data are (``data/preprocess.py``: 8x8 common resolution).
- ``class-conditional generator``: G(z + embedding(y)) trained with CE to y
  (the class the image is drawn for) + ``bn`` x L_BN, as pixel inversion is;
  scored like the others (the teacher's argmax), and ``teacher_reads_drawn_class``
  in the JSON says how often the teacher reads y;
- ``pixel inversion``: DeepInversion on the pixels of 60 images (8x8
  parameters, upsampled; random 2-pixel shifts; CE to a target class + 0.05 x
  L_BN), no generator, far beyond the quick budget: an upper bound for what the
  teacher's signals give.

Usage (one thread; about 15 minutes on the 2-core CPU; trains the default
teacher first if the cache lacks it)::

    OMP_NUM_THREADS=1 python benchmarks/generator_inversion.py --out benchmarks/results/generator-inversion
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augkd_edge.config import DistillConfig
from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, load_domain, normalize
from augkd_edge.losses import BNStatsHook, energy, generator_loss
from augkd_edge.models.generative import Generator
from augkd_edge.report import save_grid, write_json
from augkd_edge.teacher import obtain_teacher

SIZE = 32
GENERATORS = {  # name: (G's own resolution, steps, batch, class-conditional); the quick preset: 180 steps of 32
    "generator, res 32 (quick preset), 180 steps": (32, 180, 32, False),
    "generator, res 8, 180 steps": (8, 180, 32, False),
    "generator, res 8, 400 steps": (8, 400, 32, False),
    "generator, res 8, 180 steps of batch 128": (8, 180, 128, False),
    "class-conditional generator, res 32, 180 steps": (32, 180, 32, True),
    "class-conditional generator, res 8, 180 steps": (8, 180, 32, True),
}
PIXEL_STEPS = (600, 2000)


def judge_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Dropout(0.3), nn.Linear(256, 10))


def train_judge(images: torch.Tensor, labels: torch.Tensor) -> tuple[nn.Module, torch.Tensor, float]:
    """8 epochs on 4,500 MNIST images (grey, random 2-pixel shifts).

    Returns the judge, the indices of the images it never saw and its top-1 on them.
    """
    torch.manual_seed(0)
    perm = torch.randperm(len(labels))
    x, y = images[perm].mean(1, keepdim=True), labels[perm]
    net, n_train = judge_net(), 4500
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(8):
        net.train()
        for i in range(0, n_train, 64):
            xb = torch.roll(x[i:i + 64], torch.randint(-2, 3, (2,)).tolist(), (2, 3))
            loss = F.cross_entropy(net(xb), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        held_out = float((net(x[n_train:]).argmax(1) == y[n_train:]).float().mean())
    return net, perm[n_train:], held_out


def score(teacher: nn.Module, judge: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None,
          stretch: bool = False) -> dict[str, float]:
    """Judge agreement with ``labels`` (default: the teacher's argmax), the teacher's energy and top class share.

    ``stretch``: the judge sees each image's grey levels stretched to [0, 1] (the teacher sees the image
    as it is), so that a faint digit on a grey ground counts as a digit.
    """
    with torch.no_grad():
        logits = teacher(normalize(x, IMAGENET_MEAN, IMAGENET_STD))
        target = logits.argmax(1) if labels is None else labels
        grey = x.mean(1, keepdim=True)
        if stretch:
            low, high = grey.amin((1, 2, 3), keepdim=True), grey.amax((1, 2, 3), keepdim=True)
            grey = (grey - low) / (high - low).clamp_min(1e-6)
        agree = (judge(grey).argmax(1) == target).float().mean()
        return {"judge_agreement": round(float(agree), 3),
                "teacher_top1": round(float((logits.argmax(1) == target).float().mean()), 3),
                "teacher_energy": round(float(energy(logits).mean()), 2),
                "max_class_share": round(float(torch.bincount(logits.argmax(1), minlength=10).max() / len(x)), 3)}


def _to_input(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-1] == SIZE else F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)


class ConditionalLatent(nn.Module):
    """z + a learned embedding of the class the image is drawn for (the latent stays N(0, I) plus a shift)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.embed = nn.Embedding(10, latent_dim)
        nn.init.normal_(self.embed.weight)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return z + self.embed(labels)


def train_generator(teacher: nn.Module, res: int, steps: int, batch: int, cfg: Any,
                    conditional: bool) -> tuple[nn.Module, ConditionalLatent | None]:
    """Module 1's generator step without the student: ce + alpha_g * balance + bn * L_BN.

    Class-conditional: CE to the class each image is drawn for (10 classes in turn) + bn * L_BN.
    """
    torch.manual_seed(0)
    gen = Generator(cfg.latent_dim, res, 3, cfg.gen_width)
    cond = ConditionalLatent(cfg.latent_dim) if conditional else None
    params = list(gen.parameters()) + (list(cond.parameters()) if cond else [])
    opt = torch.optim.Adam(params, lr=cfg.lr_g, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    labels = torch.arange(batch) % 10
    for _ in range(steps):
        z = torch.randn(batch, cfg.latent_dim)
        x = _to_input(gen(cond(z, labels) if cond else z))
        with BNStatsHook(teacher) as bn:
            logits = teacher(normalize(x, IMAGENET_MEAN, IMAGENET_STD))
        if cond:
            loss = F.cross_entropy(logits, labels) + cfg.bn_weight * bn.loss()
        else:  # Module 1's own L_G, its adversarial term off (there is no student here)
            loss = generator_loss(logits, logits, bn.loss(), adv_weight=0.0, ce_weight=cfg.ce_weight,
                                  alpha_g=cfg.alpha_g, bn_weight=cfg.bn_weight)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return gen.eval(), cond


def pixel_inversion(teacher: nn.Module, n: int = 60) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """DeepInversion on 8x8 pixel parameters per image; snapshots (images, targets) at PIXEL_STEPS."""
    torch.manual_seed(0)
    targets = torch.arange(n) % 10
    u = torch.randn(n, 1, 8, 8, requires_grad=True)
    opt = torch.optim.Adam([u], lr=0.05)
    snaps = {}
    for step in range(1, max(PIXEL_STEPS) + 1):
        x = _to_input(torch.sigmoid(u)).expand(-1, 3, -1, -1)
        shifted = torch.roll(x, torch.randint(-2, 3, (2,)).tolist(), (2, 3))
        with BNStatsHook(teacher) as bn:
            logits = teacher(normalize(shifted, IMAGENET_MEAN, IMAGENET_STD))
        loss = F.cross_entropy(logits, targets) + 0.05 * bn.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in PIXEL_STEPS:
            snaps[step] = (_to_input(torch.sigmoid(u.detach())).expand(-1, 3, -1, -1), targets)
    return snaps


def grid_by_class(x: torch.Tensor, labels: torch.Tensor, path: Path) -> str:
    """Up to 4 images per class, a class per column, saved; returns the file name."""
    cols = [x[labels == c][:4] for c in range(10)]
    rows = min(len(c) for c in cols)
    picked = torch.stack([c[:rows] for c in cols], 1).flatten(0, 1) if rows else x[:40]
    save_grid(picked, path, nrow=10)
    return path.name


def run(out: Path, cache_dir: Path) -> dict[str, Any]:
    cfg = DistillConfig()
    teacher, _, _ = obtain_teacher(cfg, 10, device=torch.device("cpu"), cache_dir=cache_dir, progress=False)
    teacher.eval().requires_grad_(False)
    mnist, optdigits = load_domain("digits:mnist", SIZE), load_domain("digits:optdigits", SIZE)
    judge, held_out, judge_top1 = train_judge(mnist.images, mnist.labels)
    rows = [{"name": "real MNIST (the 500 the judge never saw)", **score(teacher, judge, mnist.images[held_out])},
            {"name": "real optdigits (all 1,797)", **score(teacher, judge, optdigits.images)}]
    z = torch.randn(256, cfg.data_free.latent_dim, generator=torch.Generator().manual_seed(1))
    for name, (res, steps, batch, conditional) in GENERATORS.items():
        t0 = time.perf_counter()
        gen, cond = train_generator(teacher, res, steps, batch, cfg.data_free, conditional)
        wall = time.perf_counter() - t0
        drawn = torch.arange(len(z)) % 10  # the class a conditional G draws for
        with torch.no_grad():
            x = _to_input(gen(cond(z, drawn) if cond else z))
            labels = teacher(normalize(x, IMAGENET_MEAN, IMAGENET_STD)).argmax(1)
        prefix = "conditional-" if cond else ""
        picture = grid_by_class(x, labels, out / f"{prefix}generator-res{res}-{steps}x{batch}.png")
        rows.append({"name": name, "wall_s": round(wall, 1), "picture": picture, **score(teacher, judge, x)})
        if cond:  # does G draw the class it is asked for?
            rows[-1]["teacher_reads_drawn_class"] = round(float((labels == drawn).float().mean()), 3)
        print(json.dumps(rows[-1]), flush=True)
    t0 = time.perf_counter()
    for steps, (x, targets) in pixel_inversion(teacher).items():
        picture = grid_by_class(x, targets, out / f"pixel-inversion-{steps}.png")
        rows.append({"name": f"pixel inversion, 60 images, {steps} steps", "picture": picture,
                     "wall_s": round((time.perf_counter() - t0) * steps / max(PIXEL_STEPS), 1),  # its share of the one run
                     **score(teacher, judge, x, targets)})
        print(json.dumps(rows[-1]), flush=True)
    return {"judge_heldout_top1": round(judge_top1, 3), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Can the teacher alone lead a generator to draw digits?", "",
             f"Command: `{result['command']}`", "",
             f"Judge: a small CNN trained on 4,500 MNIST images, held-out top-1 {result['judge_heldout_top1']:.3f}. "
             "Agreement: the judge names the class the image was drawn for (G(z): the teacher's argmax; "
             "pixel inversion: the target). Energy: the teacher's mean energy (lower = surer).", "",
             "| images | judge agreement | teacher top-1 | teacher energy | largest class share | wall (s) | picture |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        pic = f"![]({r['picture']})" if "picture" in r else ""
        lines.append(f"| {r['name']} | {r['judge_agreement']:.3f} | {r['teacher_top1']:.3f} | {r['teacher_energy']:.2f} "
                     f"| {r['max_class_share']:.3f} | {r.get('wall_s', '')} | {pic} |")
    return "\n".join(lines) + "\n"


def save_results(out: Path, script: str, argv: list[str] | None, result: dict[str, Any],
                 render: Callable[[dict[str, Any]], str]) -> None:
    """``<script>.json`` and ``<script>.md`` in ``out``, with the command that made them; the Markdown is printed."""
    args = sys.argv[1:] if argv is None else argv
    result["command"] = shlex.join(["python", f"benchmarks/{script}.py", *args])
    write_json(result, out / f"{script}.json")
    text = render(result)
    (out / f"{script}.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/generator-inversion")
    parser.add_argument("--cache-dir", default=str(Path("~/.cache/augkd-edge").expanduser()))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_results(out, "generator_inversion", argv, run(out, Path(args.cache_dir)), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
