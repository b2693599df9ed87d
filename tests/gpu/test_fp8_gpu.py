"""FP8 `_scaled_mm` linear (rowwise scales; one scale a tensor + scaling pass) vs the
dequantize-then-F.linear reference."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("m", [1, 7, 64, 160, 256, 300])
@pytest.mark.parametrize("sparse24", [False, True])
def test_fp8_gpu_linear_matches_reference(m: int, sparse24: bool) -> None:
    from harness.engine.quant.fp8 import FP8LinearMethod
    from harness.engine.quant.fp8_gpu import FP8GpuLinearMethod
    from tests.linears import loaded_linear

    torch.manual_seed(m)
    k, sizes = 512, [256, 128]
    w = torch.randn(sum(sizes), k, device="cuda", dtype=torch.bfloat16) * 0.05
    methods = (FP8GpuLinearMethod(sparse24), FP8LinearMethod(sparse24))
    layers = [loaded_linear(method, w, sizes) for method in methods]
    assert torch.equal(layers[0].weight.view(torch.uint8), layers[1].weight.view(torch.uint8))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out, ref = layers[0](x), layers[1](x)
    assert out.shape == (m, sum(sizes)) and out.dtype == torch.bfloat16
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < 5e-2  # per-token e4m3 activations: ~2-3% relative error


@pytest.mark.parametrize("m,k", [(1, 8192), (33, 28672), (300, 4096), (5, 100)])
def test_quantize_per_token_triton_matches_reference(m: int, k: int) -> None:
    from harness.engine.kernels.fp8_quant import quantize_per_token_triton
    from harness.engine.quant.fp8 import quantize_per_token

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
    x[0, :7] = 0  # a row start of zeros must not matter
    q, s = quantize_per_token_triton(x)
    q_ref, s_ref = quantize_per_token(x)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    deq, deq_ref = q.float() * s, q_ref.float() * s_ref
    assert ((deq - deq_ref).abs() <= 2 * s_ref * 2**-3 + 1e-6).all()  # at most ~1 e4m3 ulp


@pytest.mark.parametrize("m", [129, 160, 288, 300])
def test_tensorwise_mm_matches_rowwise(m: int) -> None:
    """The one-scale GEMM and the scaling pass give the rowwise GEMM's outputs but for one
    more bf16 rounding (each product sum the same: the same e4m3 operands, fp32 sums)."""
    from harness.engine.quant.fp8 import quantize_per_channel, quantize_per_token
    from harness.engine.quant.fp8_gpu import rowwise_mm, tensorwise_mm

    torch.manual_seed(m)
    w, w_scale = quantize_per_channel(torch.randn(1024, 2048, device="cuda") * 0.02)
    w_scale_row = w_scale.view(1, -1).contiguous()
    xq, x_scale = quantize_per_token(torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16))
    out = tensorwise_mm(xq, x_scale, w, w_scale_row)
    ref = rowwise_mm(xq, x_scale, w, w_scale_row, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (m, 1024)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2**-6, atol=1e-5)  # 2 roundings


def test_scale_rows_cols_triton_matches_reference() -> None:
    from harness.engine.kernels.fp8_epilogue import (
        scale_rows_cols_reference,
        scale_rows_cols_triton,
    )

    out = torch.randn(37, 5000, device="cuda", dtype=torch.bfloat16) * 1e4
    rows, cols = torch.rand(37, 1, device="cuda"), torch.rand(1, 5000, device="cuda")
    ref = scale_rows_cols_reference(out.clone(), rows, cols)
    got = scale_rows_cols_triton(out, rows, cols)
    assert got.data_ptr() == out.data_ptr()  # in place
    torch.testing.assert_close(got.float(), ref.float(), rtol=2**-8, atol=0)


def test_rowwise_is_slow_on_hopper_where_measured_slower() -> None:
    from harness.engine.quant.fp8_gpu import rowwise_is_slow

    dev = torch.device("cuda")
    hopper = torch.cuda.get_device_capability() == (9, 0)
    assert [rowwise_is_slow(m, dev) for m in (160, 256, 384, 512, 1000, 1024, 1100)] == [hopper] * 7
    assert not any(rowwise_is_slow(m, dev) for m in (1, 64, 128, 1152, 4096))


@pytest.mark.parametrize("m", [7, 160, 256, 300])
def test_gate_up_with_deferred_scales_matches_forward(m: int) -> None:
    """SwiGLU over forward_unscaled's output (scales deferred to the kernel where the one-scale
    GEMM runs: 160 and 300 rows on Hopper) equals SwiGLU over forward's, bit for bit."""
    from harness.engine.kernels.activation import silu_mul_triton
    from harness.engine.quant.fp8_gpu import FP8GpuLinearMethod, rowwise_is_slow
    from tests.linears import loaded_linear

    torch.manual_seed(m)
    k, inter = 1024, 2048
    w = torch.randn(2 * inter, k, device="cuda", dtype=torch.bfloat16) * 0.05
    layer = loaded_linear(FP8GpuLinearMethod(), w, [inter, inter])
    layer.triton_max_rows = 32
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out, row_scale, col_scale = layer.forward_unscaled(x)
    assert (row_scale is not None) == (m > 32 and rowwise_is_slow(m, x.device))
    assert torch.equal(silu_mul_triton(out, row_scale, col_scale), silu_mul_triton(layer(x)))


@pytest.mark.parametrize("m", [7, 160, 256])
@pytest.mark.parametrize("sparse24", [False, True])
def test_linear_takes_its_input_quantized(m: int, sparse24: bool) -> None:
    """An FP8 linear given (e4m3, scales) from quantize_activations equals it given the bf16
    input, bit for bit, on both GEMM paths (Triton up to 32 rows, cuBLAS above)."""
    from harness.engine.quant.fp8_gpu import FP8GpuLinearMethod, quantize_activations
    from harness.engine.quant.sparse24 import ScratchWeight, Sparse24GpuLinearMethod
    from tests.linears import loaded_linear

    torch.manual_seed(m)
    w = torch.randn(384, 512, device="cuda", dtype=torch.bfloat16) * 0.05
    method = Sparse24GpuLinearMethod(ScratchWeight()) if sparse24 else FP8GpuLinearMethod()
    layer = loaded_linear(method, w, [256, 128])
    layer.triton_max_rows = 32
    assert layer.takes_quantized_input
    x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(layer(quantize_activations(x)), layer(x))
    out, rows, cols = layer.forward_unscaled(quantize_activations(x))
    want = layer.forward_unscaled(x)
    assert torch.equal(out, want[0]) and (rows is None) == (want[1] is None)
