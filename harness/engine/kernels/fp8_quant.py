"""Dynamic per-token FP8 (e4m3) activation quantization in one Triton launch per matrix.

Replaces 6-8 elementwise torch launches per linear (abs, amax, div, clamp, cast) in decode,
where launches, not bytes, dominate. Reference: quant/fp8.quantize_per_token.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _quant_per_token_kernel(
        x_ptr, q_ptr, scale_ptr, K, stride_x, stride_q, BLOCK: tl.constexpr
    ):  # fmt: skip
        row = tl.program_id(0)
        x_row = x_ptr + row * stride_x
        amax = tl.zeros([BLOCK], tl.float32)
        for k0 in range(0, K, BLOCK):
            offs = k0 + tl.arange(0, BLOCK)
            x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.max(amax, 0), 1e-12) / 448.0
        tl.store(scale_ptr + row, scale)
        for k0 in range(0, K, BLOCK):
            offs = k0 + tl.arange(0, BLOCK)
            x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
            q = tl.clamp(x / scale, -448.0, 448.0)
            tl.store(q_ptr + row * stride_q + offs, q.to(q_ptr.dtype.element_ty), mask=offs < K)


def quantize_per_token_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] bf16 (rows may be strided) -> ([M, K] e4m3, [M, 1] fp32 scales)."""
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m:
        _quant_per_token_kernel[(m,)](
            x, q, scale, k, x.stride(0), q.stride(0), BLOCK=2048, num_warps=8
        )
    return q, scale
