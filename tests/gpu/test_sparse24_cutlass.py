"""CUTLASS's SM90 2:4 FP8 GEMM (kernels/sparse24_cutlass.py): its compressor and GEMM against
the dense product of the same pruned weight over the 70B's shapes, and in a CUDA graph.
Hopper only; needs nvcc and CUTLASS's headers (nvidia-cutlass or $CUTLASS_PATH)."""

from __future__ import annotations

import pytest
import torch

from harness.engine.kernels.sparse24_cutlass import VARIANTS, headers_found
from tests.linears import check_layer_repacked_for, e4m3_activations, graph_replay, packed_24_weight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
        reason="CUTLASS's sparse GEMM here is Hopper's (sm_90a)",
    ),
    pytest.mark.skipif(not headers_found(), reason="no CUTLASS headers"),
]

SHAPES = [(10240, 8192), (8192, 28672), (256, 128)]


# bf16: scaled in CUTLASS's epilogue; fp32: the unscaled GEMM, then reduce_splits
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [1, 7, 64, 100, 512])
@pytest.mark.parametrize("n,k", SHAPES)
def test_gemm_matches_the_dense_product(n: int, k: int, t: int, out_dtype: torch.dtype) -> None:
    from harness.engine.kernels.sparse24_cutlass import compress, sparse24_cutlass_gemm

    q, s, _, _ = packed_24_weight(n, k)
    values, meta = compress(q)
    xq, x_scale = e4m3_activations(t, k)
    out = sparse24_cutlass_gemm(xq, x_scale, values, meta, s, out_dtype)
    assert out.dtype == out_dtype
    ref = (xq.float() * x_scale) @ (q.float() * s.view(-1, 1)).t()
    tol = 1e-3 if out_dtype == torch.float32 else 8e-3  # bf16: 8 bits of mantissa
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.fixture(scope="module")
def every_variant_built() -> None:
    from harness.engine.kernels.sparse24_cutlass import build_all

    build_all()  # side by side, not one test's build after another


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])  # the engine's: bf16
@pytest.mark.parametrize("t", [7, 300])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_matches_the_dense_product_on_one_compressed_weight(
    every_variant_built: None, variant: str, t: int, out_dtype: torch.dtype
) -> None:
    from harness.engine.kernels.sparse24_cutlass import compress, sparse24_cutlass_gemm

    q, s, _, _ = packed_24_weight(*SHAPES[0])
    values, meta = compress(q)  # the engine's variant compresses for every one
    xq, x_scale = e4m3_activations(t, q.shape[1])
    out = sparse24_cutlass_gemm(xq, x_scale, values, meta, s, out_dtype, variant)
    ref = (xq.float() * x_scale) @ (q.float() * s.view(-1, 1)).t()
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < 1e-2, err  # fast accumulation keeps fewer bits of the sums


def test_gemm_replays_in_a_cuda_graph() -> None:
    from harness.engine.kernels.sparse24_cutlass import compress, sparse24_cutlass_gemm

    q, s, _, _ = packed_24_weight(*SHAPES[0])
    values, meta = compress(q)
    xq, x_scale = e4m3_activations(16, q.shape[1])
    eager = sparse24_cutlass_gemm(xq, x_scale, values, meta, s)
    replayed = graph_replay(lambda: sparse24_cutlass_gemm(xq, x_scale, values, meta, s))
    assert torch.equal(replayed, eager)


def test_decompress_gives_back_the_pruned_weight() -> None:
    from harness.engine.kernels.sparse24_cutlass import compress, decompress

    q, _, _, _ = packed_24_weight(*SHAPES[2])
    back = decompress(*compress(q), *q.shape)
    assert torch.equal(back.float(), q.float())  # a pruned -0.0 comes back +0.0


@pytest.mark.parametrize("m", [1, 48, 300])
def test_sparse_linear_on_cutlass_matches_the_triton_kernel_and_the_reference(m: int) -> None:
    """repack(cutlass) compresses the layer CUTLASS's way; every step then runs its GEMM on the
    same e4m3 activations the Triton kernel gets, and the fp32 reference reads the weight back."""
    check_layer_repacked_for("cutlass", "cl", m)
