"""Mixed prefill+decode steps replayed as CUDA graphs give the eager step's hidden states."""

from __future__ import annotations

import pytest
import torch

from harness.engine.outputs import ScheduledRequest, SchedulerOutput

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

BLOCK = 16


def _runner(
    model_opt: str = "Dense", kv_cache_dtype: str = "auto", max_num_seqs: int = 8,
    decode_split_keys: int = 0,
):  # fmt: skip
    from harness.engine.llm_engine import EngineArgs, LLMEngine
    from harness.engine.model.llama import LlamaConfig

    config = LlamaConfig(512, 256, 512, 2, 4, 2, max_position_embeddings=512)  # head_dim 64
    args = EngineArgs(
        model_config=config, weights="dummy", model_opt=model_opt, dtype="bfloat16",
        device="cuda", kv_cache_dtype=kv_cache_dtype, num_kv_blocks=128, block_size=BLOCK,
        max_num_seqs=max_num_seqs, max_num_batched_tokens=160, use_cuda_graph=True,
        cuda_graph_max_tokens=160, decode_split_keys=decode_split_keys,
    )  # fmt: skip
    runner = LLMEngine.from_args(args).model_runner
    torch.manual_seed(0)
    for k, v in runner.kv_caches:  # decodes attend to whatever the cache holds
        k.copy_(torch.randn(k.shape, device="cuda").to(k.dtype))
        v.copy_(torch.randn(v.shape, device="cuda").to(v.dtype))
    return runner


def _step(decode_contexts: list[int], prompt_lens: list[int], cached: int = 0) -> SchedulerOutput:
    """Decodes at the given context lengths, then prompts (the first after `cached` tokens)."""
    g = torch.Generator().manual_seed(len(decode_contexts) + sum(prompt_lens))
    prompt_starts = [cached] + [0] * (len(prompt_lens) - 1) if prompt_lens else []
    starts = [ctx - 1 for ctx in decode_contexts] + prompt_starts
    sizes = [1] * len(decode_contexts) + prompt_lens  # tokens fed this step
    scheduled, next_block = [], 0
    for i, (start, n) in enumerate(zip(starts, sizes, strict=True)):
        num_blocks = -(-(start + n) // BLOCK)
        blocks = list(range(next_block, next_block + num_blocks))
        next_block += num_blocks
        ids = torch.randint(3, 512, (n,), generator=g).tolist()
        scheduled.append(ScheduledRequest(i, ids, start, blocks, True, ()))
    return SchedulerOutput(scheduled, [], sum(s.num_tokens for s in scheduled))


@pytest.mark.parametrize("model_opt,kv", [("Dense", "auto"), ("Dense", "fp8"), ("FP8", "fp8")])
@pytest.mark.parametrize(
    "decodes,prompts,cached",
    [([20, 35, 7], [5, 17], 0), ([], [30], 0), ([3, 64, 15, 1, 9], [2, 3, 4, 50], 0),
     ([40, 2], [100], 0), ([3, 9], [4, 5, 6, 7, 8, 9, 10, 11], 0),  # MAX_PROMPTS new prompts
     ([20, 35, 7], [8, 17], 16), ([4], [40], 33), ([], [24], 70)],  # first prompt continued
)  # fmt: skip
def test_mixed_graph_matches_eager_step(model_opt, kv, decodes, prompts, cached):
    """Eager, a continued chunk attends by gather + masked SDPA; in the graph its rows go
    through the paged decode kernel, each with its own context."""
    runner = _runner(model_opt, kv)
    batch = runner._prepare(_step(decodes, prompts, cached))
    n = batch.input_ids.shape[0]
    assert runner.graphs.can_run(batch.meta, n)
    with torch.inference_mode():
        eager = runner.model(batch.input_ids, batch.positions, batch.meta).float()
        graph = runner.graphs.run(batch.input_ids, batch.positions, batch.meta).float()
    assert graph.shape == eager.shape == (n, 256)
    assert torch.isfinite(graph).all()
    # per row (decode rows and prompt rows alike): bf16 rounding only; a row that took the
    # other kernel's result would be off by about 100%. A continued chunk's rows meet two
    # attention kernels (paged decode against SDPA, equal to bf16 rounding); with FP8 weights
    # the next layer quantizes each activation row to e4m3 (3 mantissa bits), which turns that
    # rounding into up to 0.036 / 0.057 (H100, twenty-first session): bound 0.1 there. The
    # graph's padded rows (its bucket is chosen by timing) may also take other GEMM kernels
    # than the eager step: [40, 2] + [100] with FP8 reached 0.052 in one of four runs (H100).
    bound = 0.1 if model_opt == "FP8" else 0.03
    row_error = (graph - eager).norm(dim=1) / eager.norm(dim=1)
    assert row_error.max() < bound, row_error


def test_steps_without_a_mixed_graph_run_eagerly():
    runner = _runner()
    too_many = runner._prepare(_step([4], list(range(2, 11))))  # 9 prompts > MAX_PROMPTS
    too_long = runner._prepare(_step([4], [150, 10]))  # 161 rows > 160
    for batch in (too_many, too_long):
        assert not runner.graphs.can_run(batch.meta, batch.input_ids.shape[0])
    continued = runner._prepare(_step([4], [8] + list(range(2, 10)), cached=16))  # 8 new
    assert runner.graphs.can_run(continued.meta, continued.input_ids.shape[0])


def test_the_runner_counts_the_steps_it_replays():
    runner = _runner()
    runner.launch(_step([20, 35, 7], [5, 17]))  # a mixed graph
    runner.launch(_step([4], list(range(2, 11))))  # 9 prompts: eager
    runner.launch(_step([9, 12], []))  # a decode graph
    torch.cuda.synchronize()
    assert runner.graph_replays == [1, 1]  # [decode-only, with prompt tokens]


def test_graph_capture_out_of_memory_names_the_knobs(monkeypatch):
    from harness.engine.cuda_graph import StepGraphs
    from harness.engine.kv_plan import KVCacheCapacityError

    def no_memory(self) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore")

    monkeypatch.setattr(StepGraphs, "capture", no_memory)
    with pytest.raises(
        KVCacheCapacityError,
        match=r"gpu_memory_utilization.*cuda_graph_max_tokens.*Tried to allocate 2\.00 GiB\.$",
    ):
        _runner()


def test_the_largest_step_runs_once_before_any_query(caplog):
    """build_runner runs a step of max_num_batched_tokens prompt tokens eagerly, logs its
    activation peak and leaves no sampled tokens behind; graphs stay in use."""
    with caplog.at_level("INFO", logger="harness.engine.model_runner"):
        runner = _runner()
    assert "warm-up: a step of 160 prompt tokens peaked at" in caplog.text
    assert runner.graphs is not None and runner._last_rows == {} and runner._last_tokens is None
    assert runner.graph_replays == [0, 0]  # the warm-up step ran eagerly
    # the least free memory since the capture began: recorded, and never above the capture's
    assert 0 < runner.lowest_free_gpu_bytes() <= runner.graphs.lowest_free
    assert runner.graphs.lowest_free <= torch.cuda.mem_get_info()[1]
    assert 0 < runner.graphs.pool_bytes <= torch.cuda.memory_reserved()  # the graphs' own pool


def test_the_pool_trace_accounts_for_the_whole_pool(monkeypatch, caplog):
    """HARNESS_GRAPH_POOL_TRACE=1: the capture logs the pool's cudaMallocs by caller; on
    torch's real snapshot format they add up to the pool's bytes."""
    from harness.engine import pool_trace

    found: list[list[tuple[str, int, int]]] = []
    real = pool_trace.pool_mallocs

    def keep(snapshot, pool, device):  # noqa: ANN001, ANN202
        found.append(real(snapshot, pool, device))
        return found[-1]

    monkeypatch.setenv(pool_trace.ENV, "1")
    monkeypatch.setattr(pool_trace, "pool_mallocs", keep)
    with caplog.at_level("INFO", logger="harness.engine.pool_trace"):
        runner = _runner()
    assert "CUDA graphs' pool, HARNESS_GRAPH_POOL_TRACE:" in caplog.text
    assert len(found) == 1 and found[0]
    assert sum(b for _, _, b in found[0]) == runner.graphs.pool_bytes
    assert any(".py:" in caller for caller, _, _ in found[0])


def test_a_largest_step_out_of_memory_names_the_knobs(monkeypatch):
    from harness.engine.kv_plan import KVCacheCapacityError
    from harness.engine.model_runner import ModelRunner

    def no_memory(self, sched, eager: bool = False) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(ModelRunner, "launch", no_memory)
    with pytest.raises(
        KVCacheCapacityError, match="max_num_batched_tokens=160.*gpu_memory_utilization"
    ):
        _runner()


@pytest.mark.parametrize("split_keys", [0, 64])
def test_decode_steps_pad_to_the_buckets_kept(split_keys: int):
    """Decode graphs go up to the next power of two (6 sequences: 8 rows), are timed, and some
    may go (fastest_buckets); a batch then runs the next kept one, padded: same hidden states
    as the eager step, with the paged decode in equal parts or (decode_split_keys) in splits
    of 64 keys, 8 of them in the graph for its 512-key maximum."""
    from harness.engine.cuda_graph import decode_buckets

    runner = _runner(max_num_seqs=6, decode_split_keys=split_keys)
    graphs = runner.graphs
    assert set(graphs.decode_sizes) <= set(decode_buckets(8)) and 8 in graphs.decode_sizes
    graphs.decode_sizes = [8]  # as if every smaller bucket had been slower
    if split_keys:
        assert (graphs._meta(8, False).decode_num_splits, graphs.split_keys) == (8, 64)
    for n in (1, 3, 6):
        batch = runner._prepare(_step([5 + 40 * i for i in range(n)], []))
        assert batch.meta.decode_split_keys == split_keys
        with torch.inference_mode():
            eager = runner.model(batch.input_ids, batch.positions, batch.meta).float()
            graph = graphs.run(batch.input_ids, batch.positions, batch.meta).float()
        row_error = (graph - eager).norm(dim=1) / eager.norm(dim=1)
        assert graph.shape == (n, 256) and row_error.max() < 0.03, (n, row_error)


def test_mixed_steps_pad_to_the_buckets_kept():
    """Mixed graphs are timed too and a bucket a larger one beats goes (the largest stays); a
    mixed step then runs the next kept graph, its padding rows in no flash sequence: same
    hidden states as the eager step."""
    from harness.engine.cuda_graph import mixed_buckets

    runner = _runner()
    graphs = runner.graphs
    assert set(graphs.mixed_sizes) <= set(mixed_buckets(160)) and graphs.mixed_sizes[-1] == 160
    assert sorted(graphs.mixed_graphs) == graphs.mixed_sizes
    graphs.mixed_sizes = [160]  # as if every smaller bucket had been slower
    for decodes, prompts in (([20, 35, 7], [5, 17]), ([], [30]), ([40, 2], [100])):
        batch = runner._prepare(_step(decodes, prompts))
        with torch.inference_mode():
            eager = runner.model(batch.input_ids, batch.positions, batch.meta).float()
            graph = graphs.run(batch.input_ids, batch.positions, batch.meta).float()
        row_error = (graph - eager).norm(dim=1) / eager.norm(dim=1)
        assert graph.shape == eager.shape and row_error.max() < 0.03, (decodes, row_error)
