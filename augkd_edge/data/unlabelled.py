"""The student domain's unlabelled images (``distill --unlabelled SPEC``): loading, deduplication, fingerprint.

Two kinds of pool:

- a **folder** of images (sub-folders allowed, their names ignored), read with the labelled folders' decoding
  and bad-file rules (``data.folder``: a bad file is skipped with a warning naming it);
- the **--target spec itself** (``--unlabelled digits:optdigits`` with ``--target digits:optdigits``): the
  target's images outside the labelled train and eval splits are cut in two per class, seeded,
  :data:`POOL_FRACTION` becoming the pool (labels dropped) and the rest the test split. ``pool.max_images = 0``
  holds the same pool out without using it, so a labelled-only run is tested on the very same test split.

Every pool image is compared by content (the SHA-256 of its pixels at the run's input size, as the model sees
it) with the labelled, eval and test images and with the pool's other images: a copy of a test image would
leak the test split into training and a copy of a labelled image adds nothing, so both are dropped, counted
and named in the run's output (:class:`Pool` ``dropped``); a pool left empty is refused.
The pool's fingerprint (count and a hash of the kept images' hashes) is written to splits.json, and a
resumed run refuses a changed pool.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from augkd_edge.data.splits import stratified_split
from augkd_edge.errors import UserError

if TYPE_CHECKING:
    from augkd_edge.config import DistillConfig
    from augkd_edge.data.domain import Domain

# Share of a --target's images outside train and eval that its held-out pool takes (the rest is the test split).
POOL_FRACTION = 0.5
# Named in the warning when pool images are dropped as copies of eval/test images.
EXAMPLES = 5


@dataclasses.dataclass
class Pool:
    """The unlabelled images a run trains on, after deduplication."""

    spec: str
    kind: str  # "folder" or "held-out" (the target's own images outside its labelled and test splits)
    images: torch.Tensor  # float32 [N, 3, S, S] in [0, 1]
    labels: torch.Tensor | None  # held-out pools only: their true labels (pool.use_labels, the benchmark ceiling)
    files: list[str] | None
    dropped: dict[str, int]  # why images were left out: copy of a labelled / eval / test image, repeated, subset
    leaked: list[str]  # up to EXAMPLES files that were copies of eval or test images
    hashes: list[str]  # content_hashes(images), computed once by the deduplication

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def fingerprint(self) -> dict[str, Any]:
        """Count and SHA-256 over the kept images' content hashes, in order: recorded in splits.json."""
        digest = hashlib.sha256("\n".join(self.hashes).encode())
        return {"spec": self.spec, "kind": self.kind, "images": len(self), "sha256": digest.hexdigest()}

    def summary(self) -> dict[str, Any]:
        """results.json's ``unlabelled`` block (without the training statistics the stage adds)."""
        return {**self.fingerprint(), "dropped": dict(self.dropped), "leaked_examples": list(self.leaked)}


def content_hashes(images: torch.Tensor) -> list[str]:
    """SHA-256 of each image's pixels quantised to 8 bits (what two copies of one file decode to alike)."""
    pixels = images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).contiguous().numpy()
    return [hashlib.sha256(p.tobytes()).hexdigest() for p in pixels]


def is_held_out(cfg: "DistillConfig") -> bool:
    """Whether the run's pool is its target's own held-out images (rather than a folder)."""
    return cfg.unlabelled is not None and cfg.unlabelled.strip() == cfg.student_data.strip()


def hold_out(splits: dict[str, np.ndarray], labels: torch.Tensor, seed: int) -> dict[str, np.ndarray]:
    """The splits with a ``pool`` cut from ``test``: :data:`POOL_FRACTION` of each class's test images, seeded."""
    test = np.asarray(splits["test"])
    part = stratified_split(labels.numpy()[test], seed + 7919, ["pool", "test"],
                            lambda count: [int(round(count * POOL_FRACTION))])
    return {**splits, "pool": test[part["pool"]], "test": test[part["test"]]}


def load_pool(cfg: "DistillConfig", domain: "Domain", splits: dict[str, np.ndarray]) -> Pool:
    """The run's pool (``cfg.unlabelled``), deduplicated against the labelled, eval and test images.

    ``splits``: the student splits, with ``pool`` already cut for a held-out pool (:func:`hold_out`).
    """
    if is_held_out(cfg):
        idx = torch.as_tensor(splits["pool"], dtype=torch.long)
        images, labels, files, kind = domain.images[idx], domain.labels[idx], None, "held-out"
    else:
        path = Path(cfg.unlabelled).expanduser()
        if not path.exists() and cfg.unlabelled.startswith("digits:"):
            raise UserError(f"--unlabelled {cfg.unlabelled}: a built-in domain is a pool only as the --target "
                            f"itself (--target {cfg.unlabelled}); for other images give a folder.")
        from augkd_edge.data.folder import load_unlabelled_folder

        images, files = load_unlabelled_folder(path, cfg.input_size)
        labels, kind = None, "folder"
        if images.shape[-1] != domain.images.shape[-1]:
            raise UserError(f"{path}: pool images are {images.shape[-1]} px, the target's "
                            f"{domain.images.shape[-1]}; use one --input-size")
    keep, dropped, leaked, hashes = _deduplicate(images, files, domain, splits)
    images = images[keep]
    labels = labels[keep] if labels is not None else None
    files = [files[i] for i in keep.tolist()] if files is not None else None
    if len(images) == 0:
        raise UserError(f"--unlabelled {cfg.unlabelled}: no image left after dropping copies of the labelled, eval "
                        f"and test images ({dropped}); give images that are not already in --target.")
    limit = cfg.pool.max_images
    if limit is not None and limit < len(images):
        chosen = torch.sort(torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[:limit]).values
        dropped["over_max_images"] = len(images) - limit
        images, labels = images[chosen], labels[chosen] if labels is not None else None
        files = [files[i] for i in chosen.tolist()] if files is not None else None
        hashes = [hashes[i] for i in chosen.tolist()]
    return Pool(cfg.unlabelled, kind, images, labels, files, dropped, leaked, hashes)


def _deduplicate(images: torch.Tensor, files: list[str] | None, domain: "Domain",
                 splits: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, int], list[str], list[str]]:
    """Indices of the pool images that copy no labelled/eval/test image nor an earlier pool image, counts of why
    the others were dropped, up to EXAMPLES leaked files, and the kept images' content hashes."""
    owner: dict[str, str] = {}
    for split in ("train", "eval", "test"):
        idx = torch.as_tensor(splits[split], dtype=torch.long)
        for h in content_hashes(domain.images[idx]):
            owner.setdefault(h, split)
    dropped = {"copy_of_train": 0, "copy_of_eval": 0, "copy_of_test": 0, "repeated": 0}
    leaked: list[str] = []
    seen: set[str] = set()
    keep: list[int] = []
    kept_hashes: list[str] = []
    for i, h in enumerate(content_hashes(images)):
        if h in owner:
            dropped[f"copy_of_{owner[h]}"] += 1
            if owner[h] != "train" and len(leaked) < EXAMPLES:
                leaked.append(files[i] if files is not None else f"#{i}")
        elif h in seen:
            dropped["repeated"] += 1
        else:
            seen.add(h)
            keep.append(i)
            kept_hashes.append(h)
    return torch.as_tensor(keep, dtype=torch.long), dropped, leaked, kept_hashes


def check_same_pool(recorded: dict[str, Any] | None, pool: Pool) -> None:
    """UserError when a resumed run's pool is not the one its stages trained on (splits.json's fingerprint)."""
    if recorded is None:
        return
    now = pool.fingerprint()
    if recorded.get("sha256") != now["sha256"]:
        raise UserError(
            f"--unlabelled {pool.spec}: the unlabelled images changed since this run started "
            f"({recorded.get('images')} -> {now['images']} images after deduplication, other content); "
            f"restore them, or start a new run in another --out.")


def describe(pool: Pool) -> tuple[str, str | None]:
    """What the run tells the user about its pool: the count with every dropped image by reason, and a warning
    (shown even with --quiet) when some were copies of eval/test images, naming a few."""
    parts = [f"{n} {why.replace('_', ' ')}" for why, n in pool.dropped.items() if n]
    line = (f"unlabelled {pool.spec} ({pool.kind}): {len(pool)} images"
            + (f" (dropped: {', '.join(parts)})" if parts else ""))
    leaks = pool.dropped.get("copy_of_eval", 0) + pool.dropped.get("copy_of_test", 0)
    if not leaks:
        return line, None
    return line, (f"{leaks} unlabelled images are copies of eval/test images and were dropped, so no test image "
                  f"trains the student (e.g. {', '.join(pool.leaked)}); remove them from the folder")


def results_line(block: dict[str, Any] | None) -> str | None:
    """One line on results.json's ``unlabelled`` block for the closing table and report.md (None without a pool)."""
    if block is None:
        return None
    dropped = sum(block["dropped"].values())
    line = (f"unlabelled {block['spec']} ({block['kind']}): {block['images']} images used"
            + (f", {dropped} dropped" if dropped else "") + f"; terms {block['terms']}")
    if "kd_trust" in block:
        line += (f", teacher trust {block['kd_trust']:.2f}, mean KD weight {block['kd_weight_mean']:.2f}"
                 f" (gate {block.get('kd_gate', 'none')})")
    if "mixup_labelled" in block:
        line += f"; {block['mixup_labelled']:.0%} mixed towards anchors under the teacher's label"
    if block.get("anchor_images"):
        line += f"; Module 2 learnt anchors for {block['anchor_images']} of them"
    return line
