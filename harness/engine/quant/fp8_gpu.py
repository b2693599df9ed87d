"""FP8 (e4m3) linear method for CUDA: `torch._scaled_mm` with per-channel weight scales and
dynamic per-token activation scales (rowwise scaling, bf16 out).

Storage and loading match FP8LinearMethod (fp8.py), whose dequantize-then-F.linear apply is
the plain-torch reference; tests/gpu/test_fp8_gpu.py compares the two.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.engine.kernels.fp8_gemm import fp8_gemm_triton
from harness.engine.kernels.fp8_quant import quantize_per_token_triton
from harness.engine.quant.fp8 import FP8LinearMethod


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] bf16 -> ([M, K] e4m3, [M, 1] fp32 scales) in one Triton launch (reference:
    quant/fp8.quantize_per_token)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return quantize_per_token_triton(x)


def scaled_mm(
    xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor,
    out_dtype: torch.dtype, fast_accum: bool = False,
) -> torch.Tensor:  # fmt: skip
    """cuBLAS's FP8 GEMM in rowwise mode: xq [M, K] e4m3 with x_scale [M, 1], weight [N, K]
    e4m3 with weight_scale_row [1, N] -> [M, N] out_dtype (bf16). fast_accum: FP8 sums without
    the periodic fp32 adds (the engine does not use it; fp8_gemm_sweep times it)."""
    return torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale_row,
                            out_dtype=out_dtype, use_fast_accum=fast_accum)  # fmt: skip


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor, triton_max_rows: int = 0
) -> torch.Tensor:
    """x [M, K] bf16, weight [N, K] e4m3, weight_scale_row [1, N] fp32 -> [M, N] bf16.
    M <= triton_max_rows rows go to the Triton kernel (kernels/fp8_gemm.py), more to cuBLAS."""
    xq, x_scale = quantize_activations(x)
    if x.shape[0] <= triton_max_rows:
        return fp8_gemm_triton(xq, x_scale, weight, weight_scale_row)
    return scaled_mm(xq, x_scale, weight, weight_scale_row, x.dtype)


class FP8GpuLinearMethod(FP8LinearMethod):
    """Same parameters as the reference; apply runs one FP8 tensor-core GEMM."""

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # rowwise _scaled_mm writes bf16 only: fp32 models
            return super().apply(layer, x)  # (tests, CPU parity) keep the exact reference
        return fp8_linear(x, layer.weight, layer.weight_scale_row, layer.triton_max_rows)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # _scaled_mm's rowwise mode wants the weight scales as a [1, N] fp32 row.
        layer.weight_scale_row = layer.weight_scale.data.view(1, -1).contiguous()
