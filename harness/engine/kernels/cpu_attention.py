"""CPU paged decode attention and KV-cache write (cpu_paged_attention.c, built by cpu_build.py).
References: PagedAttention's gather + SDPA path and its index_copy_ write
(tests/unit/test_cpu_attention.py). If no compiler works the engine keeps that plain-torch path.
"""

from __future__ import annotations

import torch

from harness.engine.kernels.cpu_build import load, loaded


def is_available(dtype: torch.dtype, head_dim: int) -> bool:
    """The kernel takes fp32 and head sizes that are multiples of 8 (its vector width)."""
    return dtype == torch.float32 and head_dim % 8 == 0 and load() is not None


def paged_decode_cpu(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [B, H, D] fp32 (rows may be strided), caches [Hkv, num_blocks, bs, D], block_tables
    [B, max_blocks] int64, context_lens [B] int64 -> [B, H * D]. Rows sorted by context length
    ascending balance best (the kernel starts from the last, longest row)."""
    b, h, d = q.shape
    num_kv, num_blocks, block_size, _ = k_cache.shape
    q = _rows(q)
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and q.dtype == torch.float32
    block_tables = block_tables.contiguous()
    context_lens = context_lens.contiguous()
    out = q.new_empty(b, h * d)
    status = loaded().paged_decode_f32(
        q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
        block_tables.data_ptr(), context_lens.data_ptr(), out.data_ptr(),
        b, h, num_kv, d, num_blocks, block_size, block_tables.shape[1], scale,
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"paged_decode_f32 failed with status {status} (1: out of memory)")
    return out


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[N, heads, D] with unit inner strides (a view of qkv rows is), else a contiguous copy."""
    return x if x.stride(2) == 1 and x.stride(1) == x.shape[2] else x.contiguous()


def write_kv_cpu(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:  # fmt: skip
    """k, v [N, Hkv, D] fp32 -> caches [Hkv, num_blocks, bs, D] at slot_mapping [N] int64."""
    k, v, slots = _rows(k), _rows(v), slot_mapping.contiguous()
    num_kv, num_blocks, block_size, d = k_cache.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k.dtype == torch.float32
    loaded().write_kv_f32(
        k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), k_cache.data_ptr(),
        v_cache.data_ptr(), slots.data_ptr(), k.shape[0], num_kv, d, num_blocks * block_size,
    )  # fmt: skip
