"""FP8 (e4m3) weight linear method with per-channel scales, optionally 2:4 sparse.

This is the plain-torch reference of the GPU math: activations rounded to e4m3 with a dynamic
per-token scale and weights dequantized, both in the activation dtype, then F.linear. The GPU
path (fp8_gpu.py) runs the same quantization into one FP8 tensor-core GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.engine.quant.dense import DenseConfig, DenseLinearMethod

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0


def prune_2_of_4(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude weights of every 4 consecutive inputs: [out, in] -> same."""
    out_f, in_f = weight.shape
    if in_f % 4:
        raise ValueError(f"2:4 sparsity needs in_features divisible by 4, got {in_f}")
    groups = weight.reshape(out_f, in_f // 4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(out_f, in_f)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] -> ([M, K] e4m3, [M, 1] fp32 scales) with x ~= q * scale."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX  # [M, 1]
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> ([out, in] e4m3, [out] fp32 scales) with weight ~= q * scale."""
    w32 = weight.float()
    scale = w32.abs().amax(dim=1).clamp(min=1e-12) / FP8_MAX
    q = (w32 / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def reference_fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor
) -> torch.Tensor:
    """x [N, in], weight [out, in] e4m3, weight_scale [out] -> [N, out] in x.dtype: the FP8
    GEMM's math in plain torch."""
    xq, x_scale = quantize_per_token(x.reshape(-1, x.shape[-1]))
    x = (xq.float() * x_scale).to(x.dtype).view(x.shape)  # what the FP8 GEMM multiplies
    w = weight.to(x.dtype) * weight_scale.to(x.dtype)[:, None]
    return F.linear(x, w)  # [N, in] -> [N, out]


class FP8LinearMethod:
    def __init__(self, sparse24: bool = False) -> None:
        self.sparse24 = sparse24

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        weight = torch.empty(out_features, in_features, dtype=FP8_DTYPE)  # [out, in] e4m3
        scale = torch.empty(out_features, dtype=torch.float32)  # [out]
        layer.register_parameter("weight", nn.Parameter(weight, requires_grad=False))
        layer.register_parameter("weight_scale", nn.Parameter(scale, requires_grad=False))

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return reference_fp8_linear(x, layer.weight, layer.weight_scale)

    def load_dense(self, layer: nn.Module, weight: torch.Tensor, rows: slice) -> None:
        if self.sparse24:
            weight = prune_2_of_4(weight)
        q, scale = quantize_per_channel(weight)
        layer.weight.data[rows].copy_(q)
        layer.weight_scale.data[rows].copy_(scale)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        pass


def layer_index(prefix: str) -> int:
    """model.layers.3.mlp.down_proj -> 3; -1 for a linear outside the decoder layers."""
    parts = prefix.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else -1


class FP8Config:
    def __init__(
        self, device: torch.device, sparse24: bool = False, cpu_gemm: str = "onednn",
        dense_layers: frozenset[int] = frozenset(),
    ) -> None:  # fmt: skip
        self.dense = DenseConfig(device, cpu_gemm)  # the head's and dense_layers' method
        self.sparse24 = sparse24
        self.dense_layers = dense_layers  # decoder layers kept in the model dtype
        self.name = "Sparse" if sparse24 else "FP8"
        self.scratch = None  # CUDA Sparse: the shared expansion buffer (quant/sparse24.py)

    def linear_method(self, prefix: str) -> FP8LinearMethod | DenseLinearMethod:
        if prefix == "lm_head" or layer_index(prefix) in self.dense_layers:  # accuracy
            return self.dense.linear_method(prefix)
        if self.dense.device.type == "cuda" and self.sparse24:  # stored compressed
            from harness.engine.quant.sparse24 import ScratchWeight, Sparse24GpuLinearMethod

            self.scratch = self.scratch or ScratchWeight()
            return Sparse24GpuLinearMethod(self.scratch)
        if self.dense.device.type == "cuda":  # FP8 tensor cores (Hopper); same storage
            from harness.engine.quant.fp8_gpu import FP8GpuLinearMethod

            return FP8GpuLinearMethod()
        return FP8LinearMethod(self.sparse24)
