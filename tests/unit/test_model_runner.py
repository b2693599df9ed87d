"""Model-runner metadata: which prefill chunks share one varlen attention call (CUDA path)."""

from __future__ import annotations

import dataclasses

import torch

from harness.engine.model.attention import PrefillChunk
from harness.engine.model_runner import fresh_prefills


def _chunk(start: int, n: int, context: int = 0) -> PrefillChunk:
    mask = torch.ones(n, context + n, dtype=torch.bool) if context else None
    return PrefillChunk(start, n, context, torch.zeros(1, dtype=torch.int64), mask)


def test_fresh_prefills_packs_the_new_prompts_after_a_continued_chunk():
    chunks = [_chunk(3, 10, context=16), _chunk(13, 5), _chunk(18, 1), _chunk(19, 7)]
    fresh = fresh_prefills(chunks, torch.device("cpu"))
    assert (fresh.row_start, fresh.row_end, fresh.max_len) == (13, 26, 7)
    assert fresh.cu_seqlens.tolist() == [0, 5, 6, 13]
    assert fresh.cu_seqlens.dtype == torch.int32


def test_fresh_prefills_none_without_fresh_chunks():
    assert fresh_prefills([], torch.device("cpu")) is None
    assert fresh_prefills([_chunk(0, 4, context=8)], torch.device("cpu")) is None


def test_cpu_pool_commits_its_first_blocks_at_start():
    """cpu_kv_commit_gib: the lowest block ids (the block manager's first picks) are written,
    zeroed and marked so, the rest left uncommitted; 0 writes none."""
    from harness.engine.llm_engine import EngineArgs, LLMEngine
    from harness.engine.model.llama import LlamaConfig

    # a block: 2 layers x (K + V) x 2 KV heads x 16 tokens x 8 dims x 4 B = 4 KiB
    config = LlamaConfig(64, 32, 48, 2, 4, 2, max_position_embeddings=64)

    def engine(gib: float) -> LLMEngine:
        args = EngineArgs(model_config=config, weights="dummy", num_kv_blocks=40,
                          cpu_kv_commit_gib=gib, max_num_seqs=2)  # fmt: skip
        return LLMEngine.from_args(args)

    runner = engine(6.5 * 4096 / 2**30).model_runner
    assert list(runner._is_block_zeroed) == [1] * 6 + [0] * 34
    k, v = runner.kv_caches[-1]
    assert not k[:, :6].any() and not v[:, :6].any()
    assert engine(4095 / 2**30).model_runner._is_block_zeroed == bytearray(40)
    assert engine(0).model_runner._is_block_zeroed == bytearray(40)
    assert engine(1.0).model_runner._is_block_zeroed == bytearray([1] * 40)


def test_the_kv_pool_is_one_allocation_of_the_planned_bytes():
    """Every layer's K and V are views of one tensor (the CUDA allocator rounds each allocation
    up to 2 MiB: one a layer's K or V wasted up to 2 MiB each)."""
    from harness.engine.kv_plan import kv_bytes_per_block
    from harness.engine.llm_engine import EngineArgs, LLMEngine
    from harness.engine.model.llama import LlamaConfig

    config = LlamaConfig(64, 32, 48, 3, 4, 2, max_position_embeddings=64)
    args = EngineArgs(model_config=config, weights="dummy", num_kv_blocks=10, max_num_seqs=2)
    runner = LLMEngine.from_args(args).model_runner
    pool = runner.kv_pool
    assert pool.untyped_storage().nbytes() == 10 * kv_bytes_per_block(config, 16, pool.dtype)
    views = [t for kv in runner.kv_caches for t in kv]
    assert len(views) == 6 and all(t.is_contiguous() for t in views)
    assert all(t.untyped_storage().data_ptr() == pool.data_ptr() for t in views)
    assert {t.data_ptr() for t in views} == {t.data_ptr() for t in pool.flatten(0, 1)}


def test_mixed_graph_buckets_and_sequence_bounds():
    from harness.engine.cuda_graph import MAX_PROMPTS, mixed_buckets, mixed_cu_seqlens

    sizes = mixed_buckets(1280)
    assert sizes[:3] == [32, 64, 96] and sizes[-3:] == [1024, 1152, 1280]
    gaps = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
    assert all(g <= max(32, a // 8) for g, a in zip(gaps, sizes, strict=False))  # <= 12.5%
    assert mixed_buckets(100) == [32, 64, 96, 100] and mixed_buckets(0) == []
    # decode rows [0, 3) are the first flash sequence, prompts follow, empty ones pad
    assert mixed_cu_seqlens(3, [5, 17]) == [0, 3, 8, 25] + [25] * (MAX_PROMPTS - 2)
    assert mixed_cu_seqlens(0, [30]) == [0, 0, 30] + [30] * (MAX_PROMPTS - 1)
    assert len(mixed_cu_seqlens(7, [1] * MAX_PROMPTS)) == MAX_PROMPTS + 2


def test_a_mixed_graph_takes_continued_chunks_before_at_most_eight_new_prompts():
    from harness.engine.cuda_graph import fits_mixed_graph

    assert fits_mixed_graph(100, [True] * 8, 128)  # eight new prompts
    assert not fits_mixed_graph(100, [True] * 9, 128)  # nine
    assert not fits_mixed_graph(129, [True], 128)  # more rows than the largest graph
    assert fits_mixed_graph(100, [False, False, True, True], 128)  # continued ones first
    assert fits_mixed_graph(100, [False], 128)
    assert not fits_mixed_graph(100, [True, False], 128)  # a continued chunk after a new one


def test_cuda_graph_sizes_follow_the_knobs_and_the_step_budget():
    from harness.engine.llm_engine import EngineArgs, cuda_graph_sizes

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    args = EngineArgs(use_cuda_graph=True, max_num_seqs=64, max_num_batched_tokens=1280,
                      cuda_graph_max_tokens=4096)  # fmt: skip
    assert cuda_graph_sizes(args, cuda) == (64, 1280)  # no step is larger than its budget
    assert cuda_graph_sizes(EngineArgs(use_cuda_graph=True, max_num_seqs=8), cuda) == (8, 0)
    # decode graphs beyond max_num_seqs, for batches to pad up to (never below it)
    for least, rows in ((128, 128), (32, 64)):
        padded = dataclasses.replace(args, cuda_graph_min_decode_rows=least)
        assert cuda_graph_sizes(padded, cuda) == (rows, 1280)
    assert cuda_graph_sizes(args, cpu) == (0, 0)
    no_graphs = EngineArgs(use_cuda_graph=False, cuda_graph_max_tokens=64)
    assert cuda_graph_sizes(no_graphs, cuda) == (0, 0)


def test_fastest_buckets_drops_a_bucket_that_a_larger_one_beats() -> None:
    from harness.engine.cuda_graph import graph_batch, keep_fastest

    assert graph_batch(160, True) == 256 and graph_batch(512, True) == 512
    assert graph_batch(160, False) == 160 and graph_batch(1, True) == 1

    # cuBLAS FP8 on the H100, one 70B layer (ms): 192 rows slower than 256
    replay = {64: 0.375, 128: 0.358, 160: 0.52, 192: 0.564, 224: 0.5, 256: 0.422, 512: 0.698}
    assert keep_fastest(replay) == [128, 256, 512]
    # within the margin the smaller bucket stays (less padding for the per-row work)
    assert keep_fastest({8: 1.0, 16: 0.99, 32: 2.0}) == [8, 16, 32]
    assert keep_fastest({1: 5.0}) == [1]


def test_decode_splits_fixed_size_cover_the_longest_context() -> None:
    """decode_split_keys 0: the batch's choice of equal parts; > 0: splits of that many keys
    (whole 64-key tiles), enough for the longest context, at most 32 of them."""
    from harness.engine.kernels.paged_attention import decode_splits

    assert decode_splits(40, 8, 4096, 132) == (2, 0)  # 4 programs an SM: 640 x 2 >= 528
    assert decode_splits(40, 8, 4096, 132, 256) == (16, 256)
    assert decode_splits(40, 8, 1000, 132, 300) == (4, 320)
    assert decode_splits(40, 8, 100_000, 132, 256) == (32, 3136)
    assert decode_splits(1, 8, 100, 132, 256) == (1, 256)


def test_split_work_lists_only_the_splits_that_hold_keys() -> None:
    """The fixed-split decode's work list (plain torch, so checked here): how many, then each
    split holding keys as row x splits + split, row by row; a row of context 0 has none."""
    from harness.engine.kernels.paged_attention import combine_heads, split_work, work_programs

    ctx = torch.tensor([300, 0, 1, 1024, 256, 257], dtype=torch.int32)
    work = split_work(ctx, 256, 4)
    assert work.shape == (6 * 4 + 2,) and work.dtype == torch.int32
    held = [0, 1] + [8] + [12, 13, 14, 15] + [16] + [20, 21]
    assert int(work[0]) == len(held) and work[1 : 1 + len(held)].tolist() == held
    assert int(split_work(torch.zeros(3, dtype=torch.int32), 256, 4)[0]) == 0
    assert work_programs(10, 8, 132) == 10  # one a split where they are few
    assert work_programs(5000, 8, 132) == 528  # 32 an SM over the KV heads
    # the combine: a power of two of a group's heads a program, up to 128 partials
    assert [combine_heads(8, 16), combine_heads(8, 32), combine_heads(5, 4)] == [8, 4, 1]


class _RecordingGraph:
    """Stands in for a captured CUDA graph: replay() keeps a copy of the static buffers."""

    def __init__(self, graphs) -> None:  # noqa: ANN001
        self.graphs, self.seen = graphs, None

    def replay(self) -> None:
        g = self.graphs
        self.seen = {name: getattr(g, name).clone() for name in (
            "input_ids", "positions", "slot_mapping", "block_tables", "context_lens", "cu_seqlens"
        )}  # fmt: skip


def test_a_mixed_step_fills_the_graph_buffers():
    """StepGraphs.run on the CPU with stand-in graphs: decodes, then a chunk continuing over 16
    cached tokens, then two new prompts, padded to the 16-row graph."""
    from harness.engine.cuda_graph import MAX_PROMPTS, StepGraphs
    from harness.engine.model.attention import AttentionMetadata, PrefillChunk

    graphs = object.__new__(StepGraphs)  # the buffers only (the constructor wants a GPU)
    rows, width = 32, 4
    graphs.input_ids = torch.zeros(rows, dtype=torch.int64)
    graphs.positions = torch.zeros(rows, dtype=torch.int64)
    graphs.slot_mapping = torch.full((rows,), -1, dtype=torch.int64)
    graphs.block_tables = torch.zeros(rows, width, dtype=torch.int64)
    graphs.context_lens = torch.full((rows,), 99, dtype=torch.int32)  # stale: must be cleared
    graphs.cu_seqlens = torch.zeros(MAX_PROMPTS + 2, dtype=torch.int32)
    graphs.hidden = torch.zeros(rows, 8)
    graphs.mixed_sizes, graphs.decode_sizes = [16, 32], [8]
    graphs.mixed_graphs = {r: _RecordingGraph(graphs) for r in (16, 32)}
    mask = torch.ones(4, 20, dtype=torch.bool)  # a continued chunk has a mask; new ones none
    meta = AttentionMetadata(
        slot_mapping=torch.arange(100, 111), num_decode_tokens=2,
        decode_block_tables=torch.tensor([[1, 0], [2, 3]]),
        decode_context_lens=torch.tensor([5, 20], dtype=torch.int32),
        prefills=[PrefillChunk(2, 4, 16, torch.tensor([7, 8]), mask),
                  PrefillChunk(6, 3, 0, torch.tensor([9]), None),
                  PrefillChunk(9, 2, 0, torch.tensor([10]), None)],
    )  # fmt: skip
    out = graphs.run(torch.arange(11), torch.arange(50, 61), meta)
    assert out.shape == (11, 8) and graphs.mixed_graphs[32].seen is None
    seen = graphs.mixed_graphs[16].seen
    assert seen["input_ids"][:11].tolist() == list(range(11))
    assert seen["slot_mapping"][:16].tolist() == list(range(100, 111)) + [-1] * 5
    # decode rows attend to their contexts; the continued chunk's row i to 16 + i + 1 keys
    # through its request's table; new prompts' and padded rows to none (flash only)
    assert seen["context_lens"][:16].tolist() == [5, 20, 17, 18, 19, 20] + [0] * 10
    assert seen["block_tables"][:6, :2].tolist() == [[1, 0], [2, 3]] + [[7, 8]] * 4
    # flash sequences: the decode and continued rows, then each new prompt, then empty ones
    assert seen["cu_seqlens"].tolist() == [0, 6, 9, 11] + [11] * (MAX_PROMPTS - 2)
