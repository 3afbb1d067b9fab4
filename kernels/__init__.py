"""Fused ops for AuG-KD's hot paths (installed as ``augkd_edge.kernels``).

A leaf library: it never imports augkd_edge training code. Each op has a
PyTorch reference and a Triton kernel; :mod:`.dispatch` picks one per call
(``AUGKD_KERNELS`` = auto | triton | reference, or :func:`set_backend` /
:func:`backend`). Importing this package needs only torch: triton is imported
the first time a kernel actually runs.
"""

from .dispatch import backend, current_backend, set_backend
from .distill_loss import distill_loss
from .energy import energy_score
from .latent_mix import latent_mix
from .mix_normalize import mix_normalize

__all__ = [
    "backend",
    "current_backend",
    "distill_loss",
    "energy_score",
    "latent_mix",
    "mix_normalize",
    "set_backend",
]
