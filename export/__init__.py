"""Everything after training: ONNX / INT8 / TensorRT export, parity, latency
(installed as ``augkd_edge.export``).

A leaf library: of augkd_edge it imports only ``augkd_edge.errors``, and
``trt_runner`` (with everything it imports, ``trt_runner.BOARD_FILES``) imports
no torch at all. As in Polygraphy, loaders stand apart from runners and
comparators apart from rendering:

- ``api``: the export steps and their checks (``export_student_model``); the
  model-file front end is ``augkd_edge.deploy.export_student``;
- ``onnx``, ``quantize`` (QDQ INT8 and its accuracy gate), ``tensorrt`` (builder,
  trtexec bundle), ``trt_ops`` (parser operator support);
- loaders and runners: ``trt_loader`` (the one TensorRT engine loader),
  ``runtimes`` (torch / ONNX Runtime / TensorRT runners), ``trt_runner`` +
  ``cuda_binding`` (the torch-free Jetson runner);
- comparators: ``parity`` (logits of two runners), ``bench_compare`` (reports);
- ``latency`` (measurement, statistics, batched logits with the one padding rule,
  top-k), ``envinfo``, ``bench_report`` (schema and IO), ``bench_render``
  (Markdown / HTML), ``atomic`` (the one atomic file write).

Decisions and the numbers behind them: docs/decisions.md#export-and-benchmarks.
"""
