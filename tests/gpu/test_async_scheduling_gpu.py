"""Async scheduling on CUDA: same tokens as synchronous steps, and queuing a step never waits
for the device (else the host's work would not overlap the step still running)."""

from __future__ import annotations

import time

import pytest
import torch

from harness.engine.llm_engine import EngineArgs, LLMEngine
from harness.engine.model.llama import LlamaConfig
from harness.engine.request import PENDING_TOKEN, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CONFIG = LlamaConfig(512, 256, 512, 2, 4, 2, max_position_embeddings=512)  # head_dim 64


def _engine(async_scheduling: bool, graphs: bool, max_num_seqs: int = 8) -> LLMEngine:
    args = EngineArgs(
        model_config=CONFIG, weights="dummy", dtype="bfloat16", device="cuda",
        block_size=16, num_kv_blocks=128, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=160, use_cuda_graph=graphs,
        cuda_graph_max_tokens=160 if graphs else 0, async_scheduling=async_scheduling,
    )  # fmt: skip
    return LLMEngine.from_args(args)


def _prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 512, (int(k),), generator=g).tolist() for k in range(5, 5 + 9 * n, 9)]


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_async_steps_give_the_synchronous_tokens(graphs):
    """Every request fits at once (16 sequences, a roomy pool) and none stops early, so both
    modes run the same batches and bf16 GEMMs of the same shapes: the tokens must be equal.
    (Where requests wait for slots or get preempted, async frees them a step later, batches
    differ and bf16 near-ties may part; the CPU tests cover those paths in fp32.)"""
    sp = SamplingParams(max_new_tokens=40, min_new_tokens=40, ignore_eos=True, eos_token_ids=(2,))
    outs = []
    for async_scheduling in (False, True):
        engine = _engine(async_scheduling, graphs, max_num_seqs=16)
        outs.append(engine.generate(_prompts(10), sp))
    assert outs[0] == outs[1]
    assert all(len(o) == 40 for o in outs[1])


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_queuing_a_step_does_not_wait_for_the_device(graphs):
    """While the GPU sleeps ~0.5 s, launching a decode step (fed pending tokens, with suppressed
    EOS ids) must return at once and must not call a synchronizing CUDA API."""
    engine = _engine(True, graphs)
    sp = SamplingParams(max_new_tokens=100, min_new_tokens=50, eos_token_ids=(2, 7))
    for i, prompt in enumerate(_prompts(6)):
        engine.add_request(i, prompt, sp)
    for _ in range(3):  # prefill, then decodes: the next step's inputs are pending tokens
        engine.step()
    torch.cuda.synchronize()
    sched = engine.scheduler.schedule()
    assert sched.scheduled and all(s.token_ids == [PENDING_TOKEN] for s in sched.scheduled)
    torch.cuda._sleep(1_000_000_000)  # about 0.5 s of GPU time at ~2 GHz
    start = time.perf_counter()
    torch.cuda.set_sync_debug_mode("error")
    try:
        launched = engine.model_runner.launch(sched)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    queued_s = time.perf_counter() - start
    assert queued_s < 0.1, f"launch waited {queued_s:.3f} s for the device"
    assert not launched.done.query()  # still behind the sleep
    out = engine.model_runner.collect(launched)
    assert sorted(out.sampled_token_ids) == [s.request_id for s in sched.scheduled]
    # the step's GPU time starts at its own forward, not at the sleep queued before it
    assert 0 < out.gpu_seconds < 0.2, out.gpu_seconds
