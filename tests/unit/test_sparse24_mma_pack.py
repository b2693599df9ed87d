"""The sparse-MMA kernel's weight packing (kernels/sparse24_mma.py) on CPU: every value and
position lands in exactly one lane's registers and reads back unchanged; bad shapes are
refused by name. The kernel itself runs in tests/gpu/test_sparse24_mma.py."""

from __future__ import annotations

import logging

import pytest
import torch

from harness.engine.kernels import sparse24_mma, sparse24_wgmma
from harness.engine.kernels.cpu_build import serialized_wgmma
from harness.engine.kernels.sparse24_mma import (
    form_for,
    lane_tables,
    pack_for_mma,
    splits_for,
    unpack_from_mma,
    warpgroup_tables,
)
from harness.engine.quant.fp8 import prune_2_of_4, quantize_per_channel
from harness.engine.quant.sparse24 import compress_24


def test_each_lane_register_holds_a_distinct_value_and_position_of_the_tile():
    value_row, value_col, meta_row, meta_group = lane_tables()
    values = set(zip(value_row.view(-1).tolist(), value_col.view(-1).tolist(), strict=True))
    nibbles = set(zip(meta_row.view(-1).tolist(), meta_group.view(-1).tolist(), strict=True))
    assert values == {(r, c) for r in range(16) for c in range(32)}  # 512 bytes, once each
    assert nibbles == {(r, q) for r in range(16) for q in range(16)}  # 256 nibbles, once each


def test_lane_layout_follows_the_mma_fragment_rules():
    value_row, value_col, meta_row, meta_group = lane_tables()
    # lane 4 * g + t, register 0 of the first half: row g, group t's two kept values
    assert value_row[4 * 3 + 2, :2].tolist() == [3, 3]
    assert value_col[4 * 3 + 2, :2].tolist() == [4, 5]
    # register 1: row g + 8; register 2: group t + 4; second half: groups 8 and up
    assert value_row[4 * 3 + 2, 2].item() == 11
    assert value_col[4 * 3 + 2, 4].item() == 2 * 6
    assert value_col[4 * 3 + 2, 8].item() == 2 * 10
    # metadata: lane t = 1 holds half 0's groups 4-7, rows g (low 16 bits) and g + 8 (high)
    assert meta_row[4 * 5 + 1].tolist() == [5] * 4 + [13] * 4
    assert meta_group[4 * 5 + 1].tolist() == [4, 5, 6, 7] * 2
    assert meta_group[4 * 5 + 3].tolist() == [12, 13, 14, 15] * 2  # half 1, selector 1


@pytest.mark.parametrize("n,k", [(16, 64), (48, 192)])
def test_pack_then_unpack_is_the_compressed_weight(n: int, k: int, monkeypatch):
    monkeypatch.setattr(sparse24_mma, "ROW_TILES_PER_CHUNK", 2)  # 48 rows: two chunks
    torch.manual_seed(0)
    w, _ = quantize_per_channel(prune_2_of_4(torch.randn(n, k)))
    values, meta = compress_24(w)
    packed_v, packed_m = pack_for_mma(values, meta)
    assert packed_v.shape == (n // 16, k // 64, 32, 16) and packed_v.dtype == torch.uint8
    assert packed_m.shape == (n // 16, k // 64, 32) and packed_m.dtype == torch.int32
    assert packed_v.nbytes + packed_m.nbytes == values.nbytes + meta.nbytes
    back_v, back_m = unpack_from_mma(packed_v, packed_m)
    assert torch.equal(back_v.view(torch.uint8), values.view(torch.uint8))
    assert torch.equal(back_m, meta)


def test_a_metadata_word_packs_nibbles_low_first():
    # one tile whose every group keeps positions 0 and 1 (nibble 0b0100), row 0's group 4
    # keeps 2 and 3 (0b1110): lane 1's low nibble is row 0's group 4
    meta = torch.full((16, 8), 0x44, dtype=torch.uint8)
    meta[0, 2] = 0x4E  # groups 4 (low nibble) and 5
    values = torch.zeros(16, 32, dtype=torch.uint8).view(torch.float8_e4m3fn)
    _, packed_m = pack_for_mma(values, meta)
    assert packed_m[0, 0, 1].item() == 0x4444444E
    assert packed_m[0, 0, 0].item() == 0x44444444


def test_shapes_off_the_tiles_are_refused_naming_the_fallback():
    values = torch.zeros(24, 32, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"out_features % 16 == 0.*\[24, 64\].*Triton 2:4"):
        pack_for_mma(values, torch.zeros(24, 8, dtype=torch.uint8))


def test_splits_fill_the_gpu_and_keep_whole_stages():
    assert splits_for(8192, 8192, 1, 132) == 5  # 64 blocks: 5 splits for 264
    assert splits_for(8192, 8192, 256, 132) == 2  # 64 x 4 blocks
    assert splits_for(57344, 8192, 256, 132) == 1  # 448 x 4 blocks already fill it
    assert splits_for(128, 128, 1, 132) == 1  # one stage: nothing to split


def test_few_tokens_take_the_narrow_deep_form():
    assert [form_for(t)[1] for t in (1, 16, 17, 32, 33, 300)] == [16, 16, 32, 32, 64, 64]


def test_serialized_wgmma_names_each_kernel_ptxas_reports():
    out = (
        "ptxas info    : (C7519) warpgroup.arrive is injected in around line 8987\n"
        "ptxas info    : (C7520) Potential Performance Loss: wgmma.mma_async instructions are "
        "serialized due to program dependence on compiler-inserted WG.AR in divergent path in "
        "the function 'gemm_a'\n"
        "ptxas info    : (C7510) Potential Performance Loss: wgmma.mma_async instructions are "
        "serialized due to wgmma pipeline crossing function boundary at a function call in the "
        "function '_ZN7cutlass13device_kernelI'\n"
    )
    assert serialized_wgmma(out) == ["gemm_a", "_ZN7cutlass13device_kernelI"]
    assert serialized_wgmma("ptxas info    : Used 168 registers") == []


def test_the_kernel_builds_for_hopper_where_nvcc_is(tmp_path, monkeypatch, caplog):
    try:
        sparse24_mma.nvcc()
    except RuntimeError:
        pytest.skip("no nvcc here")
    monkeypatch.setenv("HARNESS_KERNEL_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        cubin = sparse24_mma.build("sm_90a")
    assert sparse24_wgmma.FORM not in caplog.text  # the engine's form keeps its MMAs in flight
    assert cubin.parent == tmp_path and cubin.stat().st_size > 0
    image = cubin.read_bytes()
    forms = [name for name, _, _ in sparse24_mma.FORMS] + list(sparse24_wgmma.FORMS)
    assert all(name.encode() in image for name in forms)
    assert b"mma_sp_f16_probe" in image
    assert sparse24_mma.build("sm_90a") == cubin  # cached: the same file, not rebuilt


def test_warpgroup_threads_hold_each_value_and_position_of_a_64_row_tile_once():
    value_row, value_col, meta_row, meta_group = warpgroup_tables()
    values = set(zip(value_row.view(-1).tolist(), value_col.view(-1).tolist(), strict=True))
    nibbles = set(zip(meta_row.view(-1).tolist(), meta_group.view(-1).tolist(), strict=True))
    assert values == {(r, c) for r in range(64) for c in range(32)}
    assert nibbles == {(r, q) for r in range(64) for q in range(16)}
    # thread 32 w + 4 g + q = 32 + 4 * 3 + 2: register 2 (byte 8) row 16 + 3, columns 16 + 8
    assert value_row[46, 8].item() == 19 and value_col[46, 8:12].tolist() == [24, 25, 26, 27]
    assert meta_row[46].tolist() == [19] * 8 and meta_group[46].tolist() == list(range(8, 16))


def test_warpgroup_pack_round_trip(monkeypatch):
    monkeypatch.setattr(sparse24_mma, "ROW_TILES_PER_CHUNK", 1)  # 128 rows: two chunks
    torch.manual_seed(1)
    w, _ = quantize_per_channel(prune_2_of_4(torch.randn(128, 128)))
    values, meta = compress_24(w)
    packed_v, packed_m = pack_for_mma(values, meta, warpgroup_tables())
    assert packed_v.shape == (2, 2, 128, 16) and packed_m.shape == (2, 2, 128)
    back_v, back_m = unpack_from_mma(packed_v, packed_m, warpgroup_tables())
    assert torch.equal(back_v.view(torch.uint8), values.view(torch.uint8))
    assert torch.equal(back_m, meta)
    with pytest.raises(ValueError, match=r"out_features % 64 == 0.*\[48, 128\]"):
        pack_for_mma(values[:48], meta[:48], warpgroup_tables())


def test_wgmma_splits_fill_the_gpu_once_in_whole_depths():
    assert sparse24_wgmma.splits_for(8192, 8192, 1, 132) == 5  # 32 blocks of 256 rows: 160
    assert sparse24_wgmma.splits_for(8192, 8192, 64, 132) == 5
    assert sparse24_wgmma.splits_for(8192, 8192, 512, 132) == 1  # 32 x 8 blocks already
    assert sparse24_wgmma.splits_for(57344, 8192, 1, 132) == 1  # 224 blocks
    assert sparse24_wgmma.splits_for(256, 128, 1, 132) == 1  # two steps, depth 4: one split


def test_cutlass_headers_missing_name_the_place_and_the_fix(tmp_path, monkeypatch):
    from harness.engine.kernels import sparse24_cutlass

    monkeypatch.setenv("CUTLASS_PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=f"no CUTLASS headers in {tmp_path}/include"):
        sparse24_cutlass.include_dirs()
    (tmp_path / "include" / "cutlass").mkdir(parents=True)
    (tmp_path / "tools" / "util" / "include" / "cutlass").mkdir(parents=True)
    assert sparse24_cutlass.include_dirs()[0] == tmp_path / "include"


def test_cutlass_builds_with_its_mmas_in_flight_where_nvcc_and_headers_are(
    tmp_path, monkeypatch, caplog
):
    from harness.engine.kernels import sparse24_cutlass

    try:
        sparse24_mma.nvcc()
    except RuntimeError:
        pytest.skip("no nvcc here")
    if not sparse24_cutlass.headers_found():
        pytest.skip("no CUTLASS headers (pip install --no-deps nvidia-cutlass)")
    monkeypatch.setenv("HARNESS_KERNEL_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        lib = sparse24_cutlass.build()  # ~4 minutes on 2 cores
    assert lib.stat().st_size > 0
    assert "serialized" not in caplog.text  # e.g. without -DNDEBUG: CUTLASS's asserts
