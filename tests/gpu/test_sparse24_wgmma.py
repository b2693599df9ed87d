"""The wgmma.sp kernel (kernels/sparse24_wgmma.py, sparse24_mma.cu's sparse24_wgmma_gemm_*):
the warpgroup register layouts warpgroup_tables assumes, checked against the hardware with one
wgmma.mma_async.sp, then the GEMM against the dense product of the same weights over the 70B's
shapes and both forms, and in a CUDA graph. Hopper (sm_90a) only; needs nvcc."""

from __future__ import annotations

import pytest
import torch

from harness.engine.kernels.sparse24_wgmma import FORMS
from tests.linears import (
    check_layer_repacked_for,
    e4m3_activations,
    graph_replay,
    packed_24_weight,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
        reason="wgmma is Hopper's (sm_90a)",
    ),
]

SHAPES = [(10240, 8192), (8192, 28672), (128, 64)]  # 70B qkv, 70B down, one tile's width


def _wgmma_operands(meta_by_quad_half: bool = True, seed: int = 0):  # noqa: ANN202
    """A 2:4-sparse 64 x 64 A and a 64 x 8 B of small integers (exact in e4m3 and fp32), A
    packed by pack_for_mma with warpgroup_tables (one tile: 128 threads' registers and
    metadata words); B^T [8, 64] e4m3; the expected D [128 threads, 4] (thread t = 32 w +
    4 g + q, d_i: row 16 w + g + 8 (i // 2), column 2 q + i % 2). meta_by_quad_half=False:
    the other reading of the metadata's rows and groups (row by q // 2, groups by q % 2)."""
    from harness.engine.kernels.sparse24_mma import pack_for_mma, warpgroup_tables
    from harness.engine.quant.fp8 import prune_2_of_4
    from harness.engine.quant.sparse24 import compress_24

    gen = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (64, 64), generator=gen) * 2 - 1
    a = prune_2_of_4((torch.randint(1, 8, (64, 64), generator=gen) * sign).float())
    b = torch.randint(-4, 5, (64, 8), generator=gen).float()
    tables = warpgroup_tables()
    if not meta_by_quad_half:
        t = torch.arange(128)
        base, q = 16 * (t // 32) + t % 32 // 4, t % 4
        meta_row = (base + 8 * (q // 2))[:, None].expand(128, 8)
        meta_group = (8 * (q % 2))[:, None] + torch.arange(8)[None, :]
        tables = (*tables[:2], meta_row, meta_group)
    packed_v, packed_m = pack_for_mma(*compress_24(a.to(torch.float8_e4m3fn)), tables)
    t = torch.arange(128)
    base, q, i = 16 * (t // 32) + t % 32 // 4, t % 4, torch.arange(4)
    d_rows = base[:, None] + 8 * (i // 2)[None, :]
    d_cols = 2 * q[:, None] + (i % 2)[None, :]
    b_t = b.t().contiguous().to(torch.float8_e4m3fn).view(torch.uint8)
    a_regs = packed_v.view(128, 16).view(torch.int32)
    return a_regs, packed_m.view(128), b_t, (a @ b)[d_rows, d_cols]


def _wgmma_probe(
    meta_by_quad_half: bool = True, lbo: int = 128, sbo: int = 1024
) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """lbo 128 / sbo 1024: the descriptor's leading offset read as the K step between core
    matrices (the GEMM's assumption); swapped, the other reading."""
    from harness.engine.kernels.sparse24_mma import module

    a_regs, meta, b_t, expected = _wgmma_operands(meta_by_quad_half)
    d = torch.full((128, 4), float("nan"), device="cuda")
    dev = [x.cuda().contiguous() for x in (a_regs, meta, b_t)]
    module().launch("wgmma_sp_e4m3_probe", (1, 1, 1), 128, *dev, d, lbo, sbo)
    torch.cuda.synchronize()
    return torch.equal(d.cpu(), expected), d.cpu(), expected


def test_one_wgmma_sp_e4m3_reads_the_registers_as_laid_out() -> None:
    """FP8 at the sparse tensor cores' own rate (target 2's route): one wgmma.mma_async.sp
    m64n8k64 e4m3 on registers laid out as _wgmma_operands says gives the dense product."""
    ok, d, expected = _wgmma_probe()
    if not ok:
        others = {
            f"metadata rows {rows}, descriptor {desc}": _wgmma_probe(
                rows == "as assumed", *strides
            )[0]
            for rows in ("as assumed", "by q // 2")
            for desc, strides in (("as assumed", (128, 1024)), ("swapped", (1024, 128)))
        }
        same_values = torch.equal(d.flatten().sort().values, expected.flatten().sort().values)
        pytest.fail(
            f"wgmma.sp disagrees with the assumed layouts: largest error "
            f"{(d - expected).abs().max().item()}, {int((d != expected).sum())} of 512 wrong; "
            f"the same values permuted: {same_values}; matching: "
            f"{[k for k, v in others.items() if v] or 'none of the other readings'}"
        )


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("t", [1, 7, 64, 65, 100, 256, 300, 512])
@pytest.mark.parametrize("n,k", SHAPES)
def test_gemm_matches_the_dense_product(n: int, k: int, t: int, form: str) -> None:
    from harness.engine.kernels.sparse24_wgmma import sparse24_wgmma_gemm

    q, s, packed_v, packed_m = packed_24_weight(n, k, warpgroup=True)
    xq, x_scale = e4m3_activations(t, k)
    out = sparse24_wgmma_gemm(xq, x_scale, packed_v, packed_m, s, torch.float32, form)
    ref = (xq.float() * x_scale) @ (q.float() * s.view(-1, 1)).t()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


def test_gemm_replays_in_a_cuda_graph() -> None:
    from harness.engine.kernels.sparse24_wgmma import sparse24_wgmma_gemm

    q, s, packed_v, packed_m = packed_24_weight(*SHAPES[0], warpgroup=True)
    xq, x_scale = e4m3_activations(16, q.shape[1])
    eager = sparse24_wgmma_gemm(xq, x_scale, packed_v, packed_m, s)
    replayed = graph_replay(lambda: sparse24_wgmma_gemm(xq, x_scale, packed_v, packed_m, s))
    assert torch.equal(replayed, eager)


@pytest.mark.parametrize("m", [1, 48, 300])
def test_sparse_linear_on_wgmma_matches_the_triton_kernel_and_the_reference(m: int) -> None:
    """repack(wgmma) repacks the layer; every step then runs wgmma.sp on the same e4m3 activations
    the Triton kernel gets, and the fp32 reference reads the packed weight back."""
    check_layer_repacked_for("wgmma", "wg", m)
