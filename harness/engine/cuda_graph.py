"""CUDA graphs of decode-only steps, one per batch-size bucket; owns their static buffers.

A replay costs one launch instead of ~15 per layer. Only pure-decode steps replay (mixed
prefill+decode steps run eagerly); rows padded up to the bucket write nowhere (slot -1)
and attend to nothing (context 0).
"""

from __future__ import annotations

import logging
import time

import torch

from harness.engine.kernels.paged_attention import choose_num_splits
from harness.engine.model.attention import AttentionMetadata
from harness.engine.model.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


def decode_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to 128, then every 32: padding stays under ~25%."""
    sizes = [1, 2, 4, 8] + list(range(16, 129, 16)) + list(range(160, max_batch + 32, 32))
    return sorted({min(s, max_batch) for s in sizes if s <= max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(
        self, model: LlamaForCausalLM, max_batch: int, max_blocks_per_seq: int,
        block_size: int, device: torch.device,
    ) -> None:  # fmt: skip
        self.model = model
        self.buckets = decode_buckets(max_batch)
        self.max_batch = max_batch
        self.max_context = max_blocks_per_seq * block_size
        cfg = model.config
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        self.num_kv_heads = cfg.num_key_value_heads
        i64 = dict(dtype=torch.int64, device=device)
        self.input_ids = torch.zeros(max_batch, **i64)  # [max_batch]
        self.positions = torch.zeros(max_batch, **i64)
        self.slot_mapping = torch.full((max_batch,), -1, **i64)
        self.block_tables = torch.zeros(max_batch, max_blocks_per_seq, **i64)
        self.context_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self.outputs: dict[int, torch.Tensor] = {}  # bucket -> [bucket, hidden] static output
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def num_splits(self, batch: int) -> int:
        return choose_num_splits(batch, self.num_kv_heads, self.max_context, self.num_sms)

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            num_decode_tokens=bs,
            decode_block_tables=self.block_tables[:bs],
            decode_context_lens=self.context_lens[:bs],
            decode_max_context=self.max_context,
            decode_num_splits=self.num_splits(bs),
        )

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        self.context_lens.fill_(1)  # warm-up reads block 0 only; never written (slot -1)
        for bs in reversed(self.buckets):  # largest first: later graphs reuse its pool
            meta = self._meta(bs)
            for _ in range(2):  # warm-up: Triton compiles, cuBLAS picks its algorithms
                self.model(self.input_ids[:bs], self.positions[:bs], meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[bs] = self.model(self.input_ids[:bs], self.positions[:bs], meta)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        self.context_lens.zero_()
        torch.cuda.synchronize()
        logger.info(
            "CUDA graphs: %d decode buckets (1..%d) captured in %.1f s",
            len(self.buckets), self.max_batch, time.perf_counter() - start,
        )  # fmt: skip

    def can_run(self, batch: int, num_table_cols: int) -> bool:
        return 0 < batch <= self.max_batch and num_table_cols <= self.block_tables.shape[1]

    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
        block_tables: torch.Tensor, context_lens: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Inputs of B decode rows ([B], [B], [B], [B, cols], [B] int32) -> [B, hidden]."""
        b = input_ids.shape[0]
        bs = next(s for s in self.buckets if s >= b)
        self.input_ids[:b].copy_(input_ids)
        self.positions[:b].copy_(positions)
        self.slot_mapping[:b].copy_(slot_mapping)
        self.slot_mapping[b:bs].fill_(-1)
        self.block_tables[:b, : block_tables.shape[1]].copy_(block_tables)
        self.context_lens[:b].copy_(context_lens)
        self.context_lens[b:bs].zero_()
        self.graphs[bs].replay()
        return self.outputs[bs][:b]
