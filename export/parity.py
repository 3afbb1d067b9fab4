"""Is the exported model the model we trained? Logit-level comparison of two runners.

A conversion bug (wrong normalisation, a layer exported in training mode, a
fused op with another rounding) rarely crashes: it shifts logits. Comparing
on real images of the student domain, not random noise, shows whether it shifts
*decisions*, which is what users see. Figures reported:

- ``max_abs_diff``: max |candidate - reference| over all logits, gated by
  ``tolerance = atol + rtol * logit_scale`` where ``logit_scale`` is the largest
  |reference logit| (Polygraphy's atol + rtol, with rtol taken relative to the
  logits' range rather than to each logit: float32 rounding grows with the
  magnitudes inside the network; the defaults and the measurements behind them are in
  docs/decisions.md#export-and-benchmarks);
- ``max_rel_diff``: max |candidate - reference| / max(|reference|, 1e-6), as
  Polygraphy reports it (informative; relative error explodes near zero logits,
  so it is not gated);
- ``top1_agreement``: fraction of images whose argmax matches (gated by ``min_agreement``).

Batching (and its padding rule for fixed-batch graphs) and top-1 are
``latency.batched_logits`` / ``latency.top1_accuracy``, the same code the
latency benchmark and the Jetson runner use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from augkd_edge.export.latency import batched_logits
from augkd_edge.export.runtimes import Runner

REL_FLOOR = 1e-6
# parity tolerance defaults: docs/decisions.md#export-and-benchmarks
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5


@dataclass
class ParityReport:
    """Figures of one reference-vs-candidate comparison, and whether they pass."""

    reference: str
    candidate: str
    images: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    atol: float
    min_agreement: float
    rtol: float = 0.0
    logit_scale: float = 0.0

    @property
    def tolerance(self) -> float:
        """The largest allowed |candidate - reference|: atol + rtol * the largest |reference logit|."""
        return self.atol + self.rtol * self.logit_scale

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agreement >= self.min_agreement

    def to_dict(self) -> dict:
        return {**asdict(self), "tolerance": self.tolerance, "passed": self.passed}

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"parity {self.candidate} vs {self.reference} on {self.images} images: "
            f"max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g} = atol {self.atol:g} + rtol "
            f"{self.rtol:g} x max |logit| {self.logit_scale:.3g}), max rel diff {self.max_rel_diff:.3g}, "
            f"top-1 agreement {100 * self.top1_agreement:.2f}% (min {100 * self.min_agreement:.2f}%) -> {verdict}"
        )


def compare_logits(
    reference: np.ndarray,
    candidate: np.ndarray,
    atol: float = DEFAULT_ATOL,
    min_agreement: float = 1.0,
    names: tuple[str, str] = ("reference", "candidate"),
    rtol: float = DEFAULT_RTOL,
) -> ParityReport:
    """Parity figures for two logit arrays of the same images."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    rel = diff / np.maximum(np.abs(reference.astype(np.float64)), REL_FLOOR)
    agree = float((candidate.argmax(axis=1) == reference.argmax(axis=1)).mean())
    return ParityReport(
        reference=names[0],
        candidate=names[1],
        images=len(reference),
        max_abs_diff=float(diff.max()),
        max_rel_diff=float(rel.max()),
        top1_agreement=agree,
        atol=atol,
        min_agreement=min_agreement,
        rtol=rtol,
        logit_scale=float(np.abs(reference).max()),
    )


def compare_runners(
    reference: Runner,
    candidate: Runner,
    images: np.ndarray,
    atol: float = DEFAULT_ATOL,
    min_agreement: float = 1.0,
    batch_size: int = 64,
    fixed_batch: int | None = None,
    rtol: float = DEFAULT_RTOL,
) -> ParityReport:
    """Run the same images through both runners and compare (see module docstring)."""
    ref = batched_logits(reference.infer, images, batch_size, fixed_batch)
    cand = batched_logits(candidate.infer, images, batch_size, fixed_batch)
    names = (f"{reference.name}-{reference.device}-{reference.precision}",
             f"{candidate.name}-{candidate.device}-{candidate.precision}")
    return compare_logits(ref, cand, atol, min_agreement, names, rtol=rtol)
