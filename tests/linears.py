"""A Linear of a given quant method holding a given dense weight, loaded shard by shard as a
checkpoint is (fused q|k|v, gate|up), then processed for inference: for tests that compare
quant methods (tests/unit, tests/gpu). Also the 2:4 weights, activations and layer the sparse
tensor-core kernels' GPU tests share."""

from __future__ import annotations

import functools

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


@functools.cache  # one weight a shape and packing for all the row counts of a test file
def packed_24_weight(n: int, k: int, warpgroup: bool = False):  # noqa: ANN201
    """A pruned, quantized [n, k] CUDA weight: (e4m3 weight, scales, packed values, packed meta),
    packed for mma.sp's warps or, with warpgroup, wgmma.sp's warpgroups."""
    from harness.engine.kernels.sparse24_mma import lane_tables, pack_for_mma, warpgroup_tables
    from harness.engine.quant.fp8 import prune_2_of_4, quantize_per_channel
    from harness.engine.quant.sparse24 import compress_24

    torch.manual_seed(n + k)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    q, s = quantize_per_channel(prune_2_of_4(w))
    tables = warpgroup_tables() if warpgroup else lane_tables()
    return q, s, *pack_for_mma(*compress_24(q), tables)


def e4m3_activations(t: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random CUDA activations [t, k] quantized per token: (e4m3 values, fp32 scales [t, 1])."""
    x = torch.randn(t, k, device="cuda")
    x_scale = x.abs().amax(dim=1, keepdim=True) / 448.0
    return (x / x_scale).to(torch.float8_e4m3fn), x_scale


def graph_replay(fn) -> torch.Tensor:  # noqa: ANN001
    """fn() captured in a CUDA graph, the graph replayed: its output."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    graph.replay()
    torch.cuda.synchronize()
    return out


def sparse_layer_and_triton(m: int):  # noqa: ANN201
    """(method, a 2:4 layer of 1,024 inputs and 512 + 256 outputs in row order, m bf16 rows,
    the Triton 2:4 kernel's output on them): what a repacked layer is checked against."""
    from harness.engine.quant.sparse24 import ScratchWeight, Sparse24GpuLinearMethod

    torch.manual_seed(m)
    k, sizes = 1024, [512, 256]
    w = torch.randn(sum(sizes), k, device="cuda", dtype=torch.bfloat16) * 0.05
    method = Sparse24GpuLinearMethod(ScratchWeight())
    layer = loaded_linear(method, w, sizes)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    layer.triton_max_rows = 1 << 20
    return method, layer, x, layer(x)


def check_layer_repacked_for(kernel: str, layout: str, m: int) -> None:
    """repack(kernel) moves a 2:4 layer's weight into weight_{layout}_*; every step then runs
    that kernel on the same e4m3 activations the Triton kernel gets (the same products summed
    in another order), and the fp32 reference reads the weight back to the same output."""
    method, layer, x, triton = sparse_layer_and_triton(m)
    reference = layer(x.float())
    method.repack(layer, kernel)
    assert hasattr(layer, f"weight_{layout}_values") and not hasattr(layer, "weight_values")
    out = layer(x)
    err = ((out.double() - triton.double()).norm() / triton.double().norm()).item()
    assert err < 1e-2, err
    assert torch.equal(layer(x.float()), reference)
