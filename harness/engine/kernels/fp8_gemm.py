"""FP8 GEMM for a few rows (decode batches): out = (xq * x_scale) @ (w * w_scale)^T in bf16.

At small M a step streams every weight once, so only bandwidth counts, and cuBLAS's FP8 kernels
read the 70B weights at about half of HBM bandwidth there. This kernel gives each program
BLOCK_N weight rows over the whole of K and stores bf16 at once. On the H200 it ran one 70B
layer's linears 1.58x (M=1), 1.44x (M=16) and 1.29x (M=32) faster than `_scaled_mm`
(`python -m harness.report.fp8_gemm_sweep`, docs/benchmarks.md).

MAX_ROWS is 32: with BLOCK_M=64 Triton's Hopper FP8 dot accumulated less precisely than fp32
(2.5% of outputs off by more than 2% in tests/gpu/test_fp8_gemm.py); 16 and 32 match.
Reference: fp8_gemm_reference.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

MAX_ROWS = 32  # the largest M this kernel serves


def fp8_gemm_reference(
    xq: torch.Tensor, x_scale: torch.Tensor, w: torch.Tensor, w_scale_row: torch.Tensor
) -> torch.Tensor:
    """xq [M, K] e4m3, x_scale [M, 1] fp32, w [N, K] e4m3, w_scale_row [1, N] fp32 -> [M, N]
    bf16."""
    out = (xq.float() @ w.float().t()) * x_scale * w_scale_row  # e4m3 products are exact in fp32
    return out.to(torch.bfloat16)


if triton is not None:

    @triton.jit
    def _fp8_gemm_kernel(
        x_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr, M, N, K, stride_x, stride_w, stride_out,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(x_ptr + offs_m[:, None] * stride_x + offs_k[None, :],
                        mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)  # fmt: skip
            w = tl.load(w_ptr + offs_n[:, None] * stride_w + offs_k[None, :],
                        mask=(offs_n[:, None] < N) & k_ok[None, :], other=0.0)  # fmt: skip
            acc = tl.dot(x, tl.trans(w), acc)  # e4m3 x e4m3 -> fp32
        xs = tl.load(xs_ptr + offs_m, mask=offs_m < M, other=0.0)
        ws = tl.load(ws_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc * xs[:, None] * ws[None, :]
        out = out_ptr + offs_m[:, None] * stride_out + offs_n[None, :]
        tl.store(out, acc.to(tl.bfloat16), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def fp8_gemm_triton(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale_row: torch.Tensor,
    block_n: int | None = None,
    block_k: int = 256,
) -> torch.Tensor:
    """Same contract as fp8_gemm_reference, for M <= MAX_ROWS. block_n None: the sweep's best
    on the H200 (64 for M <= 8, else 128)."""
    m, k = xq.shape
    n = w.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"fp8_gemm_triton serves M <= {MAX_ROWS} rows, got {m}")
    block_n = block_n or (64 if m <= 8 else 128)
    out = torch.empty(m, n, dtype=torch.bfloat16, device=xq.device)
    _fp8_gemm_kernel[(triton.cdiv(n, block_n),)](
        xq, x_scale, w, w_scale_row, out, m, n, k, xq.stride(0), w.stride(0), out.stride(0),
        BLOCK_M=16 if m <= 16 else 32, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
        num_stages=4,
    )  # fmt: skip
    return out
