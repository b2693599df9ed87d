"""report/profile_step's prefill loop, on the CPU engine with a tiny KV pool."""

from __future__ import annotations

import torch

from harness.engine.llm_engine import EngineArgs, LLMEngine
from harness.engine.model.llama import LlamaConfig
from harness.engine.request import SamplingParams
from harness.report.profile_step import prefill_what_fits


def _engine(num_kv_blocks: int) -> LLMEngine:
    config = LlamaConfig(64, 32, 48, 2, 4, 2, max_position_embeddings=256)
    args = EngineArgs(model_config=config, weights="dummy", num_kv_blocks=num_kv_blocks,
                      max_num_seqs=8, cpu_kv_commit_gib=0)  # fmt: skip
    engine = LLMEngine.from_args(args)
    sp = SamplingParams(max_new_tokens=100, min_new_tokens=100, ignore_eos=True)
    for i in range(6):
        engine.add_request(i, torch.randint(3, 64, (40,)).tolist(), sp)
    return engine


def test_stops_with_the_batch_that_fits_the_kv_cache() -> None:
    engine = _engine(num_kv_blocks=10)  # 160 tokens: three 40-token prompts (3 blocks each)
    prefill_what_fits(engine)
    assert len(engine.scheduler.running) == 3 and engine.scheduler.num_waiting == 3
    # the step that showed no one else fits was one decode step; the run stopped there
    assert [r.num_output_tokens for r in engine.scheduler.running] == [2, 2, 2]


def test_prefills_every_prompt_when_all_fit() -> None:
    engine = _engine(num_kv_blocks=40)
    prefill_what_fits(engine)
    assert len(engine.scheduler.running) == 6 and engine.scheduler.num_waiting == 0
