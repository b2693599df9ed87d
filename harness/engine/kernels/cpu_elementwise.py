"""RMSNorm (+ residual add), SwiGLU and RoPE for fp32 on the CPU (cpu_elementwise.c, built by
cpu_build.py). Each has the contract of its plain-torch reference in rms_norm.py,
activation.py and rope.py; RoPE is bit-identical to it, the other two differ in the last bits
(another summation order, another exp). Tests: tests/unit/test_cpu_kernels.py.
"""

from __future__ import annotations

import torch

from harness.engine.kernels.cpu_build import load, loaded


def is_available(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 and load() is not None


def rms_norm_cpu(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as rms_norm_reference; `residual` is updated in place (returned too)."""
    n, h = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    assert x.dtype == weight.dtype == torch.float32 and weight.is_contiguous()
    if residual is not None:
        assert residual.shape == x.shape and residual.is_contiguous()
        assert residual.dtype == torch.float32
    out = x.new_empty(n, h)
    loaded().rms_norm_f32(
        x.data_ptr(), x.stride(0), residual.data_ptr() if residual is not None else None,
        weight.data_ptr(), out.data_ptr(), n, h, eps, torch.get_num_threads(),
    )  # fmt: skip
    return out, residual


def silu_mul_cpu(gate_up: torch.Tensor) -> torch.Tensor:
    """Same contract as silu_mul_reference: [N, 2 I] (gate | up) -> [N, I]."""
    n, two_i = gate_up.shape
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    assert gate_up.dtype == torch.float32
    out = gate_up.new_empty(n, two_i // 2)
    loaded().silu_mul_f32(
        gate_up.data_ptr(), gate_up.stride(0), out.data_ptr(), n, two_i // 2,
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def rope_cpu_(x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """As rope_triton_: x [N, heads, D] (rows may be strided, heads contiguous by D) rotated in
    place; positions [N] int64; cos_sin [max_pos, 2, D] contiguous fp32. Returns x."""
    n, heads, d = x.shape
    assert x.stride(-1) == 1 and x.stride(1) == d and cos_sin.is_contiguous(), "layout"
    assert x.dtype == cos_sin.dtype == torch.float32 and positions.dtype == torch.int64
    positions = positions.contiguous()
    loaded().rope_f32(
        x.data_ptr(), x.stride(0), positions.data_ptr(), cos_sin.data_ptr(), n, heads, d,
        torch.get_num_threads(),
    )  # fmt: skip
    return x
