"""``distill --tensorboard DIR``: the run's metrics.jsonl mirrored as TensorBoard events while it trains.

One TensorBoard run per stage (``DIR/<stage>``), step = the stage's epoch, a scalar per metric (``train/loss``,
``eval/top1``, ``lr/optimizer``, ...), and at the end the report's image grids (``DIR/report``). A resumed run
must not show an epoch twice: metrics.jsonl never holds an epoch that a resume redoes (``metrics_log``), and each
stage's writer opens with ``purge_step`` = the first epoch it writes this session, so TensorBoard hides any event
of an earlier session from that epoch on (an epoch written to the events but not to metrics.jsonl before a kill).
Written by rank 0 only (the engine gives other ranks a log without a path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from augkd_edge.errors import UserError

# metrics.jsonl key prefixes that become TensorBoard groups: train_loss -> train/loss
GROUPS = ("train_", "eval_", "lr_")


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key: its group prefix becomes a folder."""
    for prefix in GROUPS:
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return key


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'augkd-edge[tensorboard]' "
                        "(or pip install tensorboard).") from None
    return SummaryWriter


class TensorBoardLog:
    """Per-stage SummaryWriters, opened on their stage's first record of this session."""

    def __init__(self, log_dir: str | Path):
        self.root = Path(log_dir)
        self.writer_class = _summary_writer()  # a missing package fails before any training
        self.writers: dict[str, Any] = {}

    def _writer(self, name: str, first_step: int) -> Any:
        if name not in self.writers:
            self.writers[name] = self.writer_class(str(self.root / name), purge_step=first_step)
        return self.writers[name]

    def scalars(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (a stage's epoch) as scalars at step = its epoch."""
        epoch = int(record["epoch"])
        writer = self._writer(str(record["stage"]), epoch)
        for key, value in sorted(record.items()):
            if key not in ("stage", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(tag(key), float(value), epoch)
        writer.flush()

    def images(self, folder: str | Path) -> None:
        """The report's PNG grids, at step 0 of the ``report`` run (a rerun replaces them: purge_step 0)."""
        import numpy as np
        from PIL import Image

        writer = self._writer("report", 0)
        for path in sorted(Path(folder).glob("*.png")):
            with Image.open(path) as image:
                writer.add_image(path.stem, np.asarray(image.convert("RGB")), 0, dataformats="HWC")
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
