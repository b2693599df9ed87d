"""Compressed 2:4 FP8 kernels (the expansion, the FP8 GEMM with meta=) against the plain-torch
references, and the Sparse linear's two paths (sparse GEMM, expand + cuBLAS) against each
other."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SHAPES = [(10240, 8192), (8192, 28672), (130, 296)]  # 70B qkv, 70B down, ragged tails


def _compressed(n: int, k: int):  # noqa: ANN202
    from harness.engine.quant.fp8 import prune_2_of_4, quantize_per_channel
    from harness.engine.quant.sparse24 import compress_24

    torch.manual_seed(n + k)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    q, s = quantize_per_channel(prune_2_of_4(w))
    return q, *compress_24(q), s.view(1, -1).contiguous()


@pytest.mark.parametrize("n,k", SHAPES)
def test_decompress_kernel_matches_reference(n: int, k: int) -> None:
    from harness.engine.kernels.sparse24_gemm import decompress_24_triton
    from harness.engine.quant.sparse24 import decompress_24

    dense, values, meta, _ = _compressed(n, k)
    out = decompress_24_triton(values, meta, torch.empty_like(dense))
    assert torch.equal(out.float(), decompress_24(values, meta).float())
    assert torch.equal(out.float(), dense.float())


@pytest.mark.parametrize("m", [1, 16, 32, 33, 64, 100, 160, 256])  # every SPARSE_CONFIGS row
@pytest.mark.parametrize("n,k", SHAPES)
def test_sparse_gemm_matches_reference(m: int, n: int, k: int) -> None:
    from harness.engine.kernels.fp8_gemm import fp8_gemm_reference, fp8_gemm_triton
    from harness.engine.quant.fp8 import quantize_per_token

    dense, values, meta, ws = _compressed(n, k)
    xq, xs = quantize_per_token(torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3)
    out = fp8_gemm_triton(xq, xs, values, ws, meta=meta)
    ref = fp8_gemm_reference(xq, xs, dense, ws)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=1.6e-2, atol=1e-3 * ref.abs().max())


@pytest.mark.parametrize(
    "split_k,swap,block_m", [(2, False, 64), (7, False, 64), (1, True, 16), (1, True, 128)]
)
def test_sparse_gemm_configs_match_reference(split_k: int, swap: bool, block_m: int) -> None:
    """Split K, and the expanded tile as the MMA's register operand (swap)."""
    from harness.engine.kernels.fp8_gemm import GemmConfig, fp8_gemm_reference, fp8_gemm_triton
    from harness.engine.quant.fp8 import quantize_per_token

    dense, values, meta, ws = _compressed(8192, 2048)
    xq, xs = quantize_per_token(torch.randn(100, 2048, device="cuda", dtype=torch.bfloat16))
    cfg = GemmConfig(block_m, 128, 128, 4, 3, split_k=split_k, swap=swap)
    out = fp8_gemm_triton(xq, xs, values, ws, config=cfg, meta=meta)
    ref = fp8_gemm_reference(xq, xs, dense, ws)
    torch.testing.assert_close(out.float(), ref.float(), rtol=1.6e-2, atol=1e-3 * ref.abs().max())


@pytest.mark.parametrize("m", [1, 48, 300])
def test_sparse_linear_paths_agree_with_the_reference(m: int) -> None:
    from harness.engine.quant.fp8 import FP8LinearMethod
    from harness.engine.quant.sparse24 import ScratchWeight, Sparse24GpuLinearMethod
    from tests.linears import loaded_linear

    torch.manual_seed(m)
    k, sizes = 1024, [512, 256]
    w = torch.randn(sum(sizes), k, device="cuda", dtype=torch.bfloat16) * 0.05
    compressed = loaded_linear(Sparse24GpuLinearMethod(ScratchWeight()), w, sizes)
    reference = loaded_linear(FP8LinearMethod(sparse24=True), w, sizes)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = reference(x)
    outs = []
    for max_rows in (0, 1 << 20):  # expand + cuBLAS, then the sparse kernel
        compressed.triton_max_rows = max_rows
        outs.append(compressed(x))
        err = ((outs[-1].double() - ref.double()).norm() / ref.double().norm()).item()
        assert err < 5e-2  # per-token e4m3 activations: ~2-3% relative error
    err = ((outs[0].double() - outs[1].double()).norm() / outs[1].double().norm()).item()
    assert err < 1e-2  # same quantized operands; only the summation order differs


def test_compressed_model_holds_no_more_gpu_memory_than_its_tensors() -> None:
    """The dense weights' memory goes back to the driver, not into cached fragments (which
    would count as used when the KV cache is sized from free memory)."""
    from harness.engine.loader import build_model
    from harness.engine.model.llama import LlamaConfig
    from harness.engine.quant.base import quant_config_for

    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    config = LlamaConfig(2048, 4096, 11008, 4, 32, 8, max_position_embeddings=256)
    quant = quant_config_for("Sparse", torch.device("cuda"))
    model = build_model(config, quant, torch.bfloat16, torch.device("cuda"), "dummy")
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved() - before
    state = model.state_dict()
    tensors = sum(t.nbytes for t in state.values()) + quant.scratch.buffer.nbytes
    # Segments round up by less than 2 MiB each. Fragments left by the 709 MB of dense FP8
    # weights would hold up to 37.5% of them (266 MB) beyond this.
    assert held <= tensors + (len(state) + 1) * 2**21, (held, tensors)
