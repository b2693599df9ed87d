"""Kernels of the native engine, each beside its plain-torch reference: Triton (CUDA; the
references are what tests/gpu compares against) and one C kernel for CPU decode attention.
"""
