"""The engine on CUDA gives the CPU reference's greedy tokens (tiny random Llama, fp32).

Skipped without CUDA. Issue 6 adds kernel-vs-reference tests (paged attention, FP8 GEMM) here.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM

from harness.engine.llm_engine import EngineArgs, LLMEngine
from harness.engine.request import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = HFLlamaConfig(
        vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.2,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny")
    HFLlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("model_opt", ["Dense", "FP8", "Sparse"])  # CUDA Sparse: compressed
def test_cuda_matches_cpu_reference(tiny_dir, model_opt):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 160, (int(n),), generator=g).tolist() for n in (1, 5, 17, 30, 9)]
    sp = SamplingParams(max_new_tokens=12)
    outs = {}
    for device in ("cpu", "cuda"):
        args = EngineArgs(
            model_path=tiny_dir, device=device, model_opt=model_opt, num_kv_blocks=20,
            block_size=4, max_num_batched_tokens=16,
        )  # fmt: skip
        outs[device] = LLMEngine.from_args(args).generate(prompts, sp)
    assert outs["cuda"] == outs["cpu"]
