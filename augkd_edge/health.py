"""Is Module 1 drawing the teacher's domain, and is Module 2 making anchors? Numbers and plain words.

A collapsed Module 2 (every anchor the same image) or a generator that draws
blobs still lets the pipeline finish with a reasonable student: Module 3's real
images and KD carry it. So the run measures, on the eval split, what the
pictures of the report show, and says in words when a module failed
(docs/method.md, "Health checks"):

- generator: the teacher's mean energy on G's own samples, next to its energy
  on the raw student images (a generator that draws blobs leaves it unsure);
- reconstruction: teacher top-1 on G(E(x, y)), to compare with its top-1 on x;
- anchors: teacher top-1 on G(A(E(x, y), y)), the largest share of anchors the
  teacher puts in one class, mean energy on the anchors next to the teacher's
  mean energy on its own domain, and how far anchors of different images of
  one class are from each other next to the same figure for the images;
- fidelity of reconstructions and anchors (``augkd_edge.fidelity``): is each one
  more like its own image than like the other images of its class? The teacher's
  top-1 cannot tell: it is what Module 2 optimises, and a teacher-fooling blob
  passes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


# report.md flags a collapse below / above these (issue 13's thresholds)
COLLAPSE_TOP1 = 0.5
COLLAPSE_SHARE = 0.5
# report.md says anchors have lost their samples below this fidelity (chance 0.5; docs/method.md, "Anchor fidelity")
FIDELITY_LOST = 0.7


def _pair_distance(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-pixel absolute difference between images of one class, over all same-class pairs."""
    total, pairs = 0.0, 0
    for c in torch.unique(labels):
        group = images[labels == c].flatten(1)
        n = len(group)
        if n < 2:
            continue
        d = torch.cdist(group, group, p=1) / group.shape[1]
        total += float(d.sum()) / 2  # each unordered pair once (the diagonal is 0)
        pairs += n * (n - 1) // 2
    return total / pairs if pairs else float("nan")


def _made_images(generator: nn.Module, encoder: nn.Module, anchor: nn.Module | None, images: torch.Tensor,
                 labels: torch.Tensor, batch_size: int, device: torch.device
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Batches of reconstructions G(E(x, y)) and (with an AnchorNet) anchors G(A(E(x, y), y)), on the CPU."""
    recon, anchors = [], []
    for start in range(0, len(labels), batch_size):
        x = images[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        _, z, _ = encoder(x, y)
        recon.append(generator(z).float().cpu())
        if anchor is not None:
            z_a, _ = anchor(z, y)
            anchors.append(generator(z_a).float().cpu())
    return recon, anchors


@torch.no_grad()
def module_health(
    teacher: nn.Module,
    generator: nn.Module | None,
    encoder: nn.Module | None,
    anchor: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    teacher_domain_energy: float | None,
    batch_size: int = 256,
    generator_samples: int = 256,
    pool_images: torch.Tensor | None = None,
    pool_labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """``{"generator": {...}, "reconstruction": {...}, "anchor": {...}}`` on labelled student images (the eval split).

    Sections whose modules the method does not train are None. ``generator``
    compares the teacher's certainty on G's own samples (fixed noise) with its
    certainty on the raw student images: a generator that draws the teacher's
    domain should leave the teacher at least as sure as a foreign domain does.
    ``pool_images`` / ``pool_labels`` (the train split): more same-class
    distractors for the fidelity scores, which are measured on ``images``.
    """
    from augkd_edge.evaluate import predict_logits
    from augkd_edge.fidelity import retrieval_fidelity
    from augkd_edge.losses import energy

    out: dict[str, Any] = {"generator": None, "reconstruction": None, "anchor": None}
    if generator is None or encoder is None:
        return out
    device = next(generator.parameters()).device
    for net in (teacher, generator, encoder, anchor):
        if net is not None:
            net.eval()
    recon, anchors = _made_images(generator, encoder, anchor, images, labels, batch_size, device)
    def teacher_view(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = predict_logits(teacher, x, mean, std, batch_size).cpu()
        return logits.argmax(dim=1), energy(logits)

    z = torch.randn(generator_samples, generator.latent_dim, generator=torch.Generator().manual_seed(0))
    samples = torch.cat([generator(z[i:i + batch_size].to(device)).float().cpu()
                         for i in range(0, len(z), batch_size)])
    _, gen_energy = teacher_view(samples)
    _, raw_energy = teacher_view(images.float())
    out["generator"] = {"teacher_energy_mean": float(gen_energy.mean()),
                        "student_raw_energy_mean": float(raw_energy.mean())}
    source = images.float()

    def fidelity(made: torch.Tensor) -> float:
        return retrieval_fidelity(made, source, labels, pool_images, pool_labels)

    x_rec = torch.cat(recon)
    pred, _ = teacher_view(x_rec)
    out["reconstruction"] = {"teacher_top1": float((pred == labels).float().mean()), "fidelity": fidelity(x_rec)}
    if anchor is not None:
        x_a = torch.cat(anchors)
        pred, e = teacher_view(x_a)
        out["anchor"] = {
            "teacher_top1": float((pred == labels).float().mean()),
            "max_class_share": float(torch.bincount(pred).max()) / len(pred),
            "energy_mean": float(e.mean()),
            "teacher_domain_energy_mean": teacher_domain_energy,
            "same_class_distance": _pair_distance(x_a, labels),
            "source_same_class_distance": _pair_distance(images.float(), labels),
            "fidelity": fidelity(x_a),
        }
    return out


def problems(health: dict[str, Any], teacher_raw_top1: float, objective: str = "bounded") -> list[str]:
    """Plain-language findings, each with what to try; empty when Modules 1 and 2 look healthy.

    ``objective``: the anchor loss the run used, so the advice does not repeat it.
    """
    found = []
    gen, rec, anc = health.get("generator"), health.get("reconstruction"), health.get("anchor")
    if gen is not None and gen["teacher_energy_mean"] > gen["student_raw_energy_mean"]:
        found.append(
            f"Module 1: the teacher is less sure about the generator's own samples (mean energy "
            f"{gen['teacher_energy_mean']:.2f}) than about the raw student images ({gen['student_raw_energy_mean']:.2f}): "
            "the generator grid shows shapes, not the teacher's domain. Anchors and reconstructions can still be fine "
            "(they start from real images). On a CPU budget this is expected: 8x more iterations, a larger "
            "--df-bn-weight or learning rate did not make the samples digits in our measurements (docs/method.md, "
            "\"Making G(z) draw digits\"); whether the paper's far longer Module 1 (--preset paper, on a GPU) "
            "does is not measured yet."
        )
    if rec is not None and rec["teacher_top1"] < teacher_raw_top1:
        found.append(
            f"Module 1: the teacher recognises the reconstructions G(E(x, y)) less often "
            f"({rec['teacher_top1']:.2f}) than the raw images ({teacher_raw_top1:.2f}): the generator does not yet "
            "draw the teacher's domain. Try more Module 1 iterations (--df-epochs, --df-iters-per-epoch) or a larger "
            "--df-bn-weight."
        )
    if anc is not None:
        if anc["teacher_top1"] < COLLAPSE_TOP1 or anc["max_class_share"] > COLLAPSE_SHARE:
            fix = ("use --anchor-objective bounded (the paper's loss rewards one over-confident image)"
                   if objective == "paper" else
                   "raise --anchor-lambda-ce or --anchor-epochs; if the reconstructions fail too, improve Module 1 "
                   "first: anchors can only be images the generator can draw")
            found.append(
                f"Module 2 COLLAPSED: the teacher names the label on {anc['teacher_top1']:.0%} of the anchors and puts "
                f"{anc['max_class_share']:.0%} of them in one class, so Module 3 starts from the wrong images; {fix}."
            )
        fid = anc.get("fidelity")
        if fid is not None and not fid >= FIDELITY_LOST:  # NaN too: nothing shows they kept their samples
            rec_fid = (rec or {}).get("fidelity")
            found.append(
                f"Module 2: anchors are recognised by the teacher ({anc['teacher_top1']:.0%} labelled right) but do not "
                f"resemble their images: fidelity {fid:.2f} (0.5 = no more like its own image than like others of its "
                f"class; healthy >= {FIDELITY_LOST})"
                + (f", reconstructions {rec_fid:.2f}" if rec_fid is not None else "")
                + ". They are teacher-fooling prototypes, not these samples in the teacher's domain, so Module 3 gives "
                "them a smaller share (results.json anchor_share; docs/method.md, \"Anchor fidelity\"). If the "
                "reconstructions fail too, the generator cannot draw this domain: try --method auto, which also "
                "trains no-anchor and dfkd-finetune and keeps the best on the eval split."
            )
        ref = anc.get("teacher_domain_energy_mean")
        if ref is not None and anc["energy_mean"] > ref:
            found.append(
                f"Module 2: the teacher is less certain on the anchors (mean energy {anc['energy_mean']:.2f}) than on "
                f"its own domain ({ref:.2f}). Try more --anchor-epochs; a lower --anchor-lambda-z buys certainty "
                "at the cost of the anchors' fidelity to their images (docs/method.md, \"Anchor fidelity\")."
            )
    return found
