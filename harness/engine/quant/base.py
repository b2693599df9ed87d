"""The LinearMethod contract (create weights, load shards, apply) and QuantConfig lookup.

Owns no kernels; each method lives in its own module with a plain-torch reference.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

# (out, row_scale, col_scale): out * row_scale * col_scale is a linear's result where an FP8
# GEMM left its [M, 1] and [1, N] scales to the consumer; else the scales are None and out is it.
Unscaled = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
# An activation already quantized for an FP8 linear: ([M, K] e4m3, [M, 1] fp32 scales).
Quantized = tuple[torch.Tensor, torch.Tensor]


class LinearMethod(Protocol):
    """How one linear layer stores and applies its weight.

    Parameters whose dim 0 runs over output features (weight [out, in], per-channel scales
    [out]) are loaded shard by shard into fused layers (qkv, gate_up) along dim 0.
    """

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None: ...

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, in_features] -> [num_tokens, out_features] in x.dtype.
        A method may also define apply_unscaled(layer, x) -> Unscaled, its scales left to the
        consumer where it chooses (Linear.forward_unscaled, fp8_gpu.py), and take a Quantized
        x where it sets takes_quantized_input."""
        ...

    def load_dense(self, layer: nn.Module, weight: torch.Tensor, rows: slice) -> None:
        """Fill output rows `rows` of the layer from a dense [rows, in] checkpoint weight,
        quantizing as the method needs (engine build, HF load, dummy weights)."""
        ...

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Convert stored weights to the runtime layout (after every load, before serving)."""
        ...


class QuantConfig(Protocol):
    name: str  # the model_opt this config implements: Dense | FP8 | Sparse

    def linear_method(self, prefix: str) -> LinearMethod:
        """The method for the linear at `prefix` (e.g. model.layers.3.self_attn.qkv_proj;
        "lm_head" for the output head, which every config keeps dense)."""
        ...


class UnsupportedQuantError(NotImplementedError):
    """A model_opt has no implementation on this device yet; the message says what to use."""


def dense_layers_from(text: str, num_layers: int) -> frozenset[int]:
    """fp8_dense_layers ("0,-1": decoder layer indices, negative ones from the end) -> the
    layer indices; a clear error for what is not a list of layers of this model."""
    layers = set()
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if not item.lstrip("-").isdigit() or not -num_layers <= int(item) < num_layers:
            raise ValueError(
                f"fp8_dense_layers={text!r}: {item!r} is not a decoder layer of this model "
                f"(0..{num_layers - 1}, or -1..-{num_layers} from the end)"
            )
        layers.add(int(item) % num_layers)
    return frozenset(layers)


def quant_config_for(
    model_opt: str, device: torch.device, cpu_gemm: str = "onednn",
    dense_layers: frozenset[int] = frozenset(),
) -> QuantConfig:  # fmt: skip
    """The QuantConfig of a model_opt (`--model_opt`): Dense, FP8 or Sparse; cpu_gemm picks
    the dense GEMM library on CPU (quant/dense.py); dense_layers: decoder layers FP8 and
    Sparse keep in the model dtype (dense_layers_from)."""
    if model_opt == "Dense":
        from harness.engine.quant.dense import DenseConfig

        return DenseConfig(device, cpu_gemm)
    if model_opt in ("FP8", "Sparse"):
        from harness.engine.quant.fp8 import FP8Config

        return FP8Config(device, model_opt == "Sparse", cpu_gemm, dense_layers)
    raise UnsupportedQuantError(f"model_opt={model_opt!r}: use one of Dense, FP8, Sparse")
