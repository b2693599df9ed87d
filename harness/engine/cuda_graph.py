"""CUDA graphs of engine steps, one per size bucket; owns their static input buffers.

A replay costs one launch instead of ~15 per layer: an eager 70B step is bound by the CPU's
launches (about 70 ms at any small batch), a replayed one by the GPU. Two kinds:

- decode graphs: B one-token decodes, B in `decode_buckets(max_num_seqs)`;
- mixed graphs (`max_tokens` > 0): decodes first, then prompt chunks that continue over
  cached context, then up to MAX_PROMPTS new prompts, T rows in all, T in
  `mixed_buckets(max_tokens)`. Every row goes through both attention kernels: the paged
  decode and one varlen flash call whose sequences are [the decode and continued rows, new
  prompt 1, new prompt 2, ...]. A continued chunk's row i attends in the paged decode as a
  decode would, to its request's first context + i + 1 keys (its own K/V are in the cache by
  then); new prompts' rows have context 0 there and keep the flash result
  (model/attention.py, `graph_mixed`). Eager steps, whose shapes need not be fixed, attend a
  continued chunk another way: its context gathered once for one masked SDPA
  (`PagedAttention._prefill_cached`); tests/gpu/test_cuda_graph.py checks the two agree.

With `fastest_buckets`, decode graphs are captured up to the next power of two above the
largest batch, and every graph of either kind is timed: a bucket whose replay is slower than a
larger one's of its kind is dropped, so a step pads up to the faster graph. cuBLAS's FP8 GEMM
on the H100 took 0.58 ms per 70B layer at 192 rows and 0.42 ms at 256, and the 70B decode
graph of 160 rows replayed in 52.5 ms, the one of 256 rows in 38.5 ms.

Rows padded up to a bucket write nowhere (slot -1), decode nothing (context 0) and belong to
no flash sequence; their hidden states are never read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from harness.engine import pool_trace
from harness.engine.kernels.paged_attention import decode_splits
from harness.engine.kv_plan import Agree, lowest_free_bytes
from harness.engine.model.attention import FLASH_DTYPES, AttentionMetadata, FreshPrefills
from harness.engine.model.llama import LlamaForCausalLM
from harness.engine.model_runner import to_device

logger = logging.getLogger(__name__)

MAX_PROMPTS = 8  # new prompts in a mixed graph; a step with more runs eagerly. 4 let 493 of the
# 70B H100 Offline's 689 prompt steps into 1,024-row graphs, 8 lets 556 (CPU replay)


def decode_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to 128, then every 32: padding stays under ~25%."""
    sizes = [1, 2, 4, 8] + list(range(16, 129, 16)) + list(range(160, max_batch + 32, 32))
    return sorted({min(s, max_batch) for s in sizes if s <= max_batch} | {max_batch})


def graph_batch(max_batch: int, fastest_buckets: bool) -> int:
    """Rows of the largest decode graph: with fastest_buckets the next power of two, so that a
    full batch may pad up to a faster graph (160 -> 256); else max_batch."""
    return 1 << (max_batch - 1).bit_length() if fastest_buckets else max_batch


def keep_fastest(replay_ms: dict[int, float], margin: float = 0.03) -> list[int]:
    """The buckets to keep, from each one's replay time: a bucket goes when a larger one
    replays more than `margin` faster (a batch then pads to the larger one)."""
    kept, best_above = [], float("inf")
    for rows in sorted(replay_ms, reverse=True):
        if best_above >= replay_ms[rows] * (1 - margin):
            kept.append(rows)
        best_above = min(best_above, replay_ms[rows])
    return sorted(kept)


def mixed_buckets(max_tokens: int) -> list[int]:
    """Every 32 rows up to 512, every 64 up to 1,024, then every 128: a padded row costs a
    prompt token's GEMM work, so padding stays under ~12%."""
    sizes = list(range(32, 513, 32)) + list(range(576, 1025, 64))
    sizes += list(range(1152, max_tokens + 128, 128))
    return sorted({s for s in sizes if s < max_tokens} | {max_tokens}) if max_tokens > 0 else []


def fits_mixed_graph(num_rows: int, fresh_prompts: list[bool], max_tokens: int) -> bool:
    """Whether a step with prompt chunks has a mixed graph: at most max_tokens rows, at most
    MAX_PROMPTS new prompts, every chunk over cached context before them (fresh_prompts: one
    flag per chunk in batch order, True for a new prompt)."""
    order_ok = fresh_prompts == sorted(fresh_prompts)  # continued (False) chunks come first
    return num_rows <= max_tokens and sum(fresh_prompts) <= MAX_PROMPTS and order_ok


def mixed_cu_seqlens(num_decodes: int, prompt_lens: list[int]) -> list[int]:
    """Flash sequence bounds of a mixed graph: the decode (and continued) rows, then each new
    prompt; padded to MAX_PROMPTS prompts with empty sequences."""
    cu = [0, num_decodes]
    for n in prompt_lens:
        cu.append(cu[-1] + n)
    return cu + [cu[-1]] * (MAX_PROMPTS + 2 - len(cu))


class StepGraphs:
    def __init__(
        self, model: LlamaForCausalLM, max_batch: int, max_tokens: int, max_blocks_per_seq: int,
        block_size: int, device: torch.device, fastest_buckets: bool = False,
        agree: Agree | None = None, split_keys: int = 0,
    ) -> None:  # fmt: skip
        """max_batch: the largest decode batch; max_tokens: the largest mixed graph (0: none;
        only for models whose dtype the flash kernel takes); fastest_buckets: capture decode
        graphs up to graph_batch(max_batch), then keep the fastest (module docstring); agree
        (tensor parallel): the replay times every rank decides on, so that all keep the same;
        split_keys: the paged decode's keys a split (`decode_splits`; 0: equal parts)."""
        self.model = model
        dtype = model.model.embed_tokens.weight.dtype
        if max_tokens and dtype not in FLASH_DTYPES:
            logger.info("CUDA graphs: no mixed graphs for %s (the flash kernel takes bf16/fp16)",
                        dtype)  # fmt: skip
            max_tokens = 0
        self.fastest_buckets, self.agree, self.split_keys = fastest_buckets, agree, split_keys
        max_batch = graph_batch(max_batch, fastest_buckets)
        self.decode_sizes = decode_buckets(max_batch)
        self.mixed_sizes = mixed_buckets(max_tokens)
        self.max_batch, self.max_tokens = max_batch, max_tokens
        self.max_context = max_blocks_per_seq * block_size
        cfg = model.config
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        self.num_kv_heads = cfg.num_key_value_heads
        rows = max(max_batch, max_tokens)
        i64 = dict(dtype=torch.int64, device=device)
        self.input_ids = torch.zeros(rows, **i64)  # [rows]
        self.positions = torch.zeros(rows, **i64)
        self.slot_mapping = torch.full((rows,), -1, **i64)
        self.block_tables = torch.zeros(rows, max_blocks_per_seq, **i64)
        self.context_lens = torch.zeros(rows, dtype=torch.int32, device=device)
        self.cu_seqlens = torch.zeros(MAX_PROMPTS + 2, dtype=torch.int32, device=device)
        self.hidden = torch.empty(rows, cfg.hidden_size, dtype=dtype, device=device)
        self.decode_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.mixed_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None
        self.lowest_free = 0  # bytes: the least free GPU memory while capturing (`capture`)
        self.pool_bytes = 0  # bytes the graphs' shared pool holds after capture

    def _meta(self, rows: int, mixed: bool) -> AttentionMetadata:
        splits, split_keys = decode_splits(
            rows, self.num_kv_heads, self.max_context, self.num_sms, self.split_keys
        )
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:rows],
            num_decode_tokens=rows,
            decode_block_tables=self.block_tables[:rows],
            decode_context_lens=self.context_lens[:rows],
            decode_num_splits=splits,
            decode_split_keys=split_keys,
        )
        if mixed:
            meta.graph_mixed = True
            meta.fresh_prefills = FreshPrefills(0, rows, self.cu_seqlens, max_len=rows)
        return meta

    @torch.inference_mode()
    def capture(self) -> None:
        """Every graph's eager warm-up, then the captures: mixed graphs, then decode graphs,
        each largest first (later ones reuse its pool); with fastest_buckets, then drops the
        decode graphs that a larger one replays faster. The warm-ups all run before the pool
        exists, so none adds its activations to the pool's (the peak is the larger of the
        two, not their sum); lowest_free records the least free memory meanwhile."""
        start = time.perf_counter()
        device = self.input_ids.device
        torch.cuda.reset_peak_memory_stats(device)
        free_before = torch.cuda.mem_get_info(device)[0]
        self._each_size(self._warm_up)
        trace = pool_trace.wanted()  # a diagnosis: which allocations make the pool
        if trace:
            pool_trace.start()
        self._each_size(self._capture)
        if self.fastest_buckets:
            self.decode_sizes = self._drop_slow_graphs(self.decode_graphs, mixed=False)
            self.mixed_sizes = self._drop_slow_graphs(self.mixed_graphs, mixed=True)
        torch.cuda.synchronize()
        used = free_before - torch.cuda.mem_get_info(device)[0]
        self.lowest_free = lowest_free_bytes(device)
        index = pool_trace.device_index(device)
        segments = pool_trace.pool_segments(torch.cuda.memory_snapshot(), self.pool, index)
        self.pool_bytes = sum(hi - lo for lo, hi in segments)
        if trace:
            pool_trace.stop_and_log(self.pool, device)
        logger.info(
            "CUDA graphs: %d decode (1..%d rows), %d mixed (%s rows) captured in %.1f s, "
            "%.2f GiB of GPU memory (%.2f GiB of it the graphs' pool; the rest outside it: "
            "graph executables, workspaces); %.2f GiB free at the lowest meanwhile",
            len(self.decode_sizes), self.max_batch, len(self.mixed_sizes),
            f"{self.mixed_sizes[0]}..{self.max_tokens}" if self.mixed_sizes else "no",
            time.perf_counter() - start, used / 2**30, self.pool_bytes / 2**30,
            self.lowest_free / 2**30,
        )  # fmt: skip

    def _drop_slow_graphs(self, graphs: dict[int, torch.cuda.CUDAGraph], mixed: bool) -> list[int]:
        """Times each graph's replay (no context; a mixed graph as one prompt of all its rows:
        the weights' and the per-row work) and logs the times, drops those `keep_fastest` does
        not keep from `graphs` and returns the sizes kept."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        replay_ms = {}
        for rows, graph in graphs.items():
            if mixed:
                cu = mixed_cu_seqlens(0, [rows])
                self.cu_seqlens.copy_(torch.tensor(cu, dtype=torch.int32))
            graph.replay()
            start.record()
            for _ in range(3):
                graph.replay()
            end.record()
            end.synchronize()
            replay_ms[rows] = start.elapsed_time(end) / 3
        rows = sorted(replay_ms)
        if not rows:
            return []
        if self.agree is not None:  # every rank's slowest: all drop the same buckets
            slowest = self.agree([replay_ms[r] for r in rows], "max")
            replay_ms = dict(zip(rows, slowest, strict=True))
        kept = keep_fastest(replay_ms)
        dropped = [r for r in rows if r not in kept]
        logger.info(
            "CUDA graphs: %s buckets %s dropped (a larger bucket replays faster); replays: %s",
            "mixed" if mixed else "decode", dropped or "none",
            ", ".join(f"{r}: {replay_ms[r]:.2f} ms" for r in rows),
        )  # fmt: skip
        for r in dropped:
            del graphs[r]
        return kept

    def _each_size(self, step: Callable[[int, bool], None]) -> None:
        """step(rows, mixed) for every mixed graph (one prompt of all rows), then every decode
        graph, each largest first."""
        for rows in reversed(self.mixed_sizes):
            cu = mixed_cu_seqlens(0, [rows])
            self.cu_seqlens.copy_(torch.tensor(cu, dtype=torch.int32))
            step(rows, True)
        self.context_lens.fill_(1)  # decode warm-up reads block 0 only; never written (slot -1)
        for rows in reversed(self.decode_sizes):
            step(rows, False)
        self.context_lens.zero_()

    def _warm_up(self, rows: int, mixed: bool) -> None:
        """The step run eagerly twice: Triton compiles, cuBLAS picks its algorithms."""
        meta = self._meta(rows, mixed)
        ids, pos = self.input_ids[:rows], self.positions[:rows]
        for _ in range(2):
            meta.make_decode_work()
            self.model(ids, pos, meta)
        torch.cuda.synchronize()

    def _capture(self, rows: int, mixed: bool) -> None:
        """The step's graph, into the shared pool (graph capture first frees the warm-ups'
        cached blocks)."""
        meta = self._meta(rows, mixed)
        ids, pos = self.input_ids[:rows], self.positions[:rows]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            meta.make_decode_work()  # each replay's work list, from its context lengths
            self.hidden[:rows].copy_(self.model(ids, pos, meta))
        if self.pool is None:
            self.pool = graph.pool()
        (self.mixed_graphs if mixed else self.decode_graphs)[rows] = graph

    def can_run(self, meta: AttentionMetadata, num_rows: int) -> bool:
        """Whether a step's metadata (from the model runner) has a graph."""
        width = self.block_tables.shape[1]
        tables = meta.decode_block_tables
        if tables is not None and tables.shape[1] > width:
            return False
        if not meta.prefills:
            return 0 < num_rows <= self.max_batch
        if any(c.block_table.shape[0] > width for c in meta.prefills):
            return False
        return fits_mixed_graph(num_rows, [c.mask is None for c in meta.prefills], self.max_tokens)

    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """A step that `can_run`: [N] input ids and positions (decode rows first) -> [N, hidden]."""
        n, n_dec = input_ids.shape[0], meta.num_decode_tokens
        continued = [c for c in meta.prefills if c.mask is not None]
        if meta.prefills:
            rows = next(s for s in self.mixed_sizes if s >= n)
            new = [c.num_query_tokens for c in meta.prefills if c.mask is None]
            cu = mixed_cu_seqlens(n - sum(new), new)  # new prompts are the last rows
            self.cu_seqlens.copy_(to_device(cu, torch.int32, self.cu_seqlens.device))
            graph = self.mixed_graphs[rows]
        else:
            rows = next(s for s in self.decode_sizes if s >= n)
            graph = self.decode_graphs[rows]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:rows].fill_(-1)
        self.context_lens[:rows].zero_()
        if n_dec:
            tables = meta.decode_block_tables
            self.block_tables[:n_dec, : tables.shape[1]].copy_(tables)
            self.context_lens[:n_dec].copy_(meta.decode_context_lens)
        for c in continued:  # row i: its request's table, context + i + 1 keys
            start, m, nb = c.query_start, c.num_query_tokens, c.block_table.shape[0]
            self.block_tables[start : start + m, :nb].copy_(c.block_table.expand(m, nb))
            first = c.num_context_tokens + 1
            lens = torch.arange(first, first + m, dtype=torch.int32, device=self.input_ids.device)
            self.context_lens[start : start + m].copy_(lens)
        graph.replay()
        return self.hidden[:n]
