"""Small-M FP8 Triton GEMM vs its fp32 reference and vs cuBLAS, on the 70B shapes we run."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SHAPES = [(10240, 8192), (8192, 28672), (130, 384)]  # 70B qkv, 70B down, ragged tails


def _operands(m: int, n: int, k: int):  # noqa: ANN202
    from harness.engine.quant.fp8 import quantize_per_channel, quantize_per_token

    torch.manual_seed(m * 7 + n)
    w, ws = quantize_per_channel(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    xq, xs = quantize_per_token(torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3)
    return xq, xs, w, ws.view(1, -1).contiguous()


@pytest.mark.parametrize("m", [1, 7, 16, 17, 32])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("block_n", [None, 32])
def test_fp8_gemm_triton_matches_reference(m: int, n: int, k: int, block_n: int | None) -> None:
    from harness.engine.kernels.fp8_gemm import fp8_gemm_reference, fp8_gemm_triton

    ops = _operands(m, n, k)
    out = fp8_gemm_triton(*ops, block_n=block_n)
    ref = fp8_gemm_reference(*ops)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    # Both sum exact e4m3 products in fp32 (in different orders), then round once to bf16.
    torch.testing.assert_close(out.float(), ref.float(), rtol=1.6e-2, atol=1e-3 * ref.abs().max())


@pytest.mark.parametrize("m", [1, 32])
def test_fp8_linear_triton_path_matches_cublas(m: int) -> None:
    from harness.engine.quant.fp8_gpu import fp8_linear

    n, k = 8192, 8192
    _, _, w, ws = _operands(m, n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    fast, lib = fp8_linear(x, w, ws, use_triton=True), fp8_linear(x, w, ws, use_triton=False)
    err = ((fast.double() - lib.double()).norm() / lib.double().norm()).item()
    assert err < 1e-2  # same quantized operands; only the summation order differs


def test_fp8_gemm_triton_refuses_large_m() -> None:
    from harness.engine.kernels.fp8_gemm import MAX_ROWS, fp8_gemm_triton

    with pytest.raises(ValueError, match="M <= "):
        fp8_gemm_triton(*_operands(MAX_ROWS + 1, 64, 256))
