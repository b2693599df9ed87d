"""A Linear of a given quant method holding a given dense weight, loaded shard by shard as a
checkpoint is (fused q|k|v, gate|up), then processed for inference: for tests that compare
quant methods (tests/unit, tests/gpu)."""

from __future__ import annotations

import torch

from harness.engine.model.llama import Linear


def loaded_linear(method, weight: torch.Tensor, sizes: list[int]) -> Linear:  # noqa: ANN001
    """weight [sum(sizes), in] in the model dtype, on the layer's device."""
    with torch.device(weight.device):
        layer = Linear(weight.shape[1], sizes, method, weight.dtype)
    start = 0
    for shard, n in enumerate(sizes):
        method.load_dense(layer, weight[start : start + n], layer.shard_rows(shard))
        start += n
    method.process_weights_after_loading(layer)
    return layer
