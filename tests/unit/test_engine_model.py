"""Model building blocks: presets of real shapes on the meta device, dummy weights, FP8 math."""

from __future__ import annotations

import pytest
import torch

from harness.engine.loader import build_model
from harness.engine.model.llama import PRESETS, LlamaConfig, LlamaForCausalLM, rope_inv_freq
from harness.engine.quant.base import quant_config_for
from harness.engine.quant.fp8 import (
    FP8LinearMethod,
    prune_2_of_4,
    quantize_per_channel,
    quantize_per_token,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("preset", "billions"), [("llama2-7b", 6.74), ("llama2-70b", 68.98), ("smollm2-135m", 0.162)]
)
def test_presets_have_the_real_parameter_count(preset, billions):
    with torch.device("meta"):  # no memory: real shapes only
        model = LlamaForCausalLM(PRESETS[preset], quant_config_for("Dense", CPU), torch.bfloat16)
    num_params = sum(p.numel() for p in model.parameters()) / 1e9
    assert num_params == pytest.approx(billions, rel=0.01)


def test_llama2_70b_layer_shapes_gqa():
    with torch.device("meta"):
        model = LlamaForCausalLM(
            PRESETS["llama2-70b"], quant_config_for("FP8", CPU), torch.bfloat16
        )
    attn = model.model.layers[0].self_attn
    assert attn.qkv_proj.weight.shape == (8192 + 2 * 1024, 8192)
    assert attn.qkv_proj.weight.dtype == torch.float8_e4m3fn
    assert attn.qkv_proj.weight_scale.shape == (10240,)
    assert model.lm_head.weight.dtype == torch.bfloat16  # the head stays dense


def small_config(**kw) -> LlamaConfig:
    shape = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    return LlamaConfig(**{**shape, **heads, **kw})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dummy_weights_are_built_in_the_final_dtype_and_deterministic(dtype):
    a = build_model(small_config(), quant_config_for("Dense", CPU), dtype, CPU, "dummy", seed=3)
    b = build_model(small_config(), quant_config_for("Dense", CPU), dtype, CPU, "dummy", seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert p.dtype == dtype and torch.equal(p, q), name
        assert torch.isfinite(p.float()).all()


def test_llama3_rope_scaling_keeps_high_freqs_and_divides_low_ones():
    base = rope_inv_freq(small_config(rope_theta=500000.0))
    scaled = rope_inv_freq(small_config(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
    }))  # fmt: skip
    assert scaled[0] == base[0]  # the highest frequency is untouched
    assert scaled[-1] == pytest.approx(base[-1] / 8)


def test_fp8_per_channel_round_trip_error_is_bounded():
    w = torch.randn(16, 32)
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (16,)
    rel = ((q.float() * scale[:, None] - w).abs().amax(1) / w.abs().amax(1)).max()
    assert rel < 0.07  # e4m3: 3 mantissa bits


def test_2_of_4_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.0, 0.1, -0.2, 0.3]])
    assert torch.equal(prune_2_of_4(w), torch.tensor([[0.0, -4.0, 3.0, 0.0, 0.0, 0.0, -0.2, 0.3]]))


def test_fp8_linear_matches_its_dequantized_reference():
    torch.manual_seed(0)  # unseeded, a draw once put an output past the loose bound
    layer = torch.nn.Module()
    method = FP8LinearMethod()
    method.create_weights(layer, 32, 16, torch.float32)
    w = torch.randn(16, 32)
    method.load_dense(layer, w, slice(0, 16))
    x = torch.randn(5, 32)
    xq, x_scale = quantize_per_token(x)  # the activations as the FP8 GEMM sees them
    assert xq.dtype == torch.float8_e4m3fn and x_scale.shape == (5, 1)
    want = (xq.float() * x_scale) @ (layer.weight.float() * layer.weight_scale[:, None]).t()
    torch.testing.assert_close(method.apply(layer, x), want)
    torch.testing.assert_close(method.apply(layer, x), x @ w.t(), atol=0.5, rtol=0.1)


@pytest.mark.parametrize("gpu_method", [False, True])
def test_forward_unscaled_defers_nothing_off_hopper(gpu_method: bool):
    """Methods without apply_unscaled (dense, the FP8 reference) and the CUDA FP8 method on
    fp32 input give forward's output and no scales (fp8_gpu.py defers only on sm90, bf16)."""
    from harness.engine.model.llama import Linear
    from harness.engine.quant.dense import DenseLinearMethod
    from harness.engine.quant.fp8_gpu import FP8GpuLinearMethod

    torch.manual_seed(0)
    for method in (DenseLinearMethod(), FP8GpuLinearMethod() if gpu_method else FP8LinearMethod()):
        layer = Linear(32, [16, 16], method, torch.float32)
        method.load_dense(layer, torch.randn(32, 32), slice(0, 32))
        method.process_weights_after_loading(layer)
        x = torch.randn(300, 32)
        out, row_scale, col_scale = layer.forward_unscaled(x)
        assert row_scale is None and col_scale is None
        assert torch.equal(out, layer(x))


def test_fused_kernels_on_cpu_are_the_c_ones_for_fp32_only():
    from harness.engine.kernels import cpu_elementwise
    from harness.engine.loader import build_model
    from harness.engine.model.llama import LlamaConfig

    config = LlamaConfig(64, 32, 48, 1, 4, 2, max_position_embeddings=16)
    for dtype in (torch.float32, torch.bfloat16):
        model = build_model(config, quant_config_for("Dense", CPU), dtype, CPU, "dummy", "")
        want = "c" if dtype == torch.float32 and cpu_elementwise.is_available(dtype) else "torch"
        assert model.use_fused_kernels(True, 256, 256, 256) == want  # Triton kernels need CUDA
        assert not any(getattr(m, "triton_max_rows", 0) for m in model.modules())
        assert {m.kernels for m in model.modules() if hasattr(m, "kernels")} == {want}
        assert model.use_fused_kernels(False) == "torch"
        assert {m.kernels for m in model.modules() if hasattr(m, "kernels")} == {"torch"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_gemm_choices_compute_the_same_linear(dtype):
    """oneDNN (fp32 only) and MKL on the transposed weight: same product, rounding aside."""
    from harness.engine.quant.dense import DenseLinearMethod

    w, x = torch.randn(48, 40).to(dtype), torch.randn(7, 40).to(dtype)
    outputs = {}
    for gemm in ("onednn", "mkl"):
        layer, method = torch.nn.Module(), DenseLinearMethod(gemm)
        method.create_weights(layer, 40, 48, dtype)
        method.load_dense(layer, w, slice(0, 48))
        method.process_weights_after_loading(layer)
        assert method.use_onednn == (gemm == "onednn" and dtype == torch.float32)
        assert hasattr(layer, "weight") == method.use_onednn  # mkl keeps only weight_t
        outputs[gemm] = method.apply(layer, x)
    torch.testing.assert_close(outputs["onednn"], outputs["mkl"])
    torch.testing.assert_close(outputs["mkl"].float(), x.float() @ w.float().t(), **(
        {"atol": 0.1, "rtol": 0.02} if dtype == torch.bfloat16 else {}))  # fmt: skip


def test_unknown_cpu_gemm_is_refused_by_name():
    with pytest.raises(ValueError, match="cpu_gemm='blis'"):
        quant_config_for("Dense", CPU, cpu_gemm="blis")


def test_fp8_dense_layers_keep_those_decoder_layers_dense():
    from harness.engine.quant.base import dense_layers_from
    from harness.engine.quant.dense import DenseLinearMethod
    from harness.engine.quant.fp8 import FP8LinearMethod

    assert dense_layers_from("0, -1", 30) == {0, 29} and dense_layers_from("", 30) == set()
    for bad in ("30", "-31", "x"):
        with pytest.raises(ValueError, match=f"{bad!r} is not a decoder layer"):
            dense_layers_from(bad, 30)
    quant = quant_config_for("FP8", CPU, dense_layers=dense_layers_from("-1", 30))
    assert isinstance(quant.linear_method("model.layers.29.mlp.down_proj"), DenseLinearMethod)
    assert isinstance(quant.linear_method("model.layers.2.self_attn.qkv_proj"), FP8LinearMethod)
    assert isinstance(quant.linear_method("lm_head"), DenseLinearMethod)
