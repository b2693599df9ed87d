"""The C paged decode attention against the plain-torch gather + SDPA path it replaces."""

from __future__ import annotations

import pytest
import torch

from harness.engine.kernels import cpu_attention
from harness.engine.model.attention import DecodeGroup, PagedAttention

pytestmark = pytest.mark.skipif(
    not cpu_attention.is_available(torch.float32, 64), reason="no C compiler for the CPU kernels"
)


def random_case(num_heads, num_kv_heads, head_dim, block_size, lens, seed=0):
    """Caches with shuffled (non-contiguous) blocks; q a strided view like the fused qkv's."""
    g = torch.Generator().manual_seed(seed)
    per_row = [-(-n // block_size) for n in lens]
    num_blocks = sum(per_row) + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, i = [], 0
    for n in per_row:
        tables.append(perm[i : i + n])
        i += n
    width = max(per_row)
    padded = torch.tensor([t + [t[0]] * (width - len(t)) for t in tables])  # [B, width]
    shape = (num_kv_heads, num_blocks, block_size, head_dim)
    k, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    qkv = torch.randn(len(lens), num_heads + 2 * num_kv_heads, head_dim, generator=g)
    return qkv[:, :num_heads], k, v, padded


def reference(q, k, v, tables, lens):
    attn = PagedAttention(q.shape[1], k.shape[0], k.shape[-1])
    attn.k_cache, attn.v_cache = k, v
    keys = torch.arange(tables.shape[1] * k.shape[2])
    mask = (keys[None] < torch.tensor(lens)[:, None]).view(1, len(lens), 1, -1)
    return attn._decode(q, DecodeGroup(0, tables, mask))


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim,block_size,lens",
    [
        (9, 3, 64, 16, [1, 5, 16, 17, 33, 250]),  # SmolLM2's heads; lengths around blocks
        (4, 4, 32, 4, [3, 8, 9]),  # MHA
        (8, 1, 128, 1, [1, 2, 40]),  # MQA, one-token blocks, Llama head_dim
        (64, 8, 128, 16, [700, 1024]),  # Llama-2-70B's heads, long contexts
        (6, 2, 40, 8, [7] * 5),  # head_dim not a multiple of the vector width
    ],
)
def test_kernel_matches_gather_and_sdpa(num_heads, num_kv_heads, head_dim, block_size, lens):
    q, k, v, tables = random_case(num_heads, num_kv_heads, head_dim, block_size, sorted(lens))
    lens = sorted(lens)
    got = cpu_attention.paged_decode_cpu(q, k, v, tables, torch.tensor(lens), head_dim**-0.5)
    want = reference(q, k, v, tables, lens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_one_thread_and_many_agree():
    q, k, v, tables = random_case(9, 3, 64, 16, list(range(1, 200, 7)))
    lens = torch.tensor(list(range(1, 200, 7)))
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_attention.paged_decode_cpu(q, k, v, tables, lens, 0.125)
        torch.set_num_threads(4)
        many = cpu_attention.paged_decode_cpu(q, k, v, tables, lens, 0.125)
    finally:
        torch.set_num_threads(torch_threads)
    assert torch.equal(one, many)  # each row's sums run in one fixed order


def test_large_scores_do_not_overflow():
    """Softmax subtracts the row maximum: scores of hundreds stay finite."""
    q, k, v, tables = random_case(2, 1, 16, 4, [12])
    q = q * 300
    got = cpu_attention.paged_decode_cpu(q, k, v, tables, torch.tensor([12]), 16**-0.5)
    assert torch.isfinite(got).all()
    # scores near 300 carry ~2e-5 of fp32 rounding, which exp turns into relative error
    torch.testing.assert_close(got, reference(q, k, v, tables, [12]), rtol=1e-4, atol=1e-4)


def test_only_fp32_and_head_dims_of_whole_vectors():
    assert not cpu_attention.is_available(torch.bfloat16, 64)
    assert not cpu_attention.is_available(torch.float32, 36)  # the engine keeps torch ops


def test_cache_write_matches_index_copy():
    """Rows of a fused qkv view land in the same slots as PagedAttention's index_copy_."""
    g = torch.Generator().manual_seed(1)
    num_kv, d, num_blocks, bs = 3, 64, 10, 4
    qkv = torch.randn(7, 9 + 2 * num_kv, d, generator=g)
    k, v = qkv[:, 9 : 9 + num_kv], qkv[:, 9 + num_kv :]
    slots = torch.randperm(num_blocks * bs, generator=g)[:7]
    got = [torch.zeros(num_kv, num_blocks, bs, d) for _ in range(2)]
    want = [torch.zeros(num_kv, num_blocks, bs, d) for _ in range(2)]
    cpu_attention.write_kv_cpu(k, v, got[0], got[1], slots)
    for cache, rows in zip(want, (k, v), strict=True):
        cache.view(num_kv, -1, d).index_copy_(1, slots, rows.transpose(0, 1))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
