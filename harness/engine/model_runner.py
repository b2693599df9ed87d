"""Turns a SchedulerOutput into tensors, runs the model over the paged KV cache, samples.

Owns the KV-cache tensors (sized by kv_plan.py). Knows nothing of queues or stop rules.
`launch` queues a step on the device and `collect` waits for its tokens; on CUDA nothing in
between waits for the device, so the host can prepare the next step while this one runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from harness.engine import host_memory
from harness.engine.block_table import BlockTables
from harness.engine.kernels import cpu_attention
from harness.engine.kv_plan import (
    GIB,
    Agree,
    KVCacheCapacityError,
    KVCacheSpec,
    lowest_free_bytes,
    oom_detail,
)
from harness.engine.model.attention import (
    AttentionMetadata,
    DecodeGroup,
    FreshPrefills,
    PrefillChunk,
)
from harness.engine.model.llama import LlamaForCausalLM
from harness.engine.outputs import ModelRunnerOutput, ScheduledRequest, SchedulerOutput
from harness.engine.request import PENDING_TOKEN
from harness.engine.sampler import Sampler

logger = logging.getLogger(__name__)

# CPU decodes are grouped by context length so that padding to a group's longest context
# wastes at most this factor (plus a block): the gathered K/V and score matmuls shrink.
DECODE_GROUP_SLACK = 1.5


def to_device(values: list | np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list or array as a tensor on `device`. CUDA: copied from pinned memory without
    waiting: a copy from pageable memory waits for all queued work, i.e. for the step still
    running."""
    if device.type != "cuda":
        return torch.as_tensor(values, dtype=dtype, device=device)
    return torch.as_tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)


def fresh_prefills(chunks: list[PrefillChunk], device: torch.device) -> FreshPrefills | None:
    """The last run of consecutive chunks with no cached context (new prompts come after the
    continued ones), for one varlen attention call; None if there is none."""
    run: list[PrefillChunk] = []
    for c in chunks:
        fresh = c.mask is None
        if fresh and run and run[-1].query_start + run[-1].num_query_tokens == c.query_start:
            run.append(c)
        else:
            run = [c] if fresh else []
    if not run:
        return None
    cu = [0]
    for c in run:
        cu.append(cu[-1] + c.num_query_tokens)
    start = run[0].query_start
    return FreshPrefills(
        row_start=start,
        row_end=start + cu[-1],
        cu_seqlens=to_device(cu, torch.int32, device),
        max_len=max(c.num_query_tokens for c in run),
    )


@dataclass
class LaunchedStep:
    """A step queued on the device; its sampled tokens are read by ModelRunner.collect."""

    request_ids: list[int]  # [S] whose next token each row of `tokens` is
    tokens: torch.Tensor  # [S] int64 on the host (pinned on CUDA), valid once `done` fired
    done: torch.cuda.Event | None  # CUDA: recorded after the copy to `tokens`
    started: torch.cuda.Event | None = None  # CUDA: recorded before the forward pass


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, kv: KVCacheSpec, device: torch.device,
        kv_dtype: torch.dtype | None = None, cuda_graph_max_batch: int = 0,
        max_model_len: int = 0, cpu_attention_kernel: bool = True,
        cpu_kv_commit_gib: float = 0.0, cuda_graph_max_tokens: int = 0,
        cuda_graph_fastest_buckets: bool = False, agree: Agree | None = None,
        decode_split_keys: int = 0,
    ) -> None:  # fmt: skip
        """kv_dtype: None = the model dtype (torch.float8_e4m3fn: FP8 KV, CUDA only);
        cuda_graph_max_batch > 0 captures decode graphs up to that batch (CUDA only), and
        cuda_graph_max_tokens > 0 graphs of mixed steps up to that many tokens (cuda_graph.py);
        cuda_graph_fastest_buckets: decode graphs up to the next power of two, then drop the
        graphs that a larger one of their kind replays faster (agree: on every rank's slowest
        replay times);
        cpu_attention_kernel: fp32 CPU decodes use kernels/cpu_attention.py where it builds
        (False: the plain-torch gather + SDPA); cpu_kv_commit_gib: see _commit_kv;
        decode_split_keys: CUDA paged decode in splits of this many keys (0: equal parts)."""
        self.model = model
        self.kv = kv
        self.device = device
        self.decode_split_keys = decode_split_keys
        self.sampler = Sampler()
        # The last launched step's sampled tokens ([S] on the device) and each request's row:
        # a pending token in the next step (async scheduling) is read from there.
        self._last_tokens: torch.Tensor | None = None
        self._last_rows: dict[int, int] = {}
        cfg = model.config
        dtype = kv_dtype or model.model.embed_tokens.weight.dtype
        # Every layer's K and V in one tensor: the CUDA caching allocator rounds each allocation
        # of 10 MiB or more up to 2 MiB, so one tensor a layer's K or V wasted up to 2 MiB
        # each (a 70B's 160: 125 MiB at its H100 Offline's 5,198 blocks, 285 at 5,262).
        # torch.empty: pages are committed only when a block is first used (then zeroed).
        shape = (cfg.num_hidden_layers, 2, cfg.num_key_value_heads, kv.num_blocks,
                 kv.block_size, cfg.head_dim)  # fmt: skip
        self.kv_pool = torch.empty(shape, dtype=dtype, device=device)
        # per layer, (K, V) views of [Hkv, blocks, bs, D]
        self.kv_caches = [(layer[0], layer[1]) for layer in self.kv_pool]
        for attn, (k, v) in zip(model.kv_attention_modules(), self.kv_caches, strict=True):
            attn.k_cache, attn.v_cache = k, v
        self._is_block_zeroed = bytearray(kv.num_blocks)
        max_len = max_model_len or cfg.max_position_embeddings
        self.block_tables = BlockTables(-(-max_len // kv.block_size))
        self.is_cuda = device.type == "cuda"
        if not self.is_cuda:  # activations come back from the heap, not fresh pages
            host_memory.keep_freed_memory()
            self._commit_kv(cpu_kv_commit_gib)
        # CPU: decode attention by the C kernel, which reads the cached blocks in place
        self.use_cpu_kernels = (
            not self.is_cuda
            and cpu_attention_kernel
            and cpu_attention.is_available(dtype, cfg.head_dim)
        )
        for attn in model.kv_attention_modules():
            attn.use_cpu_kernels = self.use_cpu_kernels
        # The plain-torch CPU decode pads rows to a group's longest context and masks the
        # padding; every kernel bounds its reads by length instead.
        self.uses_decode_groups = not (self.is_cuda or self.use_cpu_kernels)
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if (
            self.is_cuda) else 0  # fmt: skip
        self.graphs = None
        self.graph_replays = [0, 0]  # steps replayed as graphs: [decode-only, with prompts]
        if self.is_cuda and cuda_graph_max_batch > 0:
            from harness.engine.cuda_graph import StepGraphs

            self.graphs = StepGraphs(
                model, cuda_graph_max_batch, cuda_graph_max_tokens, self.block_tables.width,
                kv.block_size, device, cuda_graph_fastest_buckets, agree, decode_split_keys,
            )  # fmt: skip
            try:
                self.graphs.capture()
            except torch.OutOfMemoryError as e:
                raise KVCacheCapacityError(
                    f"CUDA graph capture ran out of memory after the KV cache took "
                    f"{kv.gib:.2f} GiB: lower gpu_memory_utilization (or set num_kv_blocks), "
                    f"or capture smaller graphs: cuda_graph_max_tokens (now "
                    f"{cuda_graph_max_tokens}), max_num_seqs or cuda_graph_min_decode_rows "
                    f"(decode graphs up to {cuda_graph_max_batch} rows). {oom_detail(e)}"
                ) from e

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput, eager: bool = False) -> LaunchedStep:
        """Queue the step's forward pass and sampling; on CUDA this returns without waiting.
        eager: run the model even where a CUDA graph could replay the step."""
        batch = self._prepare(sched)
        meta = batch.meta
        started = done = None
        if self.is_cuda:  # GPU time from here to the sampled tokens (collect)
            started = torch.cuda.Event(enable_timing=True)
            started.record()
        graphs = None if eager else self.graphs
        if graphs is not None and graphs.can_run(meta, batch.input_ids.shape[0]):
            hidden = graphs.run(batch.input_ids, batch.positions, meta)
            self.graph_replays[bool(meta.prefills)] += 1
        else:  # a graph makes its own work list; an eager step makes it here, once
            meta.make_decode_work()
            hidden = self.model(batch.input_ids, batch.positions, meta)  # [N, hidden]
        logits = self.model.compute_logits(hidden[batch.logits_indices])  # [S, vocab] fp32
        tokens = self.sampler(logits, batch.suppress_rows, batch.suppress_cols)  # [S]
        self._last_tokens = tokens
        self._last_rows = {rid: i for i, rid in enumerate(batch.sampled_request_ids)}
        if self.is_cuda:
            host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            tokens = host.copy_(tokens, non_blocking=True)
            done = torch.cuda.Event(enable_timing=True)
            done.record()
        return LaunchedStep(batch.sampled_request_ids, tokens, done, started)

    def collect(self, step: LaunchedStep) -> ModelRunnerOutput:
        """Wait for a launched step's tokens (only for that step: later ones keep running)."""
        gpu_seconds = 0.0
        if step.done is not None:
            step.done.synchronize()
            gpu_seconds = step.started.elapsed_time(step.done) / 1e3
        tokens = step.tokens.tolist()
        return ModelRunnerOutput(dict(zip(step.request_ids, tokens, strict=True)), gpu_seconds)

    @torch.inference_mode()
    def warm_up(self, max_tokens: int) -> None:
        """CUDA: run the largest step the scheduler may send, max_tokens prompt tokens eagerly
        (prompts of at most max_model_len), once before any query: a step that does not fit
        the memory left after the KV cache and the graphs fails now, naming the knobs, not
        minutes into a run; logs the step's activation peak. It writes KV into the first
        blocks, which a request writes before it reads them."""
        bs = self.kv.block_size
        blocks = list(range(min(self.block_tables.width, self.kv.num_blocks)))
        per_prompt = len(blocks) * bs
        sizes = [min(per_prompt, max_tokens - i) for i in range(0, max_tokens, per_prompt)]
        sched = SchedulerOutput(
            [ScheduledRequest(-1 - i, [1] * n, 0, blocks, True, ()) for i, n in enumerate(sizes)],
            [], max_tokens,
        )  # fmt: skip
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        try:
            self.collect(self.launch(sched, eager=True))  # eager: it allocates activations
        except torch.OutOfMemoryError as e:
            raise KVCacheCapacityError(
                f"a step of max_num_batched_tokens={max_tokens} prompt tokens ran out of GPU "
                f"memory after the KV cache took {self.kv.gib:.2f} GiB: lower "
                f"gpu_memory_utilization (or set num_kv_blocks) or max_num_batched_tokens. "
                f"{oom_detail(e)}"
            ) from e
        finally:
            self._last_tokens, self._last_rows = None, {}
        peak = torch.cuda.max_memory_allocated(self.device) - before
        logger.info(
            "warm-up: a step of %d prompt tokens peaked at %.2f GiB of activations; %.2f GiB "
            "of GPU memory free after it", max_tokens, peak / GIB,
            torch.cuda.mem_get_info(self.device)[0] / GIB,
        )  # fmt: skip

    def lowest_free_gpu_bytes(self) -> int:
        """CUDA: the least free memory since the graphs' capture began (its low point, or the
        run's since warm_up, the lower): what the KV cache could have had besides."""
        low = lowest_free_bytes(self.device)
        return min(low, self.graphs.lowest_free) if self.graphs is not None else low

    # --- input preparation -------------------------------------------------------------

    def _prepare(self, sched: SchedulerOutput) -> _Batch:
        bs = self.kv.block_size
        decodes = sorted(
            (s for s in sched.scheduled if s.num_tokens == 1), key=lambda s: s.start_position
        )
        prefills = [s for s in sched.scheduled if s.num_tokens > 1]
        self._zero_new_blocks(sched.scheduled)

        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        pending_rows: list[int] = []  # decode rows whose input the previous step sampled
        for s in decodes:
            pos = s.start_position
            if s.token_ids[0] == PENDING_TOKEN:
                pending_rows.append(len(input_ids))
            input_ids.append(s.token_ids[0])
            positions.append(pos)
            slots.append(s.block_ids[pos // bs] * bs + pos % bs)
        chunks = []
        for s in prefills:
            start, n = s.start_position, s.num_tokens
            pos = range(start, start + n)
            input_ids += s.token_ids
            positions += pos
            slots += [s.block_ids[p // bs] * bs + p % bs for p in pos]
            chunks.append(self._prefill_chunk(s, len(input_ids) - n))

        ids = self._tensor(input_ids)
        if pending_rows:
            src = [self._last_rows[decodes[r].request_id] for r in pending_rows]
            ids[self._tensor(pending_rows)] = self._last_tokens[self._tensor(src)]
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots), num_decode_tokens=len(decodes), prefills=chunks
        )
        if self.is_cuda:
            meta.fresh_prefills = fresh_prefills(chunks, self.device)
        if decodes and self.uses_decode_groups:
            meta.decode_groups = self._decode_groups(decodes)
        elif decodes:
            ctx_lens = [s.start_position + 1 for s in decodes]
            meta.decode_block_tables = self._decode_tables(decodes)
            meta.decode_context_lens = to_device(
                ctx_lens, torch.int32 if self.is_cuda else torch.int64, self.device
            )  # [num_decodes]
            if self.is_cuda:
                from harness.engine.kernels.paged_attention import decode_splits

                meta.decode_num_splits, meta.decode_split_keys = decode_splits(
                    len(decodes), self.model.config.num_key_value_heads, max(ctx_lens),
                    self.num_sms, self.decode_split_keys,
                )  # fmt: skip

        logits_indices, sampled_ids, rows, cols = [], [], [], []
        row_end = 0
        for s in decodes + prefills:
            row_end += s.num_tokens
            if s.needs_sample:
                for token in s.suppress_token_ids:
                    rows.append(len(sampled_ids))
                    cols.append(token)
                logits_indices.append(row_end - 1)
                sampled_ids.append(s.request_id)
        return _Batch(
            input_ids=ids,
            positions=self._tensor(positions),
            meta=meta,
            logits_indices=self._tensor(logits_indices),
            sampled_request_ids=sampled_ids,
            suppress_rows=self._tensor(rows) if rows else None,
            suppress_cols=self._tensor(cols) if rows else None,
        )

    def _prefill_chunk(self, s: ScheduledRequest, query_start: int) -> PrefillChunk:
        ctx, n = s.start_position, s.num_tokens
        num_blocks = -(-(ctx + n) // self.kv.block_size)
        mask = None
        if ctx:  # query i (at position ctx + i) sees keys 0 .. ctx + i
            q_pos = torch.arange(ctx, ctx + n, device=self.device)
            mask = torch.arange(ctx + n, device=self.device)[None, :] <= q_pos[:, None]
        return PrefillChunk(
            query_start=query_start,
            num_query_tokens=n,
            num_context_tokens=ctx,
            block_table=self._tensor(s.block_ids[:num_blocks]),
            mask=mask,  # [n, ctx + n] bool
        )

    def _decode_groups(self, decodes: list[ScheduledRequest]) -> list[DecodeGroup]:
        """Split decodes (sorted by context length) into groups of bounded padding."""
        groups, start, limit = [], 0, 0.0
        for i, s in enumerate(decodes):
            if i > start and s.start_position + 1 > limit:
                groups.append(self._decode_group(decodes[start:i], start))
                start = i
            if i == start:
                limit = DECODE_GROUP_SLACK * (s.start_position + 1) + self.kv.block_size
        groups.append(self._decode_group(decodes[start:], start))
        return groups

    def _decode_group(self, decodes: list[ScheduledRequest], row_start: int) -> DecodeGroup:
        tables = self._decode_tables(decodes)  # [B, max_blocks]
        ctx_lens = self._tensor([s.start_position + 1 for s in decodes])
        key_pos = torch.arange(tables.shape[1] * self.kv.block_size, device=self.device)
        mask = key_pos[None, :] < ctx_lens[:, None]  # [B, T]: True for a real key
        return DecodeGroup(row_start, tables, mask.view(1, len(decodes), 1, -1))

    def _decode_tables(self, decodes: list[ScheduledRequest]) -> torch.Tensor:
        """[B, max_blocks] int64 block tables, padded with each row's own first block."""
        bs = self.kv.block_size
        rows = [(s.request_id, s.block_ids, s.start_position // bs + 1) for s in decodes]
        return self._tensor(self.block_tables.gather(rows, max(n for _, _, n in rows)))

    def _zero_new_blocks(self, scheduled: list[ScheduledRequest]) -> None:
        """Blocks written for the first time are zeroed: stale bytes could be NaN, and masked
        positions of the plain-torch decode still multiply into attention (0 * NaN = NaN)."""
        if not self.uses_decode_groups:  # kernels never read past a request's length
            return
        bs = self.kv.block_size
        new = []
        for s in scheduled:
            first, last = s.start_position // bs, (s.start_position + s.num_tokens - 1) // bs
            for b in s.block_ids[first : last + 1]:
                if not self._is_block_zeroed[b]:
                    self._is_block_zeroed[b] = 1
                    new.append(b)
        if new:
            self.kv_pool.index_fill_(3, self._tensor(new), 0)

    def _commit_kv(self, gib: float) -> None:
        """Write the pool's first blocks now (CPU). torch.empty leaves the pool's pages
        uncommitted, and a page's first write faults (each block of a head is one 4 KiB page
        for SmolLM2): a 100-sample query of the default took ~1.5-3 s of its ~30 s in these
        faults. The block manager hands out the lowest free ids first, so these blocks are the
        ones used; a pool larger than `gib` commits the rest on first use."""
        per_block = self.kv.bytes_per_block
        n = min(self.kv.num_blocks, int(gib * GIB) // per_block)
        if n <= 0:
            return
        start = time.perf_counter()
        self.kv_pool[:, :, :, :n].zero_()
        self._is_block_zeroed[:n] = bytes([1]) * n
        logger.info(
            "KV cache: first %d of %d blocks (%.2f GiB) committed at start in %.1f s",
            n, self.kv.num_blocks, n * per_block / GIB, time.perf_counter() - start,
        )  # fmt: skip

    def _tensor(self, values: list) -> torch.Tensor:
        return to_device(values, torch.int64, self.device)


@dataclass
class _Batch:
    input_ids: torch.Tensor  # [N] int64, decode rows first, then prefill chunks
    positions: torch.Tensor  # [N] int64
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [S] int64 rows whose next token is sampled
    sampled_request_ids: list[int]  # [S]
    suppress_rows: torch.Tensor | None  # [P] int64 (row, token) pairs masked before argmax
    suppress_cols: torch.Tensor | None  # [P] int64; None: nothing masked
