"""bf16 / fp16 matrix-vector product for decode steps of one row: out = x @ w^T.

At batch 1 (SingleStream) a step reads every weight once for one row, so the GEMMs are pure
weight streaming; cuBLAS read the 7B's weights at about 2.7 TB/s on the H100 there
(docs/benchmarks.md, tenth session). Each program of this kernel takes BLOCK_N weight rows over
the whole of K, multiplies them by the row of x on the CUDA cores and keeps a
[BLOCK_N, BLOCK_K] fp32 partial sum that is reduced once at the end (splitting K over programs
made no shape faster). Each row of x is its own set of programs and reads the weights
again, so the kernel pays only at one row: on the H100 a 7B step's linears took 4.69 ms at one
row against cuBLAS's 5.18, but 8.2 ms at two rows against 4.9 (engine.dense_triton_max_rows
defaults to 1). `config_for(n)` gives the block sizes per shape (`python -m
harness.report.gemv_sweep` measures them, docs/benchmarks.md). Reference: gemv_reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference only
    triton = None


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 16
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 1


# One row on an H100 (`gemv_sweep`, fifteenth session, docs/benchmarks.md), us a call against
# cuBLAS's: the 7B's qkv 34.9 (37.1), gate|up 59.8 (68.5) and head 86.5 (115.8), 2.9-3.0 TB/s,
# with 8 x 1,024 tiles and 8 warps; o 13.8 (16.6) and down 35.2 (36.1) with 8 x 512 and 4.
# Splitting K and software pipelining did not help any shape.
WIDE_CONFIG = GemvConfig(8, 1024, 8)  # N >= 8,192: enough weight blocks for every SM
NARROW_CONFIG = GemvConfig(8, 512, 4)


def config_for(n: int) -> GemvConfig:
    return WIDE_CONFIG if n >= 8192 else NARROW_CONFIG


def gemv_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K], w [N, K], same float dtype -> [M, N] in that dtype, summed in fp32."""
    return (x.float() @ w.float().t()).to(x.dtype)


if triton is not None:

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, out_ptr, N, K, stride_x, stride_w, stride_out,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    ):  # fmt: skip
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        row = tl.program_id(1).to(tl.int64)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = (offs_k < K) | EVEN_K  # EVEN_K: no mask along K
            x = tl.load(x_ptr + row * stride_x + offs_k, mask=k_ok, other=0.0)
            w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_w + offs_k[None, :],
                        mask=n_ok[:, None] & k_ok[None, :], other=0.0)  # fmt: skip
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        out = tl.sum(acc, axis=1)
        tl.store(out_ptr + row * stride_out + offs_n, out.to(out_ptr.dtype.element_ty), mask=n_ok)


def gemv_triton(x: torch.Tensor, w: torch.Tensor, config: GemvConfig | None = None) -> torch.Tensor:
    """Same contract as gemv_reference; config None: config_for(N)."""
    m, k = x.shape
    n = w.shape[0]
    cfg = config or config_for(n)
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m:
        _gemv_kernel[(triton.cdiv(n, cfg.block_n), m)](
            x, w, out, n, k, x.stride(0), w.stride(0), out.stride(0),
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, EVEN_K=k % cfg.block_k == 0,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return out
