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


@pytest.mark.parametrize(
    "model_opt,dense_layers",  # CUDA Sparse: compressed; "-1": the last layer kept dense
    [("Dense", ""), ("FP8", ""), ("Sparse", ""), ("FP8", "-1"), ("Sparse", "0")],
)
def test_cuda_matches_cpu_reference(tiny_dir, model_opt, dense_layers):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 160, (int(n),), generator=g).tolist() for n in (1, 5, 17, 30, 9)]
    sp = SamplingParams(max_new_tokens=12)
    outs = {}
    for device in ("cpu", "cuda"):
        args = EngineArgs(
            model_path=tiny_dir, device=device, model_opt=model_opt, num_kv_blocks=20,
            block_size=4, max_num_batched_tokens=16, fp8_dense_layers=dense_layers,
        )  # fmt: skip
        outs[device] = LLMEngine.from_args(args).generate(prompts, sp)
    assert outs["cuda"] == outs["cpu"]


def test_the_embedding_in_host_memory_gives_the_same_tokens(tiny_dir):
    """embedding_on_host: the GPU reads the table from pinned host memory, in eager steps and
    in CUDA graphs (decode-only; mixed where a step fits one), and the tokens stay those of the
    table on the GPU."""
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 160, (int(n),), generator=g).tolist() for n in (1, 5, 17, 30, 9)]
    sp = SamplingParams(max_new_tokens=12)
    outs = {}
    for on_host in (False, True):
        args = EngineArgs(
            model_path=tiny_dir, device="cuda", dtype="bfloat16", num_kv_blocks=40, block_size=4,
            max_num_batched_tokens=32, use_cuda_graph=True, cuda_graph_max_tokens=32,
            embedding_on_host=on_host,
        )  # fmt: skip
        engine = LLMEngine.from_args(args)
        weight = engine.model_runner.model.model.embed_tokens.weight
        assert (weight.device.type, weight.is_pinned()) == (("cpu", True) if on_host else
                                                            ("cuda", False))  # fmt: skip
        outs[on_host] = engine.generate(prompts, sp)
        assert engine.model_runner.graph_replays[0] > 0  # decode-only steps as graphs
    assert outs[True] == outs[False]


def test_sparse_bf16_on_cuda_stores_compressed_weights_and_generates(tiny_dir):
    from harness.engine.model.llama import Linear

    args = EngineArgs(
        model_path=tiny_dir, device="cuda", dtype="bfloat16", model_opt="Sparse",
        num_kv_blocks=20, block_size=4, max_num_batched_tokens=16,
    )  # fmt: skip
    engine = LLMEngine.from_args(args)
    model = engine.model_runner.model
    linears = [m for m in model.modules() if isinstance(m, Linear) and m is not model.lm_head]
    assert linears and all(not hasattr(m, "weight") for m in linears)
    assert all(m.weight_values.numel() * 2 == m.out_features * m.in_features for m in linears)
    assert {m.triton_max_rows for m in linears} == {args.sparse_triton_max_rows}
    sp = SamplingParams(max_new_tokens=6, min_new_tokens=6, ignore_eos=True)
    outs = engine.generate([[5, 6, 7], list(range(3, 40))], sp)
    assert [len(o) for o in outs] == [6, 6]


def test_dense_bf16_runs_the_gemv_up_to_its_row_limit(tiny_dir):
    """dense_triton_max_rows reaches every bf16 linear, the head included; a step of up to that
    many rows runs the Triton GEMV (close to cuBLAS), a larger one cuBLAS itself."""
    import torch.nn.functional as F

    from harness.engine.model.llama import Linear

    args = EngineArgs(
        model_path=tiny_dir, device="cuda", dtype="bfloat16", num_kv_blocks=20, block_size=4,
        max_num_batched_tokens=16, dense_triton_max_rows=2,
    )  # fmt: skip
    engine = LLMEngine.from_args(args)
    model = engine.model_runner.model
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert model.lm_head in linears and {m.triton_max_rows for m in linears} == {2}
    head = model.lm_head
    for rows in (1, 2, 3):
        x = torch.randn(rows, head.in_features, device="cuda", dtype=torch.bfloat16)
        out, ref = head(x), F.linear(x, head.weight)
        if rows > 2:
            assert torch.equal(out, ref)  # cuBLAS itself
        else:
            torch.testing.assert_close(out.float(), ref.float(), rtol=2**-7, atol=2**-7)
    sp = SamplingParams(max_new_tokens=6, min_new_tokens=6, ignore_eos=True)
    outs = engine.generate([[5, 6, 7], list(range(3, 40))], sp)
    assert [len(o) for o in outs] == [6, 6]
