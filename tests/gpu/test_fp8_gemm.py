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


def _check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    # Both sum exact e4m3 products in fp32 (in different orders), then round once to bf16.
    # Hopper's FP8 wgmma without promotion to fp32 failed this (BLOCK_M 64: 2.5% off by > 2%).
    torch.testing.assert_close(out.float(), ref.float(), rtol=1.6e-2, atol=1e-3 * ref.abs().max())


@pytest.mark.parametrize("m", [1, 7, 16, 17, 32, 33, 64, 100, 160, 256, 384])
@pytest.mark.parametrize("n,k", SHAPES)
def test_fp8_gemm_triton_matches_reference(m: int, n: int, k: int) -> None:
    from harness.engine.kernels.fp8_gemm import fp8_gemm_reference, fp8_gemm_triton

    ops = _operands(m, n, k)
    _check(fp8_gemm_triton(*ops), fp8_gemm_reference(*ops))


@pytest.mark.parametrize("block_m", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("block_n,block_k,warps", [(32, 128, 4), (64, 256, 8), (128, 128, 8)])
def test_fp8_gemm_triton_configs_match_reference(
    block_m: int, block_n: int, block_k: int, warps: int
) -> None:
    """Every block shape the sweep may pick, on ragged M, N and K tails."""
    from harness.engine.kernels.fp8_gemm import GemmConfig, fp8_gemm_reference, fp8_gemm_triton

    ops = _operands(150, 1000, 1184)
    stages = 2 if block_m * block_k >= 256 * 128 else 3  # within Hopper's shared memory
    cfg = GemmConfig(block_m, block_n, block_k, warps, stages)
    _check(fp8_gemm_triton(*ops, config=cfg), fp8_gemm_reference(*ops))


@pytest.mark.parametrize("split_k", [2, 3, 8])
@pytest.mark.parametrize("block_m", [16, 128])
def test_fp8_gemm_triton_split_k_matches_reference(split_k: int, block_m: int) -> None:
    """K ranges added in fp32, including splits that get fewer K steps or none (8 splits of
    the 10 steps of K=1184 at BLOCK_K 128: the last gets none)."""
    from harness.engine.kernels.fp8_gemm import GemmConfig, fp8_gemm_reference, fp8_gemm_triton

    ops = _operands(150, 1000, 1184)
    cfg = GemmConfig(block_m, 64, 128, 4, 3, split_k=split_k)
    _check(fp8_gemm_triton(*ops, config=cfg), fp8_gemm_reference(*ops))


@pytest.mark.parametrize("block_m,block_n,split_k", [(16, 64, 1), (64, 128, 1), (16, 64, 3)])
def test_fp8_gemm_triton_swapped_operands_match_reference(
    block_m: int, block_n: int, split_k: int
) -> None:
    """Weights as the MMA's A operand (wgmma from BLOCK_N 64), each BLOCK_K's sum added in
    fp32 (the tolerance is the one that caught wgmma's imprecise accumulation)."""
    from harness.engine.kernels.fp8_gemm import GemmConfig, fp8_gemm_reference, fp8_gemm_triton

    ops = _operands(150, 1000, 1184)
    cfg = GemmConfig(block_m, block_n, 128, 4, 3, split_k=split_k, swap=True)
    _check(fp8_gemm_triton(*ops, config=cfg), fp8_gemm_reference(*ops))


@pytest.mark.parametrize("m", [1, 32, 160])
def test_fp8_linear_triton_path_matches_cublas(m: int) -> None:
    from harness.engine.quant.fp8_gpu import fp8_linear

    n, k = 8192, 8192
    _, _, w, ws = _operands(m, n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    fast, lib = fp8_linear(x, w, ws, triton_max_rows=m), fp8_linear(x, w, ws, triton_max_rows=0)
    err = ((fast.double() - lib.double()).norm() / lib.double().norm()).item()
    assert err < 1e-2  # same quantized operands; only the summation order differs
