"""Fused ops for AuG-KD's hot paths (installed as ``augkd_edge.kernels``).

A leaf library: it never imports augkd_edge training code.
"""
