"""SwiGLU's silu(gate) * up in one Triton launch, reading the fused gate|up projection once.

torch needs two launches and reads a strided half-view (gate_up.chunk) at a fraction of the
bandwidth; in prefill that tensor is [tokens, 2 x intermediate]. Given an FP8 GEMM's row and
column scales (an unscaled gate|up, quant/fp8_gpu.fp8_linear_unscaled), the kernel applies
them as it loads, as kernels/fp8_epilogue.py's pass would have, rounding included, so the pass
and its write and read of gate|up go. Reference: silu_mul_reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.engine.kernels.fp8_epilogue import scale_rows_cols_reference

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference only
    triton = None


def silu_mul_reference(
    gate_up: torch.Tensor, row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """gate_up: [N, 2 I] (gate | up) -> [N, I] = silu(gate) * up; with row_scale [N, 1] and
    col_scale [1, 2 I] (fp32), gate_up is unscaled: scaled first (scale_rows_cols_reference)."""
    if row_scale is not None:
        gate_up = scale_rows_cols_reference(gate_up.clone(), row_scale, col_scale)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(
        gu_ptr, out_ptr, row_ptr, col_ptr, inter, stride_gu, stride_out,
        SCALED: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < inter
        gate = tl.load(gu_ptr + row * stride_gu + offs, mask=mask, other=0.0)
        up = tl.load(gu_ptr + row * stride_gu + inter + offs, mask=mask, other=0.0)
        if SCALED:  # as scale_rows_cols would store them: fp32 products rounded to the dtype
            r = tl.load(row_ptr + row)
            col_gate = tl.load(col_ptr + offs, mask=mask, other=0.0)
            col_up = tl.load(col_ptr + inter + offs, mask=mask, other=0.0)
            gate = (gate.to(tl.float32) * (r * col_gate)).to(gate.dtype)
            up = (up.to(tl.float32) * (r * col_up)).to(up.dtype)
        g = gate.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # rounded as F.silu's output is
        out = act.to(tl.float32) * up.to(tl.float32)
        tl.store(out_ptr + row * stride_out + offs, out.to(gate.dtype), mask=mask)


def silu_mul_triton(
    gate_up: torch.Tensor, row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Same contract as silu_mul_reference (scales contiguous)."""
    n, two_i = gate_up.shape
    i = two_i // 2
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    out = torch.empty(n, i, dtype=gate_up.dtype, device=gate_up.device)
    scaled = row_scale is not None
    if n:
        block = 1024
        _silu_mul_kernel[(n, triton.cdiv(i, block))](
            gate_up, out, row_scale if scaled else gate_up, col_scale if scaled else gate_up,
            i, gate_up.stride(0), out.stride(0), SCALED=scaled, BLOCK=block, num_warps=4,
        )  # fmt: skip
    return out
