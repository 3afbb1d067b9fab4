"""augkd-edge: out-of-domain knowledge distillation (AuG-KD) and edge export.

Importing the package must stay cheap and torch-free: the Jetson runner in
``augkd_edge.export.trt_runner`` is imported on boards without PyTorch, so heavy
imports live inside the functions that need them.
"""

__version__ = "0.1.0"
