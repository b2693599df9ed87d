"""Paged attention over a block KV cache, with its per-step metadata; CPU/plain-torch path.

Owns the cache layout: per layer K and V of [num_kv_heads, num_blocks, block_size, head_dim].
A GPU kernel (issue 6) replaces `PagedAttention.forward` behind the same metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PrefillChunk:
    """One request's prefill chunk: query rows [query_start, query_start + num_query_tokens)."""

    query_start: int
    num_query_tokens: int
    num_context_tokens: int  # tokens already cached before this chunk
    block_table: torch.Tensor  # [num_blocks] int64, covers context + chunk
    mask: torch.Tensor | None  # [q, context + q] bool (True: attend); None: plain causal


@dataclass
class AttentionMetadata:
    """Built once per step by the model runner and shared by every layer."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: block_id * block_size + offset
    num_decode_tokens: int  # rows [0, num_decode_tokens) are one-token decodes
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks] int64
    decode_mask: torch.Tensor | None = None  # [1, num_decodes, 1, max_blocks*block_size] bool
    prefills: list[PrefillChunk] = field(default_factory=list)


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

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """q: [N, H, D], k/v: [N, Hkv, D] -> [N, H * D]."""
        num_kv, d = self.num_kv_heads, self.head_dim
        # Cache views [Hkv, num_slots, D]; the writes land in the shared cache tensors.
        self.k_cache.view(num_kv, -1, d).index_copy_(1, meta.slot_mapping, k.transpose(0, 1))
        self.v_cache.view(num_kv, -1, d).index_copy_(1, meta.slot_mapping, v.transpose(0, 1))

        out = q.new_empty(q.shape[0], self.num_heads * d)
        n_dec = meta.num_decode_tokens
        if n_dec:
            out[:n_dec] = self._decode(q[:n_dec], meta)
        for chunk in meta.prefills:
            rows = slice(chunk.query_start, chunk.query_start + chunk.num_query_tokens)
            out[rows] = self._prefill(q[rows], k[rows], v[rows], chunk)
        return out

    def _decode(self, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Batched single-token attention: gathered K/V + a masked matmul, no KV repeat."""
        b, num_kv, d = q.shape[0], self.num_kv_heads, self.head_dim
        group = self.num_heads // num_kv
        tables = meta.decode_block_tables  # [B, max_blocks]
        keys = self.k_cache[:, tables].view(num_kv, b, -1, d)  # [Hkv, B, T, D]
        values = self.v_cache[:, tables].view(num_kv, b, -1, d)  # [Hkv, B, T, D]
        q = q.view(b, num_kv, group, d).transpose(0, 1)  # [Hkv, B, G, D]
        scores = torch.matmul(q, keys.transpose(-1, -2)) * self.scale  # [Hkv, B, G, T]
        scores.masked_fill_(~meta.decode_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        attn = torch.matmul(probs, values)  # [Hkv, B, G, D]
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
            k = self.k_cache[:, chunk.block_table].view(self.num_kv_heads, -1, d)[:, :num_k]
            v = self.v_cache[:, chunk.block_table].view(self.num_kv_heads, -1, d)[:, :num_k]
            o = F.scaled_dot_product_attention(
                q, k.unsqueeze(0), v.unsqueeze(0), attn_mask=chunk.mask, enable_gqa=True
            )
        return o.squeeze(0).transpose(0, 1).reshape(num_q, self.num_heads * d)  # [q, H * D]
