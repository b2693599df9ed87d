"""The native engine and HF transformers give the same greedy tokens on SmolLM2-135M (fp32).

Needs build/models/SmolLM2-135M-Instruct (python -m preprocess.smollm2_checkpoint); skipped
when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.engine.llm_engine import EngineArgs, LLMEngine
from harness.engine.request import SamplingParams

MODEL = Path("build/models/SmolLM2-135M-Instruct")
PROMPTS = [
    "Summarize: The quick brown fox jumps over the lazy dog because it was bored.",
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
    "List three prime numbers greater than ten.",
    "Explain what a KV cache is in a transformer, briefly.",
    "Translate to French: I like apples.",
]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (MODEL / "config.json").exists(), reason=f"{MODEL} not built"),
]


def test_smollm2_greedy_matches_hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert all(isinstance(t, int) for p in prompts for t in p)
    sp = SamplingParams(max_new_tokens=32, min_new_tokens=2, eos_token_ids=(2,))
    engine = LLMEngine.from_args(
        EngineArgs(model_path=str(MODEL), max_num_batched_tokens=64, max_model_len=512)
    )
    got = engine.generate(prompts, sp)

    hf = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    for prompt, out in zip(prompts, got, strict=True):
        with torch.inference_mode():
            ref = hf.generate(
                torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=2, do_sample=False,
                eos_token_id=2, pad_token_id=2,
            )[0, len(prompt) :].tolist()  # fmt: skip
        if 2 in ref:
            ref = ref[: ref.index(2) + 1]
        assert out == ref
