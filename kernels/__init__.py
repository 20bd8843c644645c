"""Triton kernels of ditflow_fast, installed as ``ditflow_fast.kernels``."""
