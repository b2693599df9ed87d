"""GPU kernels of the native engine (Triton), each beside its plain-torch reference.

Imported only on CUDA; the references run anywhere and are what tests/gpu compares against.
"""
