"""Does an anchor still show *its* image? A fidelity score that a teacher-fooling image cannot pass.

Module 2's loss asks the teacher to name the label on the anchor, so the
teacher's top-1 on anchors says nothing about whether the anchor kept the
sample: on a user folder of dark-on-white digits the anchors were dark blobs
that the teacher labelled right 0.90-1.00 of the time (issue 20). Fidelity asks
a question no loss of the method optimises: among the images *of the same
class*, is the anchor most like its own source image?

- similarity: the absolute Pearson correlation of two images' pixels (all
  channels, each image standardised). It ignores brightness, contrast and
  polarity, so an anchor that redraws a dark-on-light digit as the teacher's
  light-on-dark one is still faithful; a class prototype or a blob is not,
  since it is no more like its own image than like the others of its class.
- score: for each source image, the fraction of the *other* images of its class
  in a pool (the eval and train splits) that are less similar to its anchor than
  the source is (ties count half): a per-image AUC, averaged. 0.5 = chance (the
  anchor has lost its sample), 1 = every anchor is closest to its own image.

Same-class distractors only: retrieving the right *class* is what a
teacher-fooling prototype does well. Measured choices and numbers:
docs/method.md, "Anchor fidelity".
"""

from __future__ import annotations

import torch


def _standardise(images: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    return flat / norm.clamp_min(1e-12)  # a constant image becomes all zeros: similarity 0 to everything


def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|Pearson correlation| between every image of ``a`` [N, ...] and every image of ``b`` [M, ...]: [N, M]."""
    return (_standardise(a) @ _standardise(b).T).abs()


def retrieval_fidelity(
    made: torch.Tensor,
    sources: torch.Tensor,
    labels: torch.Tensor,
    pool: torch.Tensor | None = None,
    pool_labels: torch.Tensor | None = None,
) -> float:
    """Mean per-image AUC of ``made[i]`` (an anchor or reconstruction of ``sources[i]``) retrieving its source.

    The distractors of image i are the other images of its class among
    ``sources`` and ``pool`` (optional extra images, e.g. the train split).
    Images whose class has no distractor are left out; NaN when none is left.
    """
    if made.shape != sources.shape:
        raise ValueError(f"made {tuple(made.shape)} and sources {tuple(sources.shape)} must match")
    candidates, cand_labels = sources, labels
    if pool is not None and pool_labels is not None and len(pool):
        candidates, cand_labels = torch.cat([sources, pool.to(sources.dtype)]), torch.cat([labels, pool_labels])
    sim = similarity(made.float(), candidates.float())  # [N, N + P]; column i is image i's own source
    n = len(labels)
    own = sim[torch.arange(n), torch.arange(n)].unsqueeze(1)
    same = cand_labels.unsqueeze(0) == labels.unsqueeze(1)
    same[torch.arange(n), torch.arange(n)] = False  # the source is no distractor of itself
    below = ((sim < own) & same).sum(dim=1).double() + 0.5 * ((sim == own) & same).sum(dim=1).double()
    count = same.sum(dim=1)
    keep = count > 0
    if not bool(keep.any()):
        return float("nan")
    return float((below[keep] / count[keep]).mean())


def anchor_share(fidelity: float, floor: float, full: float) -> float:
    """How much of Module 3's anchor to use: 0 at or below ``floor``, 1 from ``full`` on, linear between.

    NaN (no fidelity measured) counts as unfaithful: an unmeasured anchor is not trusted.
    """
    if not fidelity == fidelity or fidelity <= floor:  # NaN or at most the floor
        return 0.0
    if fidelity >= full:
        return 1.0
    return (fidelity - floor) / (full - floor)


def kd_balance(u: float) -> float:
    """The anchors' cap from Module 3's loss balance: min(1, (1 - u) / u), the KD weight over the CE weight.

    An anchor is there for the teacher: it moves the image to where the teacher's soft labels can be
    trusted. The KD term is what reads them, with weight 1 - u; under CE (weight u) an anchor is only a
    teacher-domain image with the student-domain label. At u <= 0.5 (the paper's and the default) the
    teacher weighs at least as much as the labels and the cap is 1 (u = 0, KD alone, included); at u = 0.8
    it is 0.25. Measured: docs/method.md, "How far the accuracy suite's means can be trusted" (at u = 0.8
    full-share anchors cost about a point against none).
    """
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"u must lie in [0, 1], got {u}")
    return 1.0 if u <= 0.5 else (1.0 - u) / u
