"""FP8 `_scaled_mm` linear (rowwise scales) vs the dequantize-then-F.linear reference."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("m", [1, 7, 64, 300])
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
