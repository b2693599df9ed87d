"""One varlen flash call for packed fresh prompts vs per-prompt causal SDPA (the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (4, 4)])
def test_varlen_causal_attention_matches_per_prompt_sdpa(heads: int, kv_heads: int) -> None:
    from harness.engine.model.attention import FreshPrefills, varlen_causal_attention

    torch.manual_seed(0)
    lens, d = [5, 130, 1, 64], 128
    total = sum(lens)
    qkv = torch.randn(total, (heads + 2 * kv_heads) * d, device="cuda", dtype=torch.bfloat16)
    q = qkv[:, : heads * d].view(total, heads, d)  # strided views, as the model passes them
    k = qkv[:, heads * d : (heads + kv_heads) * d].view(total, kv_heads, d)
    v = qkv[:, (heads + kv_heads) * d :].view(total, kv_heads, d)
    cu = torch.tensor([0, 5, 135, 136, 200], dtype=torch.int32, device="cuda")
    fresh = FreshPrefills(row_start=0, row_end=total, cu_seqlens=cu, max_len=max(lens))
    out = varlen_causal_attention(q, k, v, fresh, d**-0.5)
    assert out.shape == (total, heads * d)
    start = 0
    for n in lens:
        rows = slice(start, start + n)
        ref = F.scaled_dot_product_attention(
            q[rows].transpose(0, 1)[None], k[rows].transpose(0, 1)[None],
            v[rows].transpose(0, 1)[None], is_causal=True, enable_gqa=True,
        )[0].transpose(0, 1).reshape(n, heads * d)  # fmt: skip
        torch.testing.assert_close(out[rows], ref, rtol=2e-2, atol=2e-2)
        start += n
