"""Paged-KV kernels for CUDA: cache write (optionally to FP8), split-K decode attention and
the combine of its partials (one launch; torch ops took eleven).

Cache layout (owned by attention.py): per layer K and V of [Hkv, num_blocks, block_size, D].
Each Triton kernel has a plain-torch reference here; tests/gpu/test_paged_attention.py
compares them. Importable without Triton (the references still work).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: references only
    triton = None
    tl = None

FP8_MAX = 448.0
BLOCK_N = 64  # keys a tile on bf16 caches (FP8: FP8_TILING); also the shortest split
MAX_SPLITS = 32  # splits of one request's keys at most


@dataclass(frozen=True)
class DecodeTiling:
    """How the decode kernel walks a request's keys: keys a tile, warps a program, Triton's
    software-pipelining depth (None: its default) and, for an FP8 cache, K and V multiplied
    in fp16 (one widening instruction a pair of values; to bf16 it takes one a value)."""

    block_n: int = BLOCK_N
    num_warps: int = 4
    num_stages: int | None = None
    fp16_dot: bool = False


# FP8 caches (decode_kernel_bench at 424 keys, one call on one H100, nineteenth session): at the
# 7B's 448 rows 548 us a layer (2.84 TB/s) against 610 with 2 warps and 818 with the bf16
# tiling; at the 70B's 160 rows 59.3 against 80.6 and 87.8 us; at 1 and 32 rows 6.9 and 25.9
# against 7.3 and 29.5. Through LoadGen (7B Offline, 5,000 queries, the same H100): 11,394.4
# tok/s against 11,019.7 (2 warps) and 9,537.9 (bf16 tiling). bf16 caches: 32 keys tied there.
FP8_TILING = DecodeTiling(block_n=32, num_warps=1, num_stages=1, fp16_dot=True)
# FP8 caches in fixed splits from the work list (decode_kernel_bench --part=split_tilings, 256-key
# splits over 16-2,048-key contexts, one H100, thirty-fourth session): 64 keys a tile, pipelined
# two deep, the fastest of 12 tilings at 64-320 rows (the Offline's steps) and within 0.1-3.1 us
# of the fastest at 4-40; against FP8_TILING 159.2 against 172.1 us a layer at 160 rows, 162.5
# against 179.3 at 150 of a 320-row mixed step, 71.8 against 74.7 at 64, 23.9 against 31.2 at
# 16, 18.2 against 26.4 at an Offline tail's 4 rows. Through LoadGen (70B Offline, 1,024
# queries, one H100): 2,642.3 tok/s against 2,626.9.
FP8_SPLIT_TILING = DecodeTiling(block_n=64, num_warps=1, num_stages=2, fp16_dot=True)


def decode_tiling(cache_dtype: torch.dtype, fixed_splits: bool = False) -> DecodeTiling:
    """The tiling the engine runs for a cache of this dtype, in equal parts of each request's
    keys or (fixed_splits) in splits of a fixed number of keys (`decode_splits`)."""
    if cache_dtype.itemsize != 1:
        return DecodeTiling()
    return FP8_SPLIT_TILING if fixed_splits else FP8_TILING


# ------------------------------------------------------------------ references (plain torch)


def write_kv_cache_reference(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:  # fmt: skip
    """k, v: [N, Hkv, D]; slot_mapping [N] (-1: skip) -> cache[:, slot // bs, slot % bs]."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    hkv, d = k_cache.shape[0], k_cache.shape[-1]
    for src, cache, scale in ((k[keep], k_cache, k_scale), (v[keep], v_cache, v_scale)):
        vals = (src.float() / scale).clamp(-FP8_MAX, FP8_MAX) if cache.dtype.itemsize == 1 else src
        vals = vals.transpose(0, 1).to(cache.dtype)  # [Hkv, n, D]
        if cache.dtype.itemsize == 1:  # index_copy_ has no float8 kernel: copy the bytes
            cache, vals = cache.view(torch.uint8), vals.view(torch.uint8)
        cache.view(hkv, -1, d).index_copy_(1, slots, vals)


def paged_decode_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, k_scale: float = 1.0, v_scale: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """q: [B, H, D]; block_tables [B, max_blocks]; context_lens [B] -> [B, H, D] in q.dtype.

    fp32 math, one request at a time (slow, exact): the kernel's oracle.
    """
    b, h, d = q.shape
    hkv, _, bs, _ = k_cache.shape
    out = torch.zeros_like(q)
    for i in range(b):
        n = int(context_lens[i])
        if n == 0:
            continue
        blocks = block_tables[i, : -(-n // bs)]
        keys = k_cache[:, blocks].reshape(hkv, -1, d)[:, :n].float() * k_scale  # [Hkv, n, D]
        vals = v_cache[:, blocks].reshape(hkv, -1, d)[:, :n].float() * v_scale
        keys = keys.repeat_interleave(h // hkv, dim=0)  # [H, n, D]
        vals = vals.repeat_interleave(h // hkv, dim=0)
        probs = torch.softmax(torch.einsum("hd,hnd->hn", q[i].float(), keys) * scale, dim=-1)
        out[i] = torch.einsum("hn,hnd->hd", probs, vals).to(q.dtype)
    return out


# ------------------------------------------------------------------ Triton kernels

if triton is not None:

    @triton.jit
    def _write_kv_kernel(
        k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
        stride_kn, stride_kh, stride_vn, stride_vh, stride_ch,
        inv_k_scale, inv_v_scale,
        D: tl.constexpr, IS_FP8: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0)
        h = tl.program_id(1).to(tl.int64)  # h x stride_ch passes 2^31 in caches over 4 GiB
        slot = tl.load(slot_ptr + n).to(tl.int64)
        if slot >= 0:
            offs = tl.arange(0, D)
            k = tl.load(k_ptr + n * stride_kn + h * stride_kh + offs).to(tl.float32)
            v = tl.load(v_ptr + n * stride_vn + h * stride_vh + offs).to(tl.float32)
            if IS_FP8:
                k = tl.clamp(k * inv_k_scale, -448.0, 448.0)
                v = tl.clamp(v * inv_v_scale, -448.0, 448.0)
            dst = h * stride_ch + slot * D + offs
            tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty))
            tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty))

    @triton.jit
    def _attend_part(
        q_ptr, k_cache_ptr, v_cache_ptr, tables_ptr, acc_ptr, ml_ptr,
        b, kvh, s, start, end, plane, stride_qb, stride_qh, stride_tb, stride_ch,
        stride_cblk, qk_scale, v_scale,
        G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
        PRECISION: tl.constexpr, FP16_DOT: tl.constexpr,
    ):  # fmt: skip
        """Keys [start, end) of request b for KV head kvh's G query heads: the final output if
        NUM_SPLITS is 1, else partial s."""
        offs_g = tl.arange(0, G_PAD)
        offs_d = tl.arange(0, D)
        heads = kvh * G + offs_g
        live = offs_g < G  # heads of this program that load q and write
        q = tl.load(
            q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
            mask=live[:, None],
            other=0.0,
        )  # [G_PAD, D]
        if FP16_DOT:  # FP8 K and V widen to fp16 one instruction a pair, to bf16 one a value
            q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)
        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        for t0 in range(start, end, BLOCK_N):
            offs_t = t0 + tl.arange(0, BLOCK_N)
            t_mask = offs_t < end
            page = tl.load(tables_ptr + b * stride_tb + offs_t // BLOCK_SIZE, mask=t_mask, other=0)
            row = kvh * stride_ch + page.to(tl.int64) * stride_cblk + (offs_t % BLOCK_SIZE) * D
            kv_off = row[:, None] + offs_d[None, :]
            k = tl.load(k_cache_ptr + kv_off, mask=t_mask[:, None], other=0.0).to(q.dtype)
            v = tl.load(v_cache_ptr + kv_off, mask=t_mask[:, None], other=0.0).to(q.dtype)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [G, N]
            scores = tl.where(t_mask[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
            m_i = m_new
        num_heads = tl.num_programs(1) * G
        if NUM_SPLITS == 1:  # no partials: normalize here, write [B, H, D] in q's dtype
            o = acc * (v_scale / tl.maximum(l_i, 1e-30))[:, None]
            o_ptrs = acc_ptr + (b * num_heads + heads)[:, None] * D + offs_d[None, :]
            tl.store(o_ptrs, o.to(acc_ptr.dtype.element_ty), mask=live[:, None])
        else:  # partials: acc [B, H, S, D] fp32 (unnormalized, V scale applied), ml [2, B, H, S]
            part = (b * num_heads + heads) * NUM_SPLITS + s
            dst = acc_ptr + part[:, None] * D + offs_d[None, :]
            tl.store(dst, acc * v_scale, mask=live[:, None])
            tl.store(ml_ptr + part, m_i, mask=live)
            tl.store(ml_ptr + plane + part, l_i, mask=live)

    @triton.jit
    def _paged_decode_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, tables_ptr, ctx_ptr, work_ptr,
        acc_ptr, ml_ptr, plane,
        stride_qb, stride_qh, stride_tb, stride_ch, stride_cblk, qk_scale, v_scale,
        G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
        PRECISION: tl.constexpr, FP16_DOT: tl.constexpr = False, SPLIT_KEYS: tl.constexpr = 0,
    ):  # fmt: skip
        kvh = tl.program_id(1).to(tl.int64)  # kvh x stride_ch passes 2^31 in caches over 4 GiB
        if SPLIT_KEYS > 0:  # grid (programs, Hkv): the work list's splits, round robin
            first, count, step = tl.program_id(0), tl.load(work_ptr), tl.num_programs(0)
        else:  # grid (B, Hkv, splits): one part a program
            first, count, step = 0, 1, 1
        for i in range(first, count, step):
            if SPLIT_KEYS > 0:
                item = tl.load(work_ptr + 1 + i)  # row x NUM_SPLITS + split
                b = item // NUM_SPLITS
                s = item % NUM_SPLITS
                start = s * SPLIT_KEYS
                end = tl.minimum(start + SPLIT_KEYS, tl.load(ctx_ptr + b))
            else:  # each request's keys in equal parts (graph-safe: sized here, from its
                # length; a part past them writes m = -inf, l = 0)
                b = tl.program_id(0)
                s = tl.program_id(2)
                ctx = tl.load(ctx_ptr + b)
                per_split = tl.cdiv(tl.cdiv(ctx, NUM_SPLITS), BLOCK_N) * BLOCK_N
                start = s * per_split
                end = tl.minimum(start + per_split, ctx)
            _attend_part(
                q_ptr, k_cache_ptr, v_cache_ptr, tables_ptr, acc_ptr, ml_ptr,
                b, kvh, s, start, end, plane, stride_qb, stride_qh, stride_tb,
                stride_ch, stride_cblk, qk_scale, v_scale, G, G_PAD, D, BLOCK_SIZE,
                BLOCK_N, NUM_SPLITS, PRECISION, FP16_DOT,
            )  # fmt: skip

    @triton.jit
    def _combine_splits_kernel(
        acc_ptr, ml_ptr, out_ptr, ctx_ptr, plane, num_heads,
        NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr, D: tl.constexpr, HEADS: tl.constexpr,
        SPLIT_KEYS: tl.constexpr = 0,
    ):  # fmt: skip
        # HEADS heads of one request a program (HEADS divides a KV head's group): each head's
        # NUM_SPLITS partials, weighted by exp(m_s - max). Empty splits (m = -inf, l = 0) and
        # rows of context 0 weigh 0 / give 0.
        first = tl.program_id(0).to(tl.int64) * HEADS  # row x num_heads + head
        offs_s = tl.arange(0, S_PAD)
        if SPLIT_KEYS > 0:  # only the splits that hold keys wrote (none: a row of context 0)
            ctx = tl.load(ctx_ptr + first // num_heads)
            s_mask = offs_s < tl.cdiv(ctx, SPLIT_KEYS)
        else:
            s_mask = offs_s < NUM_SPLITS
        heads = first + tl.arange(0, HEADS)
        part = heads[:, None] * NUM_SPLITS + offs_s[None, :]  # [HEADS, S_PAD]
        mask = (heads[:, None] >= 0) & s_mask[None, :]
        m = tl.load(ml_ptr + part, mask=mask, other=float("-inf"))
        l_s = tl.load(ml_ptr + plane + part, mask=mask, other=0.0)
        w = tl.exp(m - tl.maximum(tl.max(m, 1), -1e30)[:, None])
        offs_d = tl.arange(0, D)
        parts = part[:, :, None] * D + offs_d[None, None, :]
        acc = tl.load(acc_ptr + parts, mask=mask[:, :, None], other=0.0)  # [HEADS, S_PAD, D]
        o = tl.sum(acc * w[:, :, None], 1) / tl.maximum(tl.sum(l_s * w, 1), 1e-30)[:, None]
        tl.store(out_ptr + heads[:, None] * D + offs_d[None, :], o.to(out_ptr.dtype.element_ty))


def combine_heads(group: int, splits_pad: int) -> int:
    """Heads a combine program: the largest power of two dividing the group, at most 128
    partials (8 heads of 16 splits: 64 KiB of fp32), at least 1."""
    return max(1, min(group & -group, 128 // splits_pad))


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:  # fmt: skip
    """Triton version of write_kv_cache_reference (k, v may be strided views of qkv)."""
    n, hkv, d = k.shape
    if n == 0:
        return
    _write_kv_kernel[(n, hkv)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(0),
        1.0 / k_scale, 1.0 / v_scale,
        D=d, IS_FP8=k_cache.dtype.itemsize == 1,
    )  # fmt: skip


def choose_num_splits(batch: int, num_kv_heads: int, max_context: int, num_sms: int) -> int:
    """Enough (batch x kv head x split) programs for four per SM, and splits of at least one
    BLOCK_N tile where every context is at most max_context. (Two per SM and 256-key splits
    left the 7B batch-1 step's decode at 0.6 TB/s on an H100: 27 us a layer at 1,000 keys.)"""
    want = -(-4 * num_sms // max(batch * num_kv_heads, 1))
    return max(1, min(want, -(-max_context // BLOCK_N), MAX_SPLITS))


def decode_splits(
    batch: int, num_kv_heads: int, max_context: int, num_sms: int, split_keys: int = 0
) -> tuple[int, int]:
    """(splits, keys a split) for paged_decode. split_keys 0: choose_num_splits, each request's
    keys in that many equal parts, so a batch of unequal contexts waits on its longest
    request's programs. split_keys > 0: splits of that many keys (more, in whole BLOCK_N tiles,
    where max_context needs over MAX_SPLITS of them), as many as max_context needs; a request
    runs only the splits its keys reach, all of about the same work."""
    if split_keys <= 0:
        return choose_num_splits(batch, num_kv_heads, max_context, num_sms), 0
    keys = max(split_keys, -(-max_context // MAX_SPLITS))
    keys = -(-keys // BLOCK_N) * BLOCK_N
    return max(1, -(-max_context // keys)), keys


def split_work(context_lens: torch.Tensor, split_keys: int, num_splits: int) -> torch.Tensor:
    """The work list of the decode in splits of split_keys keys, made on context_lens' device
    without a host sync (a CUDA graph recomputes it each replay; one per step, for every layer):
    int32 [B x num_splits + 2]: [0] how many splits hold keys, then their ids (row x num_splits
    + split) row by row, then unused slots (the last one takes the empty splits' writes)."""
    cap = context_lens.shape[0] * num_splits
    kw = dict(dtype=torch.int32, device=context_lens.device)
    held = torch.arange(num_splits, **kw) < ((context_lens + split_keys - 1) // split_keys)[:, None]
    slot = torch.cumsum(held.flatten(), 0, dtype=torch.int32)  # 1 + its index where held
    work = torch.zeros(cap + 2, **kw)
    work.scatter_(0, torch.where(held.flatten(), slot, cap + 1).long(), torch.arange(cap, **kw))
    work[:1].copy_(slot[-1:])
    return work


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def work_programs(num_items: int, num_kv_heads: int, num_sms: int) -> int:
    """Programs a KV head for the work list: at most one a split and 32 an SM over the KV
    heads (528 for the 70B on 132 SMs; an SM holds about 8 of FP8_SPLIT_TILING's at once, 254
    registers a thread for sm_90, the rest queue as a larger grid's would); each runs every
    programs-th split of the list."""
    return max(1, min(num_items, 32 * num_sms // num_kv_heads))


def split_partials(q: torch.Tensor, num_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """paged_decode's fp32 partial results of q [B, H, D] in num_splits > 1 parts: each
    part's output [B, H, splits, D], and its running max and sum [2, B, H, splits]. The
    engine makes them once a step for every layer (AttentionMetadata.decode_partials): the
    70B's 320-row graph step needs 160 MiB of them, and one a layer let the graphs' shared pool
    hold this twice (thirty-seventh session)."""
    b, h, d = q.shape
    acc = torch.empty(b, h, num_splits, d, dtype=torch.float32, device=q.device)
    return acc, torch.empty(2, b, h, num_splits, dtype=torch.float32, device=q.device)


def paged_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, num_splits: int,
    k_scale: float = 1.0, v_scale: float = 1.0, tiling: DecodeTiling | None = None,
    split_keys: int = 0, work: torch.Tensor | None = None,
    partials: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:  # fmt: skip
    """q: [B, H, D] -> [B, H, D]; each request's keys in num_splits parts of equal length, or
    with split_keys > 0 in parts of that many keys, num_splits x split_keys covering every
    context (`decode_splits`), only the parts holding keys run (`split_work`; work: made once
    a step, else here). Graph-safe either way: no host sync. Rows with context_lens 0 give
    zeros. tiling: the engine's for the cache dtype and splits (decode_tiling) unless given, as
    harness.report.decode_kernel_bench gives others. partials: `split_partials` for these
    q and num_splits (made here if not given; unused with one split).
    """
    b, h, d = q.shape
    hkv, _, bs, _ = k_cache.shape
    group = h // hkv
    if num_splits == 1:  # the kernel writes the final output; one part holds all keys
        split_keys = 0
        acc = torch.empty(b, h, 1, d, dtype=q.dtype, device=q.device)
        ml = acc  # unused
    else:
        acc, ml = partials or split_partials(q, num_splits)
        if acc.shape != (b, h, num_splits, d):
            raise ValueError(f"partials for {tuple(acc.shape)}, not {(b, h, num_splits, d)}")
    tile = tiling or decode_tiling(k_cache.dtype, fixed_splits=split_keys > 0)
    stages = {} if tile.num_stages is None else {"num_stages": tile.num_stages}
    if split_keys > 0:
        if work is None:
            work = split_work(context_lens, split_keys, num_splits)
        grid = (work_programs(b * num_splits, hkv, _num_sms(q.device)), hkv, 1)
    else:
        work, grid = context_lens, (b, hkv, num_splits)  # work: unused
    _paged_decode_kernel[grid](
        q, k_cache, v_cache, block_tables, context_lens, work, acc, ml, ml[0].numel(),
        q.stride(0), q.stride(1), block_tables.stride(0), k_cache.stride(0), k_cache.stride(1),
        scale * k_scale, v_scale,
        G=group, G_PAD=max(16, triton.next_power_of_2(group)), D=d, BLOCK_SIZE=bs,
        BLOCK_N=tile.block_n, NUM_SPLITS=num_splits, num_warps=tile.num_warps,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 models: exact
        FP16_DOT=tile.fp16_dot and k_cache.dtype.itemsize == 1, SPLIT_KEYS=split_keys,
        **stages,
    )  # fmt: skip
    if num_splits == 1:
        return acc.view(b, h, d)
    out = torch.empty(b, h, d, dtype=q.dtype, device=q.device)
    s_pad = triton.next_power_of_2(num_splits)
    heads = combine_heads(group, s_pad)
    _combine_splits_kernel[(b * h // heads,)](
        acc, ml, out, context_lens, ml[0].numel(), h,
        NUM_SPLITS=num_splits, S_PAD=s_pad, D=d, HEADS=heads, SPLIT_KEYS=split_keys,
        num_warps=8 if heads * s_pad >= 64 else 4,
    )  # fmt: skip
    return out
