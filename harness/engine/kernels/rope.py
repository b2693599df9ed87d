"""Rotary embedding of q and k in place, all heads of a token in one Triton program.

torch needs about 10 launches per tensor (mul, chunk, neg, cat, mul, add, for q and for k).
Reference: rope_reference (HF Llama's rotate-half convention, roundings as in torch).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference only
    triton = None


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, heads, D]; cos, sin: [N, 1, D] -> x rotated by position (a new tensor)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


if triton is not None:

    @triton.jit
    def _rope_kernel(
        x_ptr, pos_ptr, cs_ptr, num_heads, stride_tok, stride_head, stride_pos,
        HALF: tl.constexpr, BLOCK_H: tl.constexpr,
    ):  # fmt: skip
        tok = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + tok)
        heads = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, HALF)[None, :]
        mask = heads < num_heads
        lo = x_ptr + tok * stride_tok + heads * stride_head + d  # [BLOCK_H, HALF]
        x1 = tl.load(lo, mask=mask, other=0.0)
        x2 = tl.load(lo + HALF, mask=mask, other=0.0)
        cs = cs_ptr + pos * stride_pos + d  # cos at [pos, 0, :], sin at [pos, 1, :]
        cos_lo = tl.load(cs).to(tl.float32)
        cos_hi = tl.load(cs + HALF).to(tl.float32)
        sin_lo = tl.load(cs + 2 * HALF).to(tl.float32)
        sin_hi = tl.load(cs + 3 * HALF).to(tl.float32)
        dt = x1.dtype
        a1, a2 = x1.to(tl.float32), x2.to(tl.float32)
        # Each product and the sum rounded to the activation dtype, as torch's three ops are.
        out1 = (a1 * cos_lo).to(dt).to(tl.float32) + (-a2 * sin_lo).to(dt).to(tl.float32)
        out2 = (a2 * cos_hi).to(dt).to(tl.float32) + (a1 * sin_hi).to(dt).to(tl.float32)
        tl.store(lo, out1.to(dt), mask=mask)
        tl.store(lo + HALF, out2.to(dt), mask=mask)


def rope_triton_(x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """x: [N, heads, D] (rows may be strided, heads contiguous by D) rotated in place;
    positions [N] int64; cos_sin [max_pos, 2, D] contiguous, in x.dtype. Returns x."""
    n, num_heads, d = x.shape
    assert x.stride(-1) == 1 and x.stride(1) == d and cos_sin.is_contiguous(), "layout"
    if n:
        _rope_kernel[(n,)](
            x, positions, cos_sin, num_heads, x.stride(0), x.stride(1), cos_sin.stride(0),
            HALF=d // 2, BLOCK_H=triton.next_power_of_2(num_heads), num_warps=4,
        )  # fmt: skip
    return x
