"""Everything after training: ONNX / INT8 / TensorRT export, parity, latency
(installed as ``augkd_edge.export``).

A leaf library: it never imports augkd_edge training code, and
``trt_runner`` imports no torch at all.
"""
