"""Triton paged KV write and split-K decode attention vs their plain-torch references."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_write_kv_cache_matches_reference(cache_dtype: torch.dtype) -> None:
    from harness.engine.kernels.paged_attention import write_kv_cache, write_kv_cache_reference

    hkv, blocks, bs, d, n = 8, 64, 16, 128, 300
    qkv = torch.randn(n, (16 + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16)
    k = qkv[:, 16 * d : (16 + hkv) * d].view(n, hkv, d)  # strided like the model's split
    v = qkv[:, (16 + hkv) * d :].view(n, hkv, d)
    slots = torch.randperm(blocks * bs, device="cuda")[:n]
    slots[::7] = -1  # padded rows write nowhere
    caches = [torch.randn(hkv, blocks, bs, d, device="cuda").to(cache_dtype) for _ in range(2)]
    caches += [c.clone() for c in caches]  # untouched slots must stay equal too
    write_kv_cache(k, v, caches[0], caches[1], slots, 2.0, 2.0)
    write_kv_cache_reference(k, v, caches[2], caches[3], slots, 2.0, 2.0)
    for out, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8))


def _decode_inputs(seed: int, group: int, cache_dtype: torch.dtype) -> tuple:
    """q, K and V caches, block tables and contexts of 9 requests: one key, a full table, a
    context of 0 (zeros out) and six random lengths."""
    torch.manual_seed(seed)
    b, hkv, d, bs, max_blocks = 9, 4, 128, 16, 40
    num_blocks = b * max_blocks
    k_cache = torch.randn(hkv, num_blocks, bs, d, device="cuda").to(cache_dtype)
    v_cache = torch.randn(hkv, num_blocks, bs, d, device="cuda").to(cache_dtype)
    tables = torch.randperm(num_blocks, device="cuda").view(b, max_blocks)
    ctx = torch.randint(1, max_blocks * bs, (b,), device="cuda", dtype=torch.int32)
    ctx[0], ctx[1], ctx[2] = 1, max_blocks * bs, 0
    q = torch.randn(b, hkv * group, d, device="cuda", dtype=torch.bfloat16)
    return q, k_cache, v_cache, tables, ctx


def _check_decode(inputs: tuple, out: torch.Tensor) -> None:
    from harness.engine.kernels.paged_attention import paged_decode_reference

    q, k_cache, v_cache, tables, ctx = inputs
    ref = paged_decode_reference(q, k_cache, v_cache, tables, ctx, q.shape[-1] ** -0.5, 0.5, 0.5)
    assert torch.isfinite(out).all() and torch.equal(out[2], torch.zeros_like(out[2]))
    keep = ctx > 0
    assert _rel(out[keep], ref[keep]) < 1e-2


@pytest.mark.parametrize("group,num_splits", [(1, 1), (8, 1), (8, 4), (4, 7), (1, 9), (8, 32)])
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_paged_decode_matches_reference(
    group: int, num_splits: int, cache_dtype: torch.dtype
) -> None:
    from harness.engine.kernels.paged_attention import paged_decode

    inputs = _decode_inputs(group * 100 + num_splits, group, cache_dtype)
    d = inputs[0].shape[-1]
    _check_decode(inputs, paged_decode(*inputs, d**-0.5, num_splits, 0.5, 0.5))


@pytest.mark.parametrize("split_keys", [32, 256, 1024])
@pytest.mark.parametrize("group", [1, 8])
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_paged_decode_fixed_splits_match_reference(
    split_keys: int, group: int, cache_dtype: torch.dtype
) -> None:
    """Splits of a fixed number of keys (decode_splits), a request running only those its
    keys reach: 640-key tables in 10, 3 or 1 split (32 keys round up to 64)."""
    from harness.engine.kernels.paged_attention import decode_splits, paged_decode

    inputs = _decode_inputs(group + split_keys, group, cache_dtype)
    splits, keys = decode_splits(9, 4, 40 * 16, 132, split_keys)
    assert (splits, keys) == {32: (10, 64), 256: (3, 256), 1024: (1, 1024)}[split_keys]
    d = inputs[0].shape[-1]
    _check_decode(inputs, paged_decode(*inputs, d**-0.5, splits, 0.5, 0.5, None, keys))


@pytest.mark.parametrize("split_keys", [0, 64])
def test_paged_decode_reuses_given_partials(split_keys: int) -> None:
    """The engine hands every layer of a step the same partials (split_partials): NaN left in
    them before must not reach the output, with splits a short request's keys do not reach
    (10 splits of 64 keys, or 32 equal parts, of contexts from 0 to 640 keys), and a second
    call with other inputs gets its own result. Partials of another shape are refused."""
    from harness.engine.kernels.paged_attention import paged_decode, split_partials

    splits, partials = (10 if split_keys else 32), None
    for seed in (1, 2):
        inputs = _decode_inputs(seed, 8, torch.float8_e4m3fn)
        if partials is None:
            partials = split_partials(inputs[0], splits)
            for t in partials:
                t.fill_(float("nan"))
        scale = inputs[0].shape[-1] ** -0.5
        out = paged_decode(*inputs, scale, splits, 0.5, 0.5, None, split_keys, None, partials)
        _check_decode(inputs, out)
    with pytest.raises(ValueError, match="partials for"):
        paged_decode(*inputs, scale, splits + 1, 0.5, 0.5, None, split_keys, None, partials)


@pytest.mark.parametrize("programs", [1, 2])
def test_paged_decode_fixed_splits_loop_over_the_work_list(
    programs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer programs than splits: each runs every programs-th split of the list (the engine
    launches up to 32 an SM, so the tests' small batches never loop otherwise)."""
    from harness.engine.kernels import paged_attention

    monkeypatch.setattr(paged_attention, "work_programs", lambda *args: programs)
    inputs = _decode_inputs(programs, 8, torch.float8_e4m3fn)
    d = inputs[0].shape[-1]
    out = paged_attention.paged_decode(*inputs, d**-0.5, 10, 0.5, 0.5, None, 64)
    _check_decode(inputs, out)


@pytest.mark.parametrize(
    "block_n,num_warps,num_stages", [(64, 4, 1), (32, 2, 1), (128, 8, None), (16, 1, 1)]
)
@pytest.mark.parametrize("fp16_dot", [False, True])
@pytest.mark.parametrize("group,num_splits", [(1, 1), (8, 3)])
def test_paged_decode_bench_variants_match_reference(
    block_n: int, num_warps: int, num_stages: int | None, fp16_dot: bool, group: int,
    num_splits: int,
) -> None:  # fmt: skip
    """The kernel shapes decode_kernel_bench times (FP8 cache: fp16_dot applies)."""
    from harness.engine.kernels.paged_attention import (
        DecodeTiling,
        paged_decode,
        paged_decode_reference,
    )

    torch.manual_seed(group + block_n)
    b, hkv, d, bs, max_blocks = 5, 4, 128, 16, 30
    num_blocks = b * max_blocks
    k_cache = torch.randn(hkv, num_blocks, bs, d, device="cuda").to(torch.float8_e4m3fn)
    v_cache = torch.randn(hkv, num_blocks, bs, d, device="cuda").to(torch.float8_e4m3fn)
    tables = torch.randperm(num_blocks, device="cuda").view(b, max_blocks)
    ctx = torch.tensor([1, 17, 200, 333, max_blocks * bs], device="cuda", dtype=torch.int32)
    q = torch.randn(b, hkv * group, d, device="cuda", dtype=torch.bfloat16)
    tile = DecodeTiling(block_n, num_warps, num_stages, fp16_dot)
    out = paged_decode(q, k_cache, v_cache, tables, ctx, d**-0.5, num_splits, 0.5, 0.5, tile)
    ref = paged_decode_reference(q, k_cache, v_cache, tables, ctx, d**-0.5, 0.5, 0.5)
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < 1e-2


def test_paged_decode_zero_context_rows_are_zero() -> None:
    from harness.engine.kernels.paged_attention import paged_decode

    k_cache = torch.full((2, 4, 16, 128), float("nan"), device="cuda", dtype=torch.bfloat16)
    q = torch.randn(3, 4, 128, device="cuda", dtype=torch.bfloat16)
    tables = torch.zeros(3, 4, dtype=torch.int64, device="cuda")
    ctx = torch.zeros(3, dtype=torch.int32, device="cuda")
    out = paged_decode(q, k_cache, k_cache, tables, ctx, 0.1, 2)
    assert torch.equal(out, torch.zeros_like(out))
