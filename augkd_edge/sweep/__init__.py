"""``augkd-edge sweep``: which student (and precision) to ship under a latency budget.

For each student x precision (a *candidate*) the sweep runs the chain a user would
type: ``distill`` (once per student, shared by its precisions; the teacher cache
shares the teacher), ``export`` (``--onnx``, or ``--int8`` with export's own accuracy
gate; ``--trt`` for the TensorRT backend), ``bench run`` at one batch, and reads
their public JSON outputs. Modules: ``runner`` (the child commands), ``records``
(folder layout, resumable per-candidate records, the document), ``select`` (Pareto
front, budget choice, ``--latency-from`` matching; pure), ``render`` (Markdown,
HTML, plot), ``loop`` (the whole sweep).

Folder (``--out``)::

    runs/<student>/                 distill run (results.json, student.pt, ...)
    exports/<student>-<precision>/  export output (export.json, student*.onnx)
    models/<student>-<precision>.onnx   the exported model under a unique name (hard link):
                                        copy these to a board, bench them there, pass --latency-from
    bench/<student>-<precision>/    local bench report
    candidates/<student>-<precision>.json   the finished candidate (atomic; a rerun skips it)
    logs/<step>.log                 each child command's output
    sweep.json  sweep.md  sweep.html  sweep.png

``sweep.json``, schema 1::

    {
      "schema": 1, "kind": "augkd-edge/sweep", "created": "2026-11-30T12:00:00+00:00",
      "command": "augkd-edge sweep --students ... ",
      "settings": {"students": [...], "precisions": ["fp32", "int8"], "method", "preset", "seed",
                   "config", "config_sha256", "distill_args", "export_args", "cache_dir",
                   "backend": "ort" | "trt" | "openvino", "device", "batch", "threads", "warmup", "iters",
                   "latency_budget_ms": float | null, "latency_from": path | null},
      "machine": {...},            # environment of the local bench reports (bench schema; no hostname)
      "latency_from": null | {"path", "label", "environment", "created"},   # the target's report
      "candidates": [{
          "id": "resnet18-int8", "student": "resnet18", "precision": "fp32" | "int8",
          "backend": "ort" | "trt" | "openvino", "device": "cpu" | "cuda", "batch": 1,
          "status": "ok" | "failed", "reason": null | "one line, with the log's path",
          "top1": 0.93, "top1_source": "where top1 was read",   # student-domain test split
          "latency_ms": {"median", "p90", "p99"} | null,     # null: failed, or unmatched in --latency-from
          "latency_source": {"from": "local" | report path, "matched_by": "sha256" | "name" | null, ...},
          "params": 1234567,           # trainable parameters of the student
          "model_bytes": 456789,       # the deployed file (ONNX, or the engine with --backend trt)
          "model_file", "model_sha256" (the ONNX), "engine_sha256" | null,
          "run_dir", "export_dir", "logs": [...],
          "pareto": bool,              # no other candidate at least as accurate and as fast, one strictly
          "chosen": bool}],            # the --latency-budget-ms choice
      "choice": null | {"budget_ms", "chosen": id | null, "message": "the one line printed"},
      "unmatched": [{"id", "reason"}],   # candidates the --latency-from report has no row for
      "failed": [{"id", "reason"}]
    }

Top-1: FP32 from the run's results.json (export's parity check requires the ONNX
model to give the same class on every test image); INT8 the quantized model's own
top-1 on the same split, measured with ONNX Runtime by export's gate.
"""

from augkd_edge.sweep.records import PRECISIONS, SCHEMA

__all__ = ["PRECISIONS", "SCHEMA"]
