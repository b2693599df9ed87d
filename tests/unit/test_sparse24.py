"""Compressed 2:4 FP8 storage (quant/sparse24.py): layout, round trip, errors, and the linear
method's reference path on CPU (the Triton kernels are compared in tests/gpu)."""

from __future__ import annotations

import pytest
import torch

from harness.engine.quant.fp8 import FP8LinearMethod, prune_2_of_4, quantize_per_channel
from harness.engine.quant.sparse24 import (
    STORED_BYTES_PER_WEIGHT,
    ScratchWeight,
    Sparse24GpuLinearMethod,
    compress_24,
    decompress_24,
)
from tests.linears import loaded_linear


def _pruned_fp8(n: int, k: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return quantize_per_channel(prune_2_of_4(torch.randn(n, k)))[0]


def test_layout_values_then_positions_two_groups_per_byte():
    w = torch.tensor([[0.0, 2.0, 0.0, -3.0, 4.0, 0.0, 0.0, 0.0]]).to(torch.float8_e4m3fn)
    values, meta = compress_24(w)
    # group 0 keeps inputs 1 and 3; group 1 keeps input 0 and pads with the zero at input 1
    assert values.float().tolist() == [[2.0, -3.0, 4.0, 0.0]]
    assert meta.tolist() == [[(1 | 3 << 2) | (0 | 1 << 2) << 4]]


@pytest.mark.parametrize("n,k", [(3, 8), (64, 96), (5000, 16)])  # 5000 rows: two chunks
def test_round_trip_is_exact_and_stores_five_eighths(n: int, k: int):
    w = _pruned_fp8(n, k)
    values, meta = compress_24(w)
    assert values.shape == (n, k // 2) and values.dtype == torch.float8_e4m3fn
    assert meta.shape == (n, k // 8) and meta.dtype == torch.uint8
    assert values.nbytes + meta.nbytes == STORED_BYTES_PER_WEIGHT * w.nbytes
    assert torch.equal(decompress_24(values, meta).float(), w.float())


def test_dense_weights_are_refused_with_the_row_and_the_fix():
    w = _pruned_fp8(6, 16)
    w[4, 8:12] = torch.tensor([1.0, 1.0, 1.0, 0.0]).to(w.dtype)
    with pytest.raises(ValueError, match=r"row 4 .*not 2:4 sparse.*--model_opt=Sparse"):
        compress_24(w)
    with pytest.raises(ValueError, match="divisible by 8, got 12"):
        compress_24(_pruned_fp8(2, 12))


def test_compressed_method_frees_the_dense_weight_and_computes_the_reference():
    torch.manual_seed(1)
    k, sizes = 64, [24, 16]
    w = torch.randn(sum(sizes), k)
    scratch = ScratchWeight()
    compressed = loaded_linear(Sparse24GpuLinearMethod(scratch), w, sizes)
    reference = loaded_linear(FP8LinearMethod(sparse24=True), w, sizes)
    assert not hasattr(compressed, "weight")
    assert compressed.weight_values.shape == (40, 32) and compressed.weight_meta.shape == (40, 8)
    assert scratch.buffer.numel() == 40 * 64  # the largest linear's dense size
    x = torch.randn(5, k)
    assert torch.equal(compressed(x), reference(x))  # fp32: the same reference math


@pytest.mark.parametrize("kernel", ["mma", "wgmma"])
def test_repacked_for_the_sparse_tensor_cores_the_reference_is_unchanged(kernel):
    """mma (16-row tiles) / wgmma (64-row tiles) repack the weight where it fits; the
    fp32 reference reads it back to the same product. A layer off the tiles keeps its layout."""
    torch.manual_seed(3)
    k, sizes = 128, [64, 64]
    method = Sparse24GpuLinearMethod(ScratchWeight())
    layer = loaded_linear(method, torch.randn(sum(sizes), k), sizes)
    x = torch.randn(5, k)
    before = layer(x)
    method.repack(layer, kernel)
    packed = "weight_mma_values" if kernel == "mma" else "weight_wg_values"
    assert hasattr(layer, packed) and not hasattr(layer, "weight_values")
    assert torch.equal(layer(x), before)
    odd = loaded_linear(method, torch.randn(48, k), [48])  # 48 rows: not 64-row tiles
    method.repack(odd, kernel)
    assert hasattr(odd, "weight_values") == (kernel == "wgmma")


def test_an_unknown_kernel_is_refused_by_name_and_the_weight_kept():
    method = Sparse24GpuLinearMethod(ScratchWeight())
    layer = loaded_linear(method, torch.randn(64, 128), [64])
    with pytest.raises(ValueError, match="no 2:4 kernel 'wmma': mma, wgmma or cutlass"):
        method.repack(layer, "wmma")
    assert hasattr(layer, "weight_values")


def test_the_expansion_buffer_is_freed_only_when_no_linear_expands():
    from harness.engine.quant.sparse24 import release_unused_scratch

    torch.manual_seed(4)
    scratch = ScratchWeight()
    method = Sparse24GpuLinearMethod(scratch)
    layers = [loaded_linear(method, torch.randn(64, 128), [64]) for _ in range(2)]
    method.repack(layers[0], "wgmma")
    release_unused_scratch(layers)  # layers[1] still expands its steps past triton_max_rows
    assert scratch.buffer is not None
    method.repack(layers[1], "wgmma")
    release_unused_scratch(layers)
    assert scratch.buffer is None


def test_in_features_not_divisible_by_8_keep_the_dense_layout():
    torch.manual_seed(2)
    w, x = torch.randn(8, 12), torch.randn(3, 12)
    layer = loaded_linear(Sparse24GpuLinearMethod(ScratchWeight()), w, [4, 4])
    assert hasattr(layer, "weight") and not hasattr(layer, "weight_values")
    reference = loaded_linear(FP8LinearMethod(sparse24=True), w, [4, 4])
    assert torch.equal(layer(x), reference(x))


def test_position_table_stays_on_the_cpu_when_built_under_the_meta_device():
    """The loader builds models under `torch.device("meta")`, and on CUDA that is where the
    Sparse method first imports quant/sparse24.py: a table built there had no data (every 2:4
    GPU test failed with "Cannot copy out of meta tensor" on the H100)."""
    from harness.engine.quant.sparse24 import _position_table

    with torch.device("meta"):
        table = _position_table()
    assert table.device.type == "cpu"
    assert int(table[0b0101]) == 0 | 2 << 2  # nonzeros at positions 0 and 2
