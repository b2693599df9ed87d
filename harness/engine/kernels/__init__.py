"""Kernels of the native engine, each beside its plain-torch reference: Triton (CUDA; the
references are what tests/gpu compares against) and C for fp32 on the CPU (paged decode
attention, KV write, RMSNorm, RoPE, SwiGLU; built by cpu_build.py, tested in tests/unit).
"""
