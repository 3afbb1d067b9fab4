"""The run's ``metrics.jsonl``: one JSON line per stage epoch, read by the run report and the curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSON lines, flushed per record so an interrupted run keeps its history.

    ``tensorboard``: a folder to mirror every record into as TensorBoard events (``tensorboard_log``).
    """

    def __init__(self, path: str | Path | None, tensorboard: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mirror = None
        if tensorboard is not None and self.path is not None:
            from augkd_edge.tensorboard_log import TensorBoardLog

            self.mirror = TensorBoardLog(tensorboard)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self.mirror is not None:
            self.mirror.scalars(record)

    def finish(self, images: Path) -> None:
        """End of the run: the report's image grids into the TensorBoard mirror, which is then closed."""
        if self.mirror is not None:
            self.mirror.images(images)
            self.mirror.close()

    def catch_up(self, stage: str, history: list[dict[str, Any]]) -> None:
        """Append the epochs of ``history`` the log lacks (a kill between checkpoint and log line).

        The checkpoint is written before the log line, so after a kill the log
        may miss an epoch but never holds one that a resume will redo.
        """
        if self.path is None or not history:
            return
        logged = 0
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if record.get("stage") == stage:
                    logged = max(logged, int(record.get("epoch", 0)))
        for metrics in history:
            if int(metrics["epoch"]) > logged:
                self.write({"stage": stage, **metrics})
