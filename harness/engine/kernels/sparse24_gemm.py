"""Expansion of compressed 2:4 FP8 weights (quant/sparse24.py's layout) in Triton.

`load_expanded` reads a tile of values [N, K/2] e4m3 and meta [N, K/8] uint8 (62.5% of the
dense tile's bytes) and expands it in registers to the dense e4m3 tile: the FP8 GEMM
(fp8_gemm.py, `meta=`) multiplies that on the dense tensor cores (Triton exposes no sparse
MMA), so a step that streams the weights reads fewer bytes for the same FLOPs.
`decompress_24_triton` writes the expansion to a dense [N, K] buffer, for steps whose M is
better served by cuBLAS's dense GEMM. Reference: quant/sparse24.decompress_24.
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
    def _expand_24(vals, meta, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """vals [BLOCK_N, BLOCK_K/2], meta [BLOCK_N, BLOCK_K/8] uint8 -> dense [BLOCK_N,
        BLOCK_K] uint8 (e4m3 bit patterns). A group's 4 outputs are one 32-bit word: its two
        values shifted to bytes i0 and i1: a few integer ops a group, where a select per output
        byte took 1.5-2x the instructions in the sm_90 code; at 1.2 TB/s of compressed weights
        the kernel's bound looked like instruction issue, not memory (docs/benchmarks.md,
        thirteenth session)."""
        meta = meta.to(tl.uint32)
        nibble = tl.reshape(tl.join(meta, meta >> 4), (BLOCK_N, BLOCK_K // 4))  # i0 | i1 << 2
        v0, v1 = tl.split(tl.reshape(vals, (BLOCK_N, BLOCK_K // 4, 2)))
        shift0, shift1 = (nibble << 3) & 24, (nibble << 1) & 24  # 8 * i0, 8 * i1
        word = (v0.to(tl.uint32) << shift0) | (v1.to(tl.uint32) << shift1)
        b0 = word.to(tl.uint8)
        b1 = (word >> 8).to(tl.uint8)
        b2 = (word >> 16).to(tl.uint8)
        b3 = (word >> 24).to(tl.uint8)
        return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (BLOCK_N, BLOCK_K))

    @triton.jit
    def load_expanded(v_ptr, m_ptr, offs_n, k0, N, K, stride_v, stride_m, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):  # fmt: skip
        """Rows offs_n, inputs k0 .. k0 + BLOCK_K of W, expanded (uint8 bit patterns).
        EVEN_K (K a multiple of BLOCK_K): no mask along K, so that Triton may copy the tiles
        asynchronously; a mask on K/8 bytes (16 | K) limits the meta tile to 2-byte vectors,
        too narrow for an async copy, and it was then loaded synchronously in every K step."""
        offs_v = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        offs_m = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        n_ok = offs_n[:, None] < N
        v_ok = n_ok if EVEN_K else n_ok & (offs_v[None, :] < K // 2)
        m_ok = n_ok if EVEN_K else n_ok & (offs_m[None, :] < K // 8)
        vals = tl.load(v_ptr + offs_n[:, None] * stride_v + offs_v[None, :], mask=v_ok, other=0)
        meta = tl.load(m_ptr + offs_n[:, None] * stride_m + offs_m[None, :], mask=m_ok, other=0)
        return _expand_24(vals, meta, BLOCK_N, BLOCK_K)

    @triton.jit
    def _decompress_24_kernel(v_ptr, m_ptr, out_ptr, N, K, stride_v, stride_m, stride_out,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              EVEN_K: tl.constexpr):  # fmt: skip
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k0 = tl.program_id(1) * BLOCK_K
        dense = load_expanded(v_ptr, m_ptr, offs_n, k0, N, K, stride_v, stride_m,
                              BLOCK_N, BLOCK_K, EVEN_K)  # fmt: skip
        offs_k = k0 + tl.arange(0, BLOCK_K)
        tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], dense,
                 mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))  # fmt: skip


def decompress_24_triton(
    values: torch.Tensor, meta: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """values [N, K/2] e4m3, meta [N, K/8] uint8 -> out [N, K] e4m3 (written and returned)."""
    n, k = out.shape
    block_n, block_k = 32, 256
    _decompress_24_kernel[(triton.cdiv(n, block_n), triton.cdiv(k, block_k))](
        values.view(torch.uint8), meta, out.view(torch.uint8), n, k, values.stride(0),
        meta.stride(0), out.stride(0), BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
        num_warps=4,
    )  # fmt: skip
    return out
