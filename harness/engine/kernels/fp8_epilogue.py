"""out[m, n] *= row_scale[m] * col_scale[n] in place, one Triton launch: the per-token and
per-channel scales of an FP8 GEMM that ran with one scale a tensor (quant/fp8_gpu.py says when).
Reference: scale_rows_cols_reference.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference only
    triton = None


def scale_rows_cols_reference(
    out: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor
) -> torch.Tensor:
    """out [M, N], row_scale [M, 1] fp32, col_scale [1, N] fp32 -> out, scaled in place."""
    return out.copy_(out.float() * (row_scale * col_scale))


if triton is not None:

    @triton.jit
    def _scale_rows_cols_kernel(out_ptr, row_ptr, col_ptr, n, stride_out, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        ptrs = out_ptr + row * stride_out + offs
        x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(row_ptr + row) * tl.load(col_ptr + offs, mask=mask, other=0.0)
        tl.store(ptrs, (x * scale).to(out_ptr.dtype.element_ty), mask=mask)


def scale_rows_cols_triton(
    out: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor
) -> torch.Tensor:
    """Same contract as scale_rows_cols_reference; out's rows contiguous."""
    m, n = out.shape
    if m:
        block = 2048
        _scale_rows_cols_kernel[(m, triton.cdiv(n, block))](
            out, row_scale, col_scale, n, out.stride(0), BLOCK=block, num_warps=8
        )
    return out
