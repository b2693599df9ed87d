"""Rotary embedding of q and k in place, all heads of a token in one Triton program;
optionally also the paged KV-cache write of the rotated K and of V (one launch instead of two
per layer, which counts in small decode batches), and before the rotation the qkv projection's
deferred FP8 row and column scales (its one-scale GEMM, quant/fp8_gpu.py), rounded as
kernels/fp8_epilogue.py's pass rounds them, V scaled in place too: the pass's launch and its
write and read of qkv go.

torch needs about 10 launches per tensor (mul, chunk, neg, cat, mul, add, for q and for k).
Reference: rope_reference (HF Llama's rotate-half convention, roundings as in torch); the cache
write is paged_attention.write_kv_cache's (same layout, same FP8 rounding).
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
        v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, num_q_heads, num_kv_heads, stride_v,
        stride_ch, inv_scale, row_ptr, col_ptr,
        HALF: tl.constexpr, BLOCK_H: tl.constexpr, WRITE_KV: tl.constexpr,
        KV_BLOCK_H: tl.constexpr, IS_FP8: tl.constexpr, SCALED: tl.constexpr,
    ):  # fmt: skip
        tok = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + tok)
        heads = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, HALF)[None, :]
        mask = heads < num_heads
        lo = x_ptr + tok * stride_tok + heads * stride_head + d  # [BLOCK_H, HALF]
        x1 = tl.load(lo, mask=mask, other=0.0)
        x2 = tl.load(lo + HALF, mask=mask, other=0.0)
        if SCALED:  # deferred FP8 scales: fp32 products rounded to the dtype, as the pass does
            r = tl.load(row_ptr + tok)
            cols = col_ptr + heads * (2 * HALF) + d  # q heads, then k heads, then v heads
            c1 = tl.load(cols, mask=mask, other=0.0)
            c2 = tl.load(cols + HALF, mask=mask, other=0.0)
            x1 = (x1.to(tl.float32) * (r * c1)).to(x1.dtype)
            x2 = (x2.to(tl.float32) * (r * c2)).to(x2.dtype)
        cs = cs_ptr + pos * stride_pos + d  # cos at [pos, 0, :], sin at [pos, 1, :]
        cos_lo = tl.load(cs).to(tl.float32)
        cos_hi = tl.load(cs + HALF).to(tl.float32)
        sin_lo = tl.load(cs + 2 * HALF).to(tl.float32)
        sin_hi = tl.load(cs + 3 * HALF).to(tl.float32)
        dt = x1.dtype
        a1, a2 = x1.to(tl.float32), x2.to(tl.float32)
        # Each product and the sum rounded to the activation dtype, as torch's three ops are.
        out1 = ((a1 * cos_lo).to(dt).to(tl.float32) + (-a2 * sin_lo).to(dt).to(tl.float32)).to(dt)
        out2 = ((a2 * cos_hi).to(dt).to(tl.float32) + (a1 * sin_hi).to(dt).to(tl.float32)).to(dt)
        tl.store(lo, out1, mask=mask)
        tl.store(lo + HALF, out2, mask=mask)
        if SCALED or WRITE_KV:
            vh = tl.arange(0, KV_BLOCK_H)[:, None].to(tl.int64)
            vd = tl.arange(0, 2 * HALF)[None, :]
            v_mask = vh < num_kv_heads
            v_ptrs = v_ptr + tok * stride_v + vh * (2 * HALF) + vd
            v = tl.load(v_ptrs, mask=v_mask, other=0.0)
            if SCALED:  # in place too: a prompt's attention reads V from qkv
                vc = tl.load(col_ptr + (num_heads + vh) * (2 * HALF) + vd, mask=v_mask, other=0.0)
                v = (v.to(tl.float32) * (r * vc)).to(v.dtype)
                tl.store(v_ptrs, v, mask=v_mask)
        if WRITE_KV:  # rows num_q_heads.. of the tile are K heads: K and V to cache[h, slot]
            slot = tl.load(slot_ptr + tok)
            if slot >= 0:
                cache_dt = k_cache_ptr.dtype.element_ty
                is_k = mask & (heads >= num_q_heads)
                dst = (heads - num_q_heads).to(tl.int64) * stride_ch + slot * (2 * HALF) + d
                k1, k2 = out1.to(tl.float32), out2.to(tl.float32)
                if IS_FP8:
                    k1 = tl.clamp(k1 * inv_scale, -448.0, 448.0)
                    k2 = tl.clamp(k2 * inv_scale, -448.0, 448.0)
                tl.store(k_cache_ptr + dst, k1.to(cache_dt), mask=is_k)
                tl.store(k_cache_ptr + dst + HALF, k2.to(cache_dt), mask=is_k)
                v32 = v.to(tl.float32)
                if IS_FP8:
                    v32 = tl.clamp(v32 * inv_scale, -448.0, 448.0)
                tl.store(v_cache_ptr + vh * stride_ch + slot * (2 * HALF) + vd, v32.to(cache_dt),
                         mask=v_mask)  # fmt: skip


def rope_triton_(x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """x: [N, heads, D] (rows may be strided, heads contiguous by D) rotated in place;
    positions [N] int64; cos_sin [max_pos, 2, D] contiguous, in x.dtype. Returns x."""
    _launch(x, positions, cos_sin, None)
    return x


def rope_write_kv_triton_(
    qk: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    num_q_heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    kv_scale: float = 1.0, row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """rope_triton_ on qk ([N, H + Hkv, D]: q heads, then k heads), then the rotated K heads and
    v ([N, Hkv, D], heads contiguous) into the paged cache [Hkv, blocks, block_size, D] at
    slot_mapping (-1: skip; FP8 caches store value / kv_scale), in the same launch: equal to
    rope_triton_ then paged_attention.write_kv_cache. With row_scale [N, 1] and col_scale
    [1, (H + 2 Hkv) D] (fp32, contiguous), qk and v are an FP8 GEMM's unscaled output: scaled
    first, v in place too, as scale_rows_cols_triton would. Returns qk."""
    assert v.stride(-1) == 1 and v.stride(1) == v.shape[-1], "layout"
    kv = (v, k_cache, v_cache, slot_mapping, num_q_heads, kv_scale)
    _launch(qk, positions, cos_sin, kv, row_scale, col_scale)
    return qk


def _launch(
    x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor, kv,  # noqa: ANN001
    row_scale: torch.Tensor | None = None, col_scale: torch.Tensor | None = None,
) -> None:  # fmt: skip
    n, num_heads, d = x.shape
    assert x.stride(-1) == 1 and x.stride(1) == d and cos_sin.is_contiguous(), "layout"
    if not n:
        return
    v, k_cache, v_cache, slots, num_q, scale = kv or (x, x, x, positions, num_heads, 1.0)
    scaled = row_scale is not None
    _rope_kernel[(n,)](
        x, positions, cos_sin, num_heads, x.stride(0), x.stride(1), cos_sin.stride(0),
        v, k_cache, v_cache, slots, num_q, v.shape[1], v.stride(0), k_cache.stride(0),
        1.0 / scale, row_scale if scaled else x, col_scale if scaled else x,
        HALF=d // 2, BLOCK_H=triton.next_power_of_2(num_heads), WRITE_KV=kv is not None,
        KV_BLOCK_H=triton.next_power_of_2(v.shape[1]), IS_FP8=k_cache.dtype.itemsize == 1,
        SCALED=scaled, num_warps=4,
    )  # fmt: skip
