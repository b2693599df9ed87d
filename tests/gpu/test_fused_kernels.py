"""Triton norm / RoPE / SwiGLU kernels vs their plain-torch references, on the shapes we run."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

DTYPES = [torch.bfloat16, torch.float32]
# (rows, hidden): decode batch 1, a ragged batch, a prefill step; hidden of SmolLM2 / 7B / 70B.
NORM_SHAPES = [(1, 4096), (37, 576), (300, 8192), (4096, 8192)]


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to one rounding of the output dtype (fp32 statistics in another order)."""
    tol = 1e-5 if out.dtype == torch.float32 else 2**-7
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,h", NORM_SHAPES)
def test_rms_norm_matches_reference(n: int, h: int, dtype: torch.dtype) -> None:
    from harness.engine.kernels.rms_norm import rms_norm_reference, rms_norm_triton

    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(n, h, device="cuda", dtype=dtype, generator=g) * 4
    res = torch.randn(n, h, device="cuda", dtype=dtype, generator=g)
    w = torch.rand(h, device="cuda", dtype=dtype, generator=g) + 0.5
    ref, ref_res = rms_norm_reference(x, w, 1e-5, res.clone())
    res_in = res.clone()
    out, out_res = rms_norm_triton(x, w, 1e-5, res_in)
    assert out_res is res_in  # the residual is updated in place
    assert torch.equal(out_res, ref_res)  # the add is rounded exactly as torch rounds it
    _close(out, ref)
    ref, _ = rms_norm_reference(x, w, 1e-5)
    out, none = rms_norm_triton(x, w, 1e-5)
    assert none is None
    _close(out, ref)


@pytest.mark.parametrize("n,h", [(1, 576), (160, 8192), (300, 4096), (1024, 8192)])
def test_rms_norm_with_scales_and_quant_equals_the_separate_kernels(n: int, h: int) -> None:
    """Deferred FP8 scales in: bit for bit the scaling pass and the norm one after another
    (bf16), near the reference. e4m3 out: the per-token quantization of that, but for values
    one e4m3 step apart where the fp32 sum of squares added in another order (the module
    docstring; none at 160 x 8192 on an H100, some at 1,024 x 8192)."""
    from harness.engine.kernels.fp8_epilogue import scale_rows_cols_triton
    from harness.engine.kernels.fp8_quant import quantize_per_token_triton
    from harness.engine.kernels.rms_norm import (
        rms_norm_quant_triton,
        rms_norm_reference,
        rms_norm_triton,
    )

    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, generator=g) * 100
    res = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.rand(h, device="cuda", dtype=torch.bfloat16, generator=g) + 0.5
    rows = torch.rand(n, 1, device="cuda", generator=g) * 1e-2
    cols = torch.rand(1, h, device="cuda", generator=g) * 1e-2
    want, want_res = rms_norm_triton(scale_rows_cols_triton(x.clone(), rows, cols), w, 1e-5,
                                     res.clone())  # fmt: skip
    got, got_res = rms_norm_triton(x, w, 1e-5, res.clone(), rows, cols)
    assert torch.equal(got, want) and torch.equal(got_res, want_res)
    ref, ref_res = rms_norm_reference(x, w, 1e-5, res.clone(), rows, cols)
    assert torch.equal(got_res, ref_res)  # the pass and the add round as torch does
    _close(got, ref)
    (q, q_scale), q_res = rms_norm_quant_triton(x, w, 1e-5, res.clone(), rows, cols)
    assert torch.equal(q_res, want_res)
    _same_e4m3(q, q_scale, *quantize_per_token_triton(want))
    (q, q_scale), none = rms_norm_quant_triton(x, w, 1e-5)  # no residual, no scales
    assert none is None
    _same_e4m3(q, q_scale, *quantize_per_token_triton(rms_norm_triton(x, w, 1e-5)[0]))


def _same_e4m3(q: torch.Tensor, scale: torch.Tensor, want_q: torch.Tensor,
               want_scale: torch.Tensor) -> None:  # fmt: skip
    """Per-token e4m3 values and scales equal but for rare values one step apart."""
    torch.testing.assert_close(scale, want_scale, rtol=2**-7, atol=0)  # amax: one bf16 step
    deq, want_deq = q.float() * scale, want_q.float() * want_scale
    step = want_deq.abs() * 2**-3 + want_scale * 2**-9  # one e4m3 step, normal or subnormal
    assert ((deq - want_deq).abs() <= 2 * step).all()
    differ = (q.view(torch.uint8) != want_q.view(torch.uint8)).float().mean().item()
    assert differ < 1e-3, differ  # a wrong kernel differs almost everywhere


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,inter", [(1, 11008), (37, 1536), (4096, 28672)])
def test_silu_mul_matches_reference(n: int, inter: int, dtype: torch.dtype) -> None:
    from harness.engine.kernels.activation import silu_mul_reference, silu_mul_triton

    gate_up = torch.randn(n, 2 * inter, device="cuda", dtype=dtype) * 3
    _close(silu_mul_triton(gate_up), silu_mul_reference(gate_up))


@pytest.mark.parametrize("n,inter", [(1, 1536), (160, 28672), (300, 11008)])
def test_silu_mul_applies_deferred_scales_as_the_pass_would(n: int, inter: int) -> None:
    """An unscaled FP8 gate|up with its row and column scales gives what the scaling pass and
    the plain kernel give, bit for bit (the same fp32 products, rounded to bf16 the same)."""
    from harness.engine.kernels.activation import silu_mul_reference, silu_mul_triton
    from harness.engine.kernels.fp8_epilogue import scale_rows_cols_triton

    unscaled = torch.randn(n, 2 * inter, device="cuda", dtype=torch.bfloat16) * 1e3
    rows = torch.rand(n, 1, device="cuda") * 1e-2
    cols = torch.rand(1, 2 * inter, device="cuda") * 1e-2
    fused = silu_mul_triton(unscaled, rows, cols)
    assert torch.equal(fused, silu_mul_triton(scale_rows_cols_triton(unscaled.clone(), rows, cols)))
    _close(fused, silu_mul_reference(unscaled, rows, cols))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset,n", [("smollm2-135m", 5), ("llama2-7b", 1), ("llama2-70b", 300)])
def test_rope_matches_reference(preset: str, n: int, dtype: torch.dtype) -> None:
    from harness.engine.kernels.rope import rope_reference, rope_triton_
    from harness.engine.model.llama import PRESETS, RotaryEmbedding

    cfg = PRESETS[preset]
    h, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rotary = RotaryEmbedding(cfg)
    rotary.init_table(torch.device("cuda"), dtype)
    positions = torch.randint(0, cfg.max_position_embeddings, (n,), device="cuda")
    rope = rotary(positions)
    qkv = torch.randn(n, (h + 2 * hkv) * d, device="cuda", dtype=dtype)
    v_before = qkv[:, (h + hkv) * d :].clone()
    qk = qkv[:, : (h + hkv) * d].view(n, h + hkv, d)  # strided rows, as the model passes it
    ref = rope_reference(qk, rope.cos, rope.sin)
    rope_triton_(qk, positions, rotary.cos_sin)
    _close(qk, ref)
    assert torch.equal(qkv[:, (h + hkv) * d :], v_before)  # v is left alone


@pytest.mark.parametrize("cache_dtype", [None, torch.float8_e4m3fn])  # None: the model dtype
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset,n", [("smollm2-135m", 5), ("llama2-7b", 1), ("llama2-70b", 300)])
def test_rope_with_kv_write_equals_rope_then_write(
    preset: str, n: int, dtype: torch.dtype, cache_dtype: torch.dtype | None
) -> None:
    """One launch (rope_write_kv_triton_) gives the bytes of the two it replaces."""
    from harness.engine.kernels.paged_attention import write_kv_cache
    from harness.engine.kernels.rope import rope_triton_, rope_write_kv_triton_
    from harness.engine.model.llama import PRESETS, RotaryEmbedding

    cfg = PRESETS[preset]
    h, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rotary = RotaryEmbedding(cfg)
    rotary.init_table(torch.device("cuda"), dtype)
    positions = torch.randint(0, cfg.max_position_embeddings, (n,), device="cuda")
    blocks, bs = -(-n // 16) + 3, 16
    slots = torch.randperm(blocks * bs, device="cuda")[:n]
    slots[1::3] = -1  # padded rows write nowhere (a batch of 1 writes its row)
    qkv = [torch.randn(n, (h + 2 * hkv) * d, device="cuda", dtype=dtype)]
    qkv.append(qkv[0].clone())
    caches = [torch.randn(hkv, blocks, bs, d, device="cuda").to(cache_dtype or dtype)
              for _ in range(2)]  # fmt: skip
    caches += [c.clone() for c in caches]  # untouched slots must stay equal too
    views = [(x[:, : (h + hkv) * d].view(n, h + hkv, d), x[:, (h + hkv) * d :].view(n, hkv, d))
             for x in qkv]  # fmt: skip
    (qk, v), (qk_ref, v_ref) = views
    rope_write_kv_triton_(qk, v, positions, rotary.cos_sin, h, caches[0], caches[1], slots, 2.0)
    rope_triton_(qk_ref, positions, rotary.cos_sin)
    write_kv_cache(qk_ref[:, h:], v_ref, caches[2], caches[3], slots, 2.0, 2.0)
    assert torch.equal(qkv[0], qkv[1])
    for out, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8))


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("preset,n", [("smollm2-135m", 5), ("llama2-70b", 1), ("llama2-70b", 300)])
def test_rope_applies_deferred_scales_as_the_pass_would(
    preset: str, n: int, cache_dtype: torch.dtype
) -> None:
    """An unscaled FP8 qkv with its row and column scales: q, k (rotated) and v in qkv and the
    cache bytes equal, bit for bit, the scaling pass then the same launch without scales."""
    from harness.engine.kernels.fp8_epilogue import scale_rows_cols_triton
    from harness.engine.kernels.rope import rope_write_kv_triton_
    from harness.engine.model.llama import PRESETS, RotaryEmbedding

    cfg = PRESETS[preset]
    h, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rotary = RotaryEmbedding(cfg)
    rotary.init_table(torch.device("cuda"), torch.bfloat16)
    positions = torch.randint(0, cfg.max_position_embeddings, (n,), device="cuda")
    blocks, bs = -(-n // 16) + 3, 16
    slots = torch.randperm(blocks * bs, device="cuda")[:n]
    slots[1::3] = -1  # V is scaled in qkv even where the row writes no cache slot
    unscaled = torch.randn(n, (h + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16) * 1e3
    rows = torch.rand(n, 1, device="cuda") * 1e-2
    cols = torch.rand(1, (h + 2 * hkv) * d, device="cuda") * 1e-2
    qkv = [unscaled.clone(), scale_rows_cols_triton(unscaled.clone(), rows, cols)]
    caches = [torch.randn(hkv, blocks, bs, d, device="cuda").to(cache_dtype) for _ in range(2)]
    caches += [c.clone() for c in caches]
    for i, x in enumerate(qkv):
        qk, v = x[:, : (h + hkv) * d].view(n, h + hkv, d), x[:, (h + hkv) * d :].view(n, hkv, d)
        scales = (rows, cols) if i == 0 else (None, None)
        rope_write_kv_triton_(qk, v, positions, rotary.cos_sin, h, caches[2 * i],
                              caches[2 * i + 1], slots, 2.0, *scales)  # fmt: skip
    assert torch.equal(qkv[0], qkv[1])
    for out, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8))


@pytest.mark.parametrize("model_opt", ["Dense", "FP8"])
def test_fused_model_matches_unfused(model_opt: str) -> None:
    """One engine's hidden states for a mixed prefill batch, kernels on vs off (bf16)."""
    from harness.engine.llm_engine import EngineArgs, LLMEngine
    from harness.engine.model.llama import PRESETS
    from harness.engine.request import SamplingParams

    args = EngineArgs(
        weights="dummy", model_config=PRESETS["smollm2-135m"], model_opt=model_opt,
        dtype="bfloat16", device="cuda", num_kv_blocks=64,
    )  # fmt: skip
    engine = LLMEngine.from_args(args)
    model = engine.model_runner.model
    for i, n in enumerate((1, 40, 200)):
        engine.add_request(i, list(range(3, 3 + n)), SamplingParams(max_new_tokens=4))
    batch = engine.model_runner._prepare(engine.scheduler.schedule())
    hidden = {}
    for fused in (True, False):
        assert model.use_fused_kernels(fused) == ("triton" if fused else "torch")
        with torch.inference_mode():
            hidden[fused] = model(batch.input_ids, batch.positions, batch.meta).float()
    err = (hidden[True] - hidden[False]).norm() / hidden[False].norm()
    # Dense: one-ulp bf16 differences stay small (measured < 2%). FP8: per-token e4m3 inputs
    # re-round them to e4m3 steps (6%) and 30 random layers compound it (measured 5.6% on
    # an H200). A wrong kernel gives ~100%.
    assert err < (2e-2 if model_opt == "Dense" else 1e-1), err


@pytest.mark.parametrize("tokens", [(1, 40, 200), (1, 2, 3), (64, 64)])
def test_fp8_model_norms_take_the_scales_and_quantize_bit_for_bit(tokens: tuple) -> None:
    """The FP8 model with qkv's scales left to RoPE, o's and down's to the norms after them
    and the norms quantizing for qkv / gate|up equals the same model with every linear scaling
    its own output and quantizing its own input (a no-op forward hook on qkv, o and down keeps
    their scales: Linear.forward_unscaled); 241 rows run the one-scale GEMM on Hopper. Bit for
    bit on an H100 (this model's rows lay out alike in both norms); a value an e4m3 step apart
    (the norm kernel's docstring) would move the result by far less than the bound."""
    from harness.engine.llm_engine import EngineArgs, LLMEngine
    from harness.engine.model.llama import PRESETS
    from harness.engine.request import SamplingParams

    args = EngineArgs(
        weights="dummy", model_config=PRESETS["smollm2-135m"], model_opt="FP8",
        dtype="bfloat16", device="cuda", num_kv_blocks=64,
    )  # fmt: skip
    engine = LLMEngine.from_args(args)
    model = engine.model_runner.model
    for i, n in enumerate(tokens):
        engine.add_request(i, list(range(3, 3 + n)), SamplingParams(max_new_tokens=4))
    batch = engine.model_runner._prepare(engine.scheduler.schedule())
    assert model.use_fused_kernels(True) == "triton"
    layers = model.model.layers
    assert all(layer.input_layernorm.quantize_output for layer in layers)
    with torch.inference_mode():
        fused = model(batch.input_ids, batch.positions, batch.meta)
    for layer in layers:
        layer.input_layernorm.quantize_output = False
        layer.post_attention_layernorm.quantize_output = False
        for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
            linear.register_forward_hook(lambda *_: None)
    with torch.inference_mode():
        separate = model(batch.input_ids, batch.positions, batch.meta)
    err = ((fused.float() - separate.float()).norm() / separate.float().norm()).item()
    assert err < 1e-2, err  # measured 0 (bit for bit); wrong scales give ~100%
