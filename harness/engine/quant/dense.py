"""Dense linear method: an unquantized [out, in] weight in the model dtype, applied by F.linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseLinearMethod:
    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        weight = torch.empty(out_features, in_features, dtype=dtype)  # [out, in]
        layer.register_parameter("weight", nn.Parameter(weight, requires_grad=False))

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight)  # [N, in] -> [N, out]

    def load_dense(self, layer: nn.Module, weight: torch.Tensor, rows: slice) -> None:
        layer.weight.data[rows].copy_(weight)


class DenseConfig:
    name = "Dense"

    def linear_method(self, prefix: str) -> DenseLinearMethod:
        return DenseLinearMethod()
