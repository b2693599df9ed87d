"""Paged attention over a block KV cache, with its per-step metadata; CPU/plain-torch path.

Owns the cache layout: per layer K and V of [num_kv_heads, num_blocks, block_size, head_dim].
A GPU kernel (issue 6) replaces `PagedAttention.forward` behind the same metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.engine.kernels.cpu_attention import paged_decode_cpu, write_kv_cpu

# cuDNN's SDPA builds a plan for every new sequence length (hundreds of ms each), and prompt
# lengths vary: prefill never uses it.
SDPA_NO_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
FLASH_DTYPES = (torch.float16, torch.bfloat16)  # what the varlen flash kernel takes


@dataclass
class PrefillChunk:
    """One request's prefill chunk: query rows [query_start, query_start + num_query_tokens)."""

    query_start: int
    num_query_tokens: int
    num_context_tokens: int  # tokens already cached before this chunk
    block_table: torch.Tensor  # [num_blocks] int64, covers context + chunk
    mask: torch.Tensor | None  # [q, context + q] bool (True: attend); None: plain causal


@dataclass
class FreshPrefills:
    """CUDA path: consecutive prefill chunks without cached context, rows [row_start, row_end)
    of the flat batch, attended by one variable-length flash call."""

    row_start: int
    row_end: int
    cu_seqlens: torch.Tensor  # [num_chunks + 1] int32: chunk starts relative to row_start
    max_len: int  # longest chunk


@dataclass
class DecodeGroup:
    """CPU path: one-token decodes of similar context length, attended together."""

    row_start: int  # rows [row_start, row_start + B) of the flat batch
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with each row's first block
    mask: torch.Tensor  # [1, B, 1, max_blocks * block_size] bool, True: a real key


@dataclass
class AttentionMetadata:
    """Built once per step by the model runner and shared by every layer."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: block_id * block_size + offset
    num_decode_tokens: int  # rows [0, num_decode_tokens) are one-token decodes
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks] int64
    prefills: list[PrefillChunk] = field(default_factory=list)
    # CPU plain-torch path: decodes sorted by context and grouped so padding stays bounded.
    decode_groups: list[DecodeGroup] = field(default_factory=list)
    # Kernel paths (CUDA kernels/paged_attention.py, CPU kernels/cpu_attention.py): no mask,
    # lengths bound the reads instead. Rows are sorted by context length, ascending.
    decode_context_lens: torch.Tensor | None = None  # [num_decodes] int32 (CUDA), int64 (CPU)
    decode_num_splits: int = 1  # split-K partitions of the decode kernel
    decode_split_keys: int = 0  # keys a partition (0: each request's keys in equal parts)
    decode_work: torch.Tensor | None = None  # split_keys > 0: the partitions holding keys
    # CUDA, splits > 1: the decode's partial results (kernels.paged_attention.split_partials),
    # made by the step's first layer and reused by the others
    decode_partials: tuple[torch.Tensor, torch.Tensor] | None = None
    fresh_prefills: FreshPrefills | None = None  # CUDA path: chunks with no cached context
    # A mixed step replayed as a CUDA graph (cuda_graph.py): every row goes through the decode
    # kernel (a continued chunk's rows with their contexts, new prompts' rows with context 0)
    # and fresh_prefills' flash call (decode and continued rows are its first sequence); rows
    # with a context keep the decode result.
    graph_mixed: bool = False

    def make_decode_work(self) -> None:
        """CUDA: the decode's work list from decode_context_lens where it runs in splits of
        decode_split_keys keys (`split_work`); graph-safe, so a graph captured after this call
        remakes it from each replay's lengths."""
        if self.decode_split_keys > 0 and self.decode_num_splits > 1:
            from harness.engine.kernels.paged_attention import split_work

            self.decode_work = split_work(
                self.decode_context_lens, self.decode_split_keys, self.decode_num_splits
            )


class PagedAttention(nn.Module):
    """Writes this step's K/V into the cache, then attends each query to its request's keys."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.k_cache = torch.empty(0)  # bound by the model runner
        self.v_cache = torch.empty(0)
        self.kv_scale = 1.0  # FP8 KV cache: stored = value / kv_scale (K and V alike)
        self.use_cpu_kernels = False  # set by the model runner: kernels/cpu_attention.py

    def rope_and_write_kv_(
        self, qk: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
        meta: AttentionMetadata, row_scale: torch.Tensor | None = None,
        col_scale: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        """CUDA: rotate qk ([N, H + Hkv, D]) in place and write K and V into the cache, in one
        launch (kernels/rope.py), first applying the qkv GEMM's deferred FP8 scales if given
        (to v in place too); then call forward with kv_written=True."""
        from harness.engine.kernels.rope import rope_write_kv_triton_

        rope_write_kv_triton_(qk, v, positions, cos_sin, self.num_heads, self.k_cache,
                              self.v_cache, meta.slot_mapping, self.kv_scale, row_scale,
                              col_scale)  # fmt: skip

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
        kv_written: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """q: [N, H, D], k/v: [N, Hkv, D] -> [N, H * D]. kv_written (CUDA): this step's K and V
        are in the cache already (rope_and_write_kv_)."""
        if q.is_cuda:
            return self._forward_cuda(q, k, v, meta, kv_written)
        num_kv, d = self.num_kv_heads, self.head_dim
        if self.use_cpu_kernels:
            write_kv_cpu(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        else:  # cache views [Hkv, num_slots, D]; the writes land in the shared cache tensors
            self.k_cache.view(num_kv, -1, d).index_copy_(1, meta.slot_mapping, k.transpose(0, 1))
            self.v_cache.view(num_kv, -1, d).index_copy_(1, meta.slot_mapping, v.transpose(0, 1))

        out = q.new_empty(q.shape[0], self.num_heads * d)
        if self.use_cpu_kernels and meta.num_decode_tokens:  # else decode_groups below
            n_dec = meta.num_decode_tokens
            out[:n_dec] = paged_decode_cpu(
                q[:n_dec], self.k_cache, self.v_cache, meta.decode_block_tables,
                meta.decode_context_lens, self.scale,
            )  # fmt: skip
        for group in meta.decode_groups:
            rows = slice(group.row_start, group.row_start + group.block_tables.shape[0])
            out[rows] = self._decode(q[rows], group)
        for chunk in meta.prefills:
            rows = slice(chunk.query_start, chunk.query_start + chunk.num_query_tokens)
            out[rows] = self._prefill(q[rows], k[rows], v[rows], chunk)
        return out

    def _decode(self, q: torch.Tensor, group: DecodeGroup) -> torch.Tensor:
        """Batched single-token attention: gathered K/V + one masked SDPA call, no KV repeat."""
        b, num_kv, d = q.shape[0], self.num_kv_heads, self.head_dim
        tables = group.block_tables  # [B, max_blocks]
        mask = group.mask  # [1, B, 1, T]
        group = self.num_heads // num_kv
        # index_select copies whole blocks; advanced indexing (cache[:, tables]) is ~3x slower
        # on CPU, and this gather is the largest cost of a CPU decode step.
        keys = self.k_cache.index_select(1, tables.flatten()).view(num_kv, b, -1, d)  # [Hkv,B,T,D]
        values = self.v_cache.index_select(1, tables.flatten()).view(num_kv, b, -1, d)
        q = q.view(b, num_kv, group, d).transpose(0, 1)  # [Hkv, B, G, D]
        # The G query heads of a KV head act as SDPA's query length, B as its heads.
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [Hkv,B,G,D]
        return attn.transpose(0, 1).reshape(b, self.num_heads * d)

    def _prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: PrefillChunk
    ) -> torch.Tensor:
        num_q, d = q.shape[0], self.head_dim
        q = q.transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        if chunk.mask is None:  # no cached context: the chunk's own K/V, causal
            k = k.transpose(0, 1).unsqueeze(0)  # [1, Hkv, q, D]
            v = v.transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            num_k = chunk.num_context_tokens + num_q
            k = self.k_cache.index_select(1, chunk.block_table).view(self.num_kv_heads, -1, d)
            v = self.v_cache.index_select(1, chunk.block_table).view(self.num_kv_heads, -1, d)
            k, v = k[:, :num_k], v[:, :num_k]
            o = F.scaled_dot_product_attention(
                q, k.unsqueeze(0), v.unsqueeze(0), attn_mask=chunk.mask, enable_gqa=True
            )
        return o.squeeze(0).transpose(0, 1).reshape(num_q, self.num_heads * d)  # [q, H * D]

    def _forward_cuda(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
        kv_written: bool,
    ) -> torch.Tensor:  # fmt: skip
        """Triton cache write + split-K paged decode; SDPA (flash) for prefill chunks."""
        from harness.engine.kernels.paged_attention import write_kv_cache

        if not kv_written:
            s = self.kv_scale
            write_kv_cache(k, v, self.k_cache, self.v_cache, meta.slot_mapping, s, s)
        n_dec = meta.num_decode_tokens
        if meta.graph_mixed:
            pre = varlen_causal_attention(q, k, v, meta.fresh_prefills, self.scale)
            is_decode = (meta.decode_context_lens > 0)[:, None]
            return torch.where(is_decode, self._decode_cuda(q, meta), pre)
        if n_dec and not meta.prefills:  # decode-only step (a decode CUDA graph's case)
            return self._decode_cuda(q, meta)
        out = q.new_empty(q.shape[0], self.num_heads * self.head_dim)
        if n_dec:
            out[:n_dec] = self._decode_cuda(q[:n_dec], meta)
        fresh = meta.fresh_prefills if q.dtype in FLASH_DTYPES else None  # fp32: per chunk
        if fresh is not None:  # fresh K/V in the model dtype: no cache read
            rows = slice(fresh.row_start, fresh.row_end)
            out[rows] = varlen_causal_attention(q[rows], k[rows], v[rows], fresh, self.scale)
        for chunk in meta.prefills:
            rows = slice(chunk.query_start, chunk.query_start + chunk.num_query_tokens)
            if fresh is not None and fresh.row_start <= chunk.query_start < fresh.row_end:
                continue
            with sdpa_kernel(SDPA_NO_CUDNN):
                if chunk.mask is None:
                    out[rows] = self._prefill(q[rows], k[rows], v[rows], chunk)
                else:  # chunked prefill over cached context: gather, upcast, masked SDPA
                    out[rows] = self._prefill_cached(q[rows], chunk)
        return out

    def _decode_cuda(self, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q [B, H, D] of one-token decodes -> [B, H * D] (rows of context 0: zeros)."""
        from harness.engine.kernels.paged_attention import paged_decode, split_partials

        if meta.decode_num_splits > 1 and meta.decode_partials is None:
            meta.decode_partials = split_partials(q, meta.decode_num_splits)
        o = paged_decode(
            q, self.k_cache, self.v_cache, meta.decode_block_tables, meta.decode_context_lens,
            self.scale, meta.decode_num_splits, self.kv_scale, self.kv_scale,
            split_keys=meta.decode_split_keys, work=meta.decode_work,
            partials=meta.decode_partials,
        )  # fmt: skip
        return o.view(q.shape[0], -1)

    def _prefill_cached(self, q: torch.Tensor, chunk: PrefillChunk) -> torch.Tensor:
        num_q, num_kv, d = q.shape[0], self.num_kv_heads, self.head_dim
        num_k = chunk.num_context_tokens + num_q
        k = self.k_cache[:, chunk.block_table].view(num_kv, -1, d)[:, :num_k]  # [Hkv, T, D]
        v = self.v_cache[:, chunk.block_table].view(num_kv, -1, d)[:, :num_k]
        k = (k.to(q.dtype) * self.kv_scale).unsqueeze(0)
        v = (v.to(q.dtype) * self.kv_scale).unsqueeze(0)
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k, v, attn_mask=chunk.mask, enable_gqa=True
        )  # [1, H, q, D]
        return o.squeeze(0).transpose(0, 1).reshape(num_q, self.num_heads * d)


def varlen_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fresh: FreshPrefills, scale: float
) -> torch.Tensor:
    """Packed prompts, each attending causally to itself: q [T, H, D], k/v [T, Hkv, D] ->
    [T, H * D], in one FlashAttention-2 launch (grouped KV heads natively). Reference: the
    per-chunk SDPA of PagedAttention._prefill (tests/gpu/test_varlen_prefill.py)."""
    cu = fresh.cu_seqlens
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # views into the fused qkv
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu, cu, fresh.max_len, fresh.max_len, 0.0, True, False, scale=scale
    )[0]
    return out.reshape(q.shape[0], -1)
