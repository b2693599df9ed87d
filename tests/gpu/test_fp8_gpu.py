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
    from harness.engine.model.llama import Linear
    from harness.engine.quant.fp8 import FP8LinearMethod
    from harness.engine.quant.fp8_gpu import FP8GpuLinearMethod

    torch.manual_seed(m)
    k, sizes = 512, [256, 128]
    w = torch.randn(sum(sizes), k, device="cuda", dtype=torch.bfloat16) * 0.05
    layers = []
    for method in (FP8GpuLinearMethod(sparse24), FP8LinearMethod(sparse24)):
        with torch.device("cuda"):
            layer = Linear(k, sizes, method, torch.bfloat16)
        method.load_dense(layer, w[:256], layer.shard_rows(0))
        method.load_dense(layer, w[256:], layer.shard_rows(1))
        method.process_weights_after_loading(layer)
        layers.append(layer)
    assert torch.equal(layers[0].weight.view(torch.uint8), layers[1].weight.view(torch.uint8))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out, ref = layers[0](x), layers[1](x)
    assert out.shape == (m, sum(sizes)) and out.dtype == torch.bfloat16
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < 5e-2  # per-token e4m3 activations: ~2-3% relative error
