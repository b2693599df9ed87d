"""Greedy outputs of the native engine equal HF LlamaForCausalLM's, token for token (fp32).

Tiny random Llama configs are built here; settings vary batch composition, prefill chunk size,
block size and KV pool size (down to pools where preemption must happen).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM

from harness.engine.kernels import cpu_attention
from harness.engine.llm_engine import EngineArgs, LLMEngine
from harness.engine.request import SamplingParams

VOCAB = 160
MAX_NEW = 12


def tiny_hf_model(**overrides) -> HFLlamaForCausalLM:
    torch.manual_seed(0)
    config = HFLlamaConfig(
        **{
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "initializer_range": 0.2,  # spread logits: no near-ties for argmax to flip on
            **overrides,
        }
    )
    return HFLlamaForCausalLM(config).eval()


def make_prompts(n: int, max_len: int = 30, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_len, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lens]


def hf_greedy(model: HFLlamaForCausalLM, prompt: list[int], sp: SamplingParams) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=sp.max_new_tokens,
        min_new_tokens=sp.min_new_tokens,
        do_sample=False,
        eos_token_id=list(sp.eos_token_ids) or None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


class CachedHF:
    """HF greedy references, computed once per (prompt, sampling) across the parametrized tests."""

    def __init__(self, model: HFLlamaForCausalLM) -> None:
        self.model = model
        self._cache: dict[tuple, list[int]] = {}

    def __call__(self, prompt: list[int], sp: SamplingParams) -> list[int]:
        key = (tuple(prompt), sp)
        if key not in self._cache:
            self._cache[key] = hf_greedy(self.model, prompt, sp)
        return self._cache[key]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> tuple[str, CachedHF]:
    model = tiny_hf_model()
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return str(path), CachedHF(model)


def engine_for(path: str, **overrides) -> LLMEngine:
    args = {"model_path": path, "num_kv_blocks": 256, "block_size": 4, **overrides}
    return LLMEngine.from_args(EngineArgs(**args))


SETTINGS = {
    "one_shot_prefill": {"max_num_batched_tokens": 512},
    "chunk_7_block_4": {"max_num_batched_tokens": 7},
    "chunk_16_block_16": {"max_num_batched_tokens": 16, "block_size": 16},
    "block_1": {"block_size": 1, "num_kv_blocks": 2048},
    "two_seqs_at_a_time": {"max_num_seqs": 2, "max_num_batched_tokens": 33},
    "longest_first": {"admission": "longest_first", "max_num_batched_tokens": 40},
    "tiny_pool_preempts": {"num_kv_blocks": 12, "block_size": 4, "max_num_batched_tokens": 24},
    "tiny_pool_block_2": {"num_kv_blocks": 22, "block_size": 2, "max_num_batched_tokens": 9},
}


@pytest.mark.parametrize("gemm", ["onednn", "mkl"])
@pytest.mark.parametrize("kernels", [True, False], ids=["c_kernels", "torch_ops"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_matches_hf(tiny_dir, setting, kernels, gemm):
    """kernels: the C attention and the C norm / RoPE / SwiGLU, or torch ops for all."""
    path, hf = tiny_dir
    prompts = make_prompts(10)
    sp = SamplingParams(max_new_tokens=MAX_NEW, eos_token_ids=(2,))
    engine = engine_for(
        path, cpu_attention_kernel=kernels, fused_kernels=kernels, cpu_gemm=gemm,
        **SETTINGS[setting],
    )  # fmt: skip
    uses_kernels = kernels and cpu_attention.is_available(torch.float32, 16)
    assert engine.model_runner.use_cpu_kernels == uses_kernels
    norm = engine.model_runner.model.model.norm
    assert norm.kernels == ("c" if uses_kernels else "torch")
    got = engine.generate(prompts, sp)
    want = [hf(p, sp) for p in prompts]
    assert got == want
    if setting.startswith("tiny_pool"):
        assert engine.scheduler.num_preemptions > 0


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_async_scheduling_matches_hf(tiny_dir, setting):
    """Each step queued before the previous step's tokens are applied: every decode input is
    read from the previous step's sampled tokens (a wrong one changes the continuation)."""
    path, hf = tiny_dir
    prompts = make_prompts(10)
    sp = SamplingParams(max_new_tokens=MAX_NEW, eos_token_ids=(2,))
    engine = engine_for(path, async_scheduling=True, **SETTINGS[setting])
    assert engine.generate(prompts, sp) == [hf(p, sp) for p in prompts]
    assert not engine.has_unfinished() and engine.scheduler.block_manager.num_used_blocks == 0
    if setting.startswith("tiny_pool"):
        assert engine.scheduler.num_preemptions > 0


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_eos_min_new_tokens_and_staggered_arrivals_match_hf(tiny_dir, async_scheduling):
    path, hf = tiny_dir
    prompts = make_prompts(6, seed=3)
    free_run = [hf(p, SamplingParams(max_new_tokens=MAX_NEW)) for p in prompts]
    eos = free_run[0][2]  # a token some greedy continuation really produces
    params = [
        SamplingParams(max_new_tokens=MAX_NEW, min_new_tokens=m, eos_token_ids=(eos,))
        for m in (1, 4, 1, 1, 6, 1)
    ]
    engine = engine_for(
        path, max_num_batched_tokens=10, num_kv_blocks=16, async_scheduling=async_scheduling
    )
    outputs: dict[int, list[int]] = {}
    firsts: dict[int, int] = {}
    for i, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(i, prompt, sp)  # one new arrival per step, mid-decode
        for ev in engine.step():
            _record(ev, outputs, firsts)
    while engine.has_unfinished():
        for ev in engine.step():
            _record(ev, outputs, firsts)
    want = [hf(p, sp) for p, sp in zip(prompts, params, strict=True)]
    assert [outputs[i] for i in range(6)] == want
    assert any(o[-1] == eos and len(o) < MAX_NEW for o in want)
    for i, out in outputs.items():
        assert firsts[i] == out[0] and out.count(eos) <= 1


def _record(ev, outputs, firsts):
    if ev.is_first_token:
        assert ev.request_id not in firsts, "first token emitted twice"
        firsts[ev.request_id] = ev.new_token_ids[0]
    if ev.is_finished:
        outputs[ev.request_id] = list(ev.output_token_ids)


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": True},
        {"num_key_value_heads": 4},  # MHA
        {"num_key_value_heads": 1},  # MQA
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },  # fmt: skip
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}},
    ],
    ids=["tied", "mha", "mqa", "llama3_rope", "theta_1000"],
)
def test_architecture_variants_match_hf(tmp_path, overrides):
    hf = tiny_hf_model(**overrides)
    hf.save_pretrained(tmp_path)
    prompts = make_prompts(4, max_len=40, seed=5)
    sp = SamplingParams(max_new_tokens=MAX_NEW)
    got = engine_for(str(tmp_path), max_num_batched_tokens=13).generate(prompts, sp)
    assert got == [hf_greedy(hf, p, sp) for p in prompts]
