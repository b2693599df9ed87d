"""The sparse-MMA kernel (kernels/sparse24_mma.cu): the register layouts pack_for_mma assumes,
checked against the hardware one mma.sp at a time, and the weights' e4m3 -> f16 byte order;
then the whole GEMM against the dense product of the same weights, the expansion, the engine's
linear, eagerly and replayed from a CUDA graph. Needs nvcc."""

from __future__ import annotations

import pytest
import torch

from tests.linears import graph_replay, packed_24_weight, sparse_layer_and_triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SHAPES = [(10240, 8192), (8192, 28672), (128, 64), (48, 192)]  # 70B qkv, 70B down, small


def _probe_operands(selector: int, seed: int = 0, meta_per_row: bool = False):  # noqa: ANN202
    """A 2:4-sparse 16 x 32 A and a 32 x 8 B of small integers (exact in f16 and fp32), packed
    into lane registers as pack_for_mma lays out half `selector` of a tile; the expected D.
    meta_per_row: the other metadata layout a reading of the PTX ISA allows (the selected
    lanes hold row g's 8 groups, then row g + 8's), tried when the packed one fails."""
    from harness.engine.kernels.sparse24_mma import lane_tables
    from harness.engine.quant.fp8 import prune_2_of_4

    g = torch.Generator().manual_seed(seed)
    a = prune_2_of_4(torch.randint(1, 8, (16, 32), generator=g).float())
    b = torch.randint(-4, 5, (32, 8), generator=g).float()
    groups = a.view(16, 8, 4)
    kept = (groups != 0).nonzero()[:, 2].view(16, 8, 2)  # positions i0 < i1 of each group
    vals = groups.gather(-1, kept).view(16, 16)  # compressed row: 2 values a group
    nibble = kept[..., 0] | kept[..., 1] << 2  # [16, 8]
    value_row, value_col, meta_row, meta_group = lane_tables()
    h = selector
    regs = vals[value_row[:, 8 * h : 8 * h + 8], value_col[:, 8 * h : 8 * h + 8] - 16 * h]
    a_regs = regs.half().view(32, 4, 2).view(torch.int32).view(32, 4)  # element e=0 low half
    meta = torch.zeros(32, dtype=torch.int64)
    for lane in range(32):
        if meta_group[lane, 0] // 8 != h:
            continue  # the other selector's lanes: not read
        for i in range(8):
            row, group = meta_row[lane, i], meta_group[lane, i] - 8 * h
            if meta_per_row:
                row, group = lane // 4 + 8 * (lane % 2), i
            meta[lane] |= int(nibble[row, group]) << (4 * i)
    # B fragment: lane (g, t) register j holds rows 2t + 8j, +1 of column g (low half first)
    lanes = torch.arange(32)
    rows = (2 * (lanes % 4))[:, None, None] + 8 * torch.arange(4)[None, :, None]
    rows = rows + torch.arange(2)[None, None, :]
    b_regs = b[rows, (lanes // 4)[:, None, None]].half().view(torch.int32).view(32, 4)
    meta = torch.where(meta >= 2**31, meta - 2**32, meta)  # as the int32 the lane reads
    return a_regs, b_regs, meta.to(torch.int32), a @ b


def _probe(selector: int, meta_per_row: bool = False) -> bool:
    """Whether one mma.sp on _probe_operands' registers gives their product."""
    from harness.engine.kernels.sparse24_mma import module

    a_regs, b_regs, meta, expected = _probe_operands(selector, meta_per_row=meta_per_row)
    d = torch.empty(32, 4, device="cuda")
    dev = [x.cuda().contiguous() for x in (a_regs, b_regs, meta)]
    module().launch("mma_sp_f16_probe", (1, 1, 1), 32, *dev, selector, d)
    torch.cuda.synchronize()
    # D fragment: lane (g, t): c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g + 8
    lanes = torch.arange(32)
    rows = (lanes // 4)[:, None] + 8 * (torch.arange(4) // 2)[None, :]
    cols = (2 * (lanes % 4))[:, None] + (torch.arange(4) % 2)[None, :]
    return torch.equal(d.cpu(), expected[rows, cols])


@pytest.mark.parametrize("selector", [0, 1])
def test_one_mma_sp_reads_the_registers_as_packed(selector: int) -> None:
    if not _probe(selector):
        other = _probe(selector, meta_per_row=True)
        pytest.fail(
            f"mma.sp (selector {selector}) disagrees with pack_for_mma's layout; the "
            f"one-row-a-lane metadata layout {'matches' if other else 'fails too'}"
        )


def test_weights_unpack_low_byte_to_low_half() -> None:
    from harness.engine.kernels.sparse24_mma import module

    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F]  # e4m3's NaNs left out
    pairs = codes | codes.flip(0) << 8  # every code in the low byte, another in the high
    out = torch.empty_like(pairs, device="cuda")
    module().launch("e4m3x2_probe", (1, 1, 1), 256, pairs.cuda(), out, pairs.numel())
    halves = out.cpu().view(torch.float16).view(-1, 2).float()
    e4m3 = lambda b: b.to(torch.uint8).view(torch.float8_e4m3fn).float()  # noqa: E731
    assert torch.equal(halves[:, 0], e4m3(codes)) and torch.equal(halves[:, 1], e4m3(codes.flip(0)))


@pytest.mark.parametrize("t", [1, 7, 16, 17, 32, 33, 64, 100, 320])
@pytest.mark.parametrize("n,k", SHAPES)
def test_gemm_matches_the_dense_product(n: int, k: int, t: int) -> None:
    from harness.engine.kernels.sparse24_mma import sparse24_mma_gemm

    q, _, packed_v, packed_m = packed_24_weight(n, k)
    x16 = torch.randn(t, k, device="cuda").clamp(-4, 4).half()
    out = sparse24_mma_gemm(x16, packed_v, packed_m)
    ref = x16.float() @ q.float().t()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


@pytest.mark.parametrize("t", [1, 20, 100])
def test_linear_takes_e4m3_activations_with_their_scales(t: int) -> None:
    """A fused norm's output (e4m3 and a scale a token) goes to f16 exactly in x_to_f16."""
    from harness.engine.kernels.sparse24_mma import sparse24_mma_linear

    q, s, packed_v, packed_m = packed_24_weight(*SHAPES[0])
    x = torch.randn(t, q.shape[1], device="cuda")
    x_scale = x.abs().amax(dim=1, keepdim=True) / 448.0
    xq = (x / x_scale).to(torch.float8_e4m3fn)
    out = sparse24_mma_linear((xq, x_scale), packed_v, packed_m, s, torch.float32)
    ref = (xq.float() * x_scale) @ (q.float() * s.view(-1, 1)).t()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


@pytest.mark.parametrize("n,k", SHAPES[:1])
def test_linear_with_scales_in_a_cuda_graph(n: int, k: int) -> None:
    from harness.engine.kernels.sparse24_mma import sparse24_mma_linear

    q, s, packed_v, packed_m = packed_24_weight(n, k)
    x = torch.randn(200, k, device="cuda", dtype=torch.bfloat16)
    eager = sparse24_mma_linear(x, packed_v, packed_m, s)
    ref = (x.float() @ (q.float() * s.view(-1, 1)).t()).to(torch.bfloat16)
    atol = 2e-2 * ref.abs().max().item()
    torch.testing.assert_close(eager.float(), ref.float(), rtol=2e-2, atol=atol)
    replayed = graph_replay(lambda: sparse24_mma_linear(x, packed_v, packed_m, s))
    assert torch.equal(replayed, eager)


def test_expand_gives_back_the_dense_weight() -> None:
    from harness.engine.kernels.sparse24_mma import expand_from_mma

    q, _, packed_v, packed_m = packed_24_weight(512, 1024)
    out = expand_from_mma(packed_v, packed_m, torch.empty_like(q))
    assert torch.equal(out.float(), q.float())  # pruned -0.0 comes back as 0.0: no sign kept


@pytest.mark.parametrize("m", [1, 48, 300])
def test_sparse_linear_on_the_sparse_tensor_cores_agrees_with_triton(m: int) -> None:
    """repack(mma) repacks the layer; its small steps (mma.sp) and large ones (expand + cuBLAS)
    agree with the Triton kernel's output of the same layer."""
    method, layer, x, triton = sparse_layer_and_triton(m)
    method.repack(layer, "mma")
    assert hasattr(layer, "weight_mma_values") and not hasattr(layer, "weight_values")
    for max_rows in (1 << 20, 0):  # the sparse tensor cores, then expand + cuBLAS
        layer.triton_max_rows = max_rows
        out = layer(x)
        err = ((out.double() - triton.double()).norm() / triton.double().norm()).item()
        assert err < 5e-2, (max_rows, err)  # Triton's e4m3 activations: ~2-3% (bf16 -> f16 here)
