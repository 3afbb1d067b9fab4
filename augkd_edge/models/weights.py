"""Pretrained starting weights for the student and the trained-here teacher.

``--student-weights`` / ``--teacher-weights`` take either

- a torchvision weights name of the architecture (``DEFAULT``, ``IMAGENET1K_V1``,
  or the full ``ResNet18_Weights.IMAGENET1K_V1``), resolved through torchvision's
  weights API and read from its cache (``$TORCH_HOME/hub/checkpoints/``). Nothing
  is downloaded: when the file is not cached the error names it and where to put
  it (the cache is checked here before torchvision is asked for the weights);
- for a ``timm:NAME`` architecture, a timm pretrained tag (``DEFAULT`` or e.g. ``lamb_in1k``), read from the
  local Hugging Face cache (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``); missing there, the error
  names the repository and the folder, as for torchvision;
- or a state_dict file (a plain state_dict, ``{"state_dict": ...}``, or an
  augkd-edge model file), read with ``weights_only=True``, or a ``.safetensors`` file.

Every tensor of the architecture except the classifier head must be in the
file with its shape; the head is kept only when it already has the run's class
count, otherwise the model's new head stays. One line reports what was kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    from torch import nn

# "IMAGENET1K_V1", "DEFAULT" or "ResNet18_Weights.IMAGENET1K_V1"
_WEIGHTS_NAME = re.compile(r"(?:\w+_Weights\.)?[A-Z][A-Z0-9_]*")


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where a ``--*-weights`` value points: a torchvision weights entry (``tv``) or a file."""

    spec: str
    arch: str
    path: Path
    tv: Any = None  # torchvision WeightsEnum member, None for a user's file
    hub: str | None = None  # the Hugging Face repository of timm weights found in the local cache

    @property
    def label(self) -> str:
        if self.hub is not None:
            return f"timm {self.hub}"
        return f"{type(self.tv).__name__}.{self.tv.name}" if self.tv is not None else str(self.path)

    def identity(self) -> str:
        """What the weights are, for cache keys and fingerprints: the torchvision entry or the file's content hash."""
        if self.tv is not None:
            return f"torchvision:{self.label}"  # timm hub weights: by content, below
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return f"file:sha256:{digest.hexdigest()[:16]}"


def resolve(arch: str, spec: str, flag: str = "--weights") -> WeightsSource:
    """Check ``spec`` without loading any weights: the file exists, or the torchvision entry exists and is cached."""
    path = Path(spec).expanduser()
    if path.is_file():
        return WeightsSource(spec, arch, path)
    from augkd_edge.models.zoo import is_timm

    if is_timm(arch):
        return _timm_weights(arch, spec, flag)
    if not _WEIGHTS_NAME.fullmatch(spec):
        raise UserError(f"{flag} {spec}: no such file, and not a torchvision weights name "
                        f"(DEFAULT, IMAGENET1K_V1, ...); give a state_dict file or a weights name.")
    return _torchvision_weights(arch, spec, flag)


def _timm_weights(arch: str, spec: str, flag: str) -> WeightsSource:
    """timm's pretrained ``spec`` of ``arch`` from the local Hugging Face cache; never downloads."""
    import timm
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    from augkd_edge.models.zoo import TIMM_PREFIX, model_builder

    model_builder(arch)  # an unknown model is named as such
    name = arch[len(TIMM_PREFIX):]
    tags = timm.list_pretrained(f"{name}.*")
    full = tags[0] if spec == "DEFAULT" and tags else f"{name}.{spec}"
    if full not in tags:
        raise UserError(f"{flag} {spec}: no such file, and timm has no pretrained {full}; "
                        + (f"valid names: DEFAULT, {', '.join(t.split('.', 1)[1] for t in tags)}." if tags
                           else f"timm has no pretrained weights for {name}; give a state_dict file."))
    repo = timm.models.get_pretrained_cfg(full).hf_hub_id
    cache = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE
    for file_name in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, file_name, cache_dir=cache) if repo else None
        if isinstance(found, str):
            return WeightsSource(spec, arch, Path(found), hub=repo)
    raise UserError(f"{flag} {spec}: {full} ({repo}) is not in the Hugging Face cache and augkd-edge does not "
                    f"download; fetch it elsewhere (huggingface-cli download {repo} model.safetensors), copy "
                    f"{Path(cache) / ('models--' + str(repo).replace('/', '--'))}/ here, or give the file itself.")


def _torchvision_weights(arch: str, spec: str, flag: str) -> WeightsSource:
    import torch
    import torchvision

    from augkd_edge.models.zoo import model_builder

    model_builder(arch)  # an unknown architecture is named as such
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise UserError(f"{flag} {spec}: torchvision has no pretrained weights for {arch}.") from None
    enum_name, _, member = spec.rpartition(".")
    if enum_name and enum_name != enum.__name__:
        raise UserError(f"{flag} {spec}: those are weights of another architecture; {arch} takes "
                        f"{enum.__name__}.* ({', '.join(enum.__members__)}).")
    if member not in enum.__members__:
        raise UserError(f"{flag} {spec}: {arch} has no torchvision weights of that name; valid names: "
                        f"{', '.join(enum.__members__)}.")
    weights = enum[member]
    file_name = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not cached.is_file():
        raise UserError(f"{flag} {spec}: {enum.__name__}.{weights.name} is not in torchvision's cache and augkd-edge "
                        f"does not download; put {file_name} (from {weights.url}) into {cached.parent}/ "
                        f"($TORCH_HOME/hub/checkpoints/) and run again.")
    return WeightsSource(spec, arch, cached, weights)


def load_state(source: WeightsSource) -> dict[str, Any]:
    """The state_dict ``source`` points to, read with ``weights_only=True`` or from a ``.safetensors`` file."""
    import pickle

    import torch

    if source.tv is not None:
        try:  # torchvision's own loader on its cached file (resolve checked it is there: no download)
            state = source.tv.get_state_dict(progress=False, check_hash=True, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            raise UserError(f"{source.path}: torchvision's cached {source.label} is unreadable "
                            f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); "
                            f"delete it and put a fresh copy there.") from exc
    else:
        from augkd_edge.checkpoint import load_state_file

        state = load_state_file(source.path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # {"state_dict": ...} and augkd-edge model files
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source.label}: expected a state_dict (a dict of tensors) for {source.arch}.")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def initialise(model: "nn.Module", arch: str, spec: str, flag: str = "--weights") -> str:
    """Load ``spec``'s weights into ``model`` (built by ``build_classifier``); returns a one-line report."""
    from augkd_edge.models.loading import _state_mismatch
    from augkd_edge.models.zoo import head_name

    source = resolve(arch, spec, flag)
    state = load_state(source)
    head = head_name(model) + "."
    expected = model.state_dict()
    dropped = [k for k in state if k.startswith(head) and k in expected and state[k].shape != expected[k].shape]
    keep = {k: v for k, v in state.items() if k not in dropped}
    # Old checkpoints lack BatchNorm's num_batches_tracked; torch fills it in.
    needed = {k: v for k, v in expected.items()
              if k not in dropped and not (k.endswith("num_batches_tracked") and k not in keep)}
    mismatch = _state_mismatch(needed, keep)
    if mismatch:
        raise UserError(f"{flag} {source.label}: weights do not fit {arch} (another architecture?): {mismatch}")
    model.load_state_dict(keep, strict=False)
    classes = expected[head + "weight"].shape[0]
    if dropped:
        old = state[head + "weight"].shape[0] if head + "weight" in state else "?"
        tail = (f"dropped the head {', '.join(dropped)} ({old} classes); "
                f"{head[:-1]} starts new for {classes} classes")
    else:
        tail = f"the head {head[:-1]} kept (it already has {classes} outputs)"
    return f"{flag} {source.label}: kept {len(keep)} of {len(state)} tensors; {tail}."
