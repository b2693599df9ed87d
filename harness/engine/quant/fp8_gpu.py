"""FP8 (e4m3) linear method for CUDA: `torch._scaled_mm` with per-channel weight scales and
dynamic per-token activation scales (rowwise scaling, bf16 out).

On Hopper (sm90) PyTorch's rowwise-scaled GEMM runs row counts above 128 that are not a
multiple of 128 at up to half the speed of its one-scale-a-tensor GEMM (the 70B's four linears
on one H100: 160 rows 0.615 ms against 0.336, 288 rows 0.866 against 0.431), and multiples of
128 below 512 about a tenth slower (CUDA-graph replays, the scaling pass included: 256 rows
0.430 against 0.382, 384: 0.607 against 0.552; docs/benchmarks.md, twenty-second and
twenty-third sessions). Those row counts run the one-scale GEMM with unit scales and their row
and column scales applied after it: same products, one more bf16 rounding. gate|up defers its
scales to SwiGLU's kernel (apply_unscaled), qkv to RoPE's (kernels/rope.py), o and down to
the residual norm after them, which also quantizes the next linear's input
(kernels/rms_norm.py: such a linear takes the (e4m3, scales) pair, a Quantized, in place of its
bf16 input); a linear whose consumer takes no scales gets a Triton pass
(kernels/fp8_epilogue.py). Without the passes the one-scale GEMM also wins at multiples of 128
from 512 to 1,024 rows: the 70B's mixed-step graphs on one H100 replayed 512 rows in 67.1 ms
against 73.2, 640 in 77.8 against 96.3, 1,024 in 134.6 against 145.7 (twenty-fourth session,
qkv still with its pass). Above 1,024 rows multiples of 128 stay rowwise (not measured).

Storage and loading match FP8LinearMethod (fp8.py), whose dequantize-then-F.linear apply is
the plain-torch reference; tests/gpu/test_fp8_gpu.py compares the two.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from harness.engine.kernels.fp8_epilogue import scale_rows_cols_triton
from harness.engine.kernels.fp8_gemm import fp8_gemm_triton
from harness.engine.kernels.fp8_quant import quantize_per_token_triton
from harness.engine.quant.base import Quantized, Unscaled
from harness.engine.quant.fp8 import FP8LinearMethod


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] bf16 -> ([M, K] e4m3, [M, 1] fp32 scales) in one Triton launch (reference:
    quant/fp8.quantize_per_token)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return quantize_per_token_triton(x)


def rowwise_mm(
    xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor,
    out_dtype: torch.dtype, fast_accum: bool = False,
) -> torch.Tensor:  # fmt: skip
    """PyTorch's FP8 GEMM in rowwise mode: xq [M, K] e4m3 with x_scale [M, 1], weight [N, K]
    e4m3 with weight_scale_row [1, N] -> [M, N] out_dtype (bf16). fast_accum: FP8 sums without
    the periodic fp32 adds (the engine does not use it; fp8_gemm_sweep times it)."""
    return torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale_row,
                            out_dtype=out_dtype, use_fast_accum=fast_accum)  # fmt: skip


@functools.cache
def unit_scale(device: torch.device) -> torch.Tensor:
    """A 1.0 fp32 scalar on device, made once, eagerly (FP8GpuLinearMethod makes it at load):
    one made inside a CUDA-graph capture would live in the graph's pool."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("unit_scale: first call inside a CUDA-graph capture; make it at load")
    return torch.ones((), dtype=torch.float32, device=device)


def unscaled_mm(xq: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """xq [M, K] e4m3 @ weight [N, K]^T with unit scales -> [M, N] bf16 (no scales applied)."""
    one = unit_scale(xq.device)
    return torch._scaled_mm(xq, weight.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)


def tensorwise_mm(
    xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor
) -> torch.Tensor:
    """rowwise_mm's result (bf16) from the one-scale GEMM and a scaling pass after it."""
    return scale_rows_cols_triton(unscaled_mm(xq, weight), x_scale, weight_scale_row)


@functools.cache
def _is_sm90(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


def rowwise_is_slow(m: int, device: torch.device) -> bool:
    """Whether m rows run faster as the one-scale GEMM, its scales applied after it (the module
    docstring's measurement)."""
    return m > 128 and (m % 128 != 0 or m <= 1024) and _is_sm90(device)


def with_scales(out: torch.Tensor, row_scale: torch.Tensor | None,
                col_scale: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """An Unscaled result as the linear's output: the scaling pass where scales were left."""
    return out if row_scale is None else scale_rows_cols_triton(out, row_scale, col_scale)


def scaled_mm_unscaled(
    xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale_row: torch.Tensor,
    out_dtype: torch.dtype,
) -> Unscaled:  # fmt: skip
    """rowwise_mm, or where rowwise is slow (bf16 out) the one-scale GEMM, its scales left."""
    if out_dtype == torch.bfloat16 and rowwise_is_slow(xq.shape[0], xq.device):
        return unscaled_mm(xq, weight), x_scale, weight_scale_row
    return rowwise_mm(xq, x_scale, weight, weight_scale_row, out_dtype), None, None


def as_quantized(x: torch.Tensor | Quantized) -> Quantized:
    """x's e4m3 values and per-token scales: quantized now unless the norm before did it."""
    return x if isinstance(x, tuple) else quantize_activations(x)


def output_dtype(x: torch.Tensor | Quantized) -> torch.dtype:
    """A linear's output dtype: x's, bf16 for a Quantized x (the norms quantize bf16 only)."""
    return torch.bfloat16 if isinstance(x, tuple) else x.dtype


def fp8_linear_unscaled(
    x: torch.Tensor | Quantized, weight: torch.Tensor, weight_scale_row: torch.Tensor,
    triton_max_rows: int = 0,
) -> Unscaled:  # fmt: skip
    """x [M, K] bf16 (or Quantized), weight [N, K] e4m3, weight_scale_row [1, N] fp32 -> [M, N]
    bf16, its scales left where the one-scale GEMM runs (for the consumer: kernels/activation.py,
    kernels/rms_norm.py). M <= triton_max_rows rows go to the Triton kernel
    (kernels/fp8_gemm.py), more to cuBLAS."""
    xq, x_scale = as_quantized(x)
    if xq.shape[0] <= triton_max_rows:
        return fp8_gemm_triton(xq, x_scale, weight, weight_scale_row), None, None
    return scaled_mm_unscaled(xq, x_scale, weight, weight_scale_row, output_dtype(x))


def fp8_linear(
    x: torch.Tensor | Quantized, weight: torch.Tensor, weight_scale_row: torch.Tensor,
    triton_max_rows: int = 0,
) -> torch.Tensor:  # fmt: skip
    """fp8_linear_unscaled's output with its scales applied."""
    return with_scales(*fp8_linear_unscaled(x, weight, weight_scale_row, triton_max_rows))


class FP8GpuLinearMethod(FP8LinearMethod):
    """Same parameters as the reference; apply runs one FP8 tensor-core GEMM. In bf16 models
    it also takes a Quantized input (takes_quantized_input)."""

    takes_quantized_input = True

    def apply(self, layer: nn.Module, x: torch.Tensor | Quantized) -> torch.Tensor:
        return with_scales(*self.apply_unscaled(layer, x))

    def apply_unscaled(self, layer: nn.Module, x: torch.Tensor | Quantized) -> Unscaled:
        """apply's output, its scales left where fp8_linear_unscaled leaves them."""
        if output_dtype(x) == torch.float32:  # _scaled_mm writes bf16: fp32 models (tests)
            return super().apply(layer, x), None, None  # run the reference
        return fp8_linear_unscaled(x, layer.weight, layer.weight_scale_row, layer.triton_max_rows)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # _scaled_mm's rowwise mode wants the weight scales as a [1, N] fp32 row.
        layer.weight_scale_row = layer.weight_scale.data.view(1, -1).contiguous()
        if layer.weight_scale_row.is_cuda:
            unit_scale(layer.weight_scale_row.device)  # made now, outside any graph capture
