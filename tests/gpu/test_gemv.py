"""The Triton GEMV (kernels/gemv.py) vs its fp32 reference, on the shapes we run (the dense
linear method's choice between it and cuBLAS: test_engine_gpu.py)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

# (N, K): the 7B's qkv, o, gate|up, down and head, the 70B's head, an odd shape (masks).
SHAPES = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008), (32000, 4096),
          (32000, 8192), (1000, 300)]  # fmt: skip


def _configs() -> list:
    from harness.engine.kernels.gemv import GemvConfig

    tried = [GemvConfig(16, 512), GemvConfig(8, 1024, 8, 3), GemvConfig(32, 256, 4)]
    return [None, *tried]  # None: config_for's pick


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_matches_reference(m: int, n: int, k: int, dtype: torch.dtype) -> None:
    from harness.engine.kernels.gemv import gemv_reference, gemv_triton

    g = torch.Generator(device="cuda").manual_seed(n + k + m)
    x = torch.randn(m, k, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) / k**0.5
    ref = gemv_reference(x, w)
    for cfg in _configs():
        out = gemv_triton(x, w, cfg)
        assert out.dtype == dtype and out.shape == (m, n)
        # fp32 sums in another order, then one rounding to the output dtype
        torch.testing.assert_close(out.float(), ref.float(), rtol=2**-7, atol=2**-7)


def test_gemv_reads_a_strided_row() -> None:
    """x may be a view whose rows are not contiguous (a slice of a wider activation)."""
    from harness.engine.kernels.gemv import gemv_reference, gemv_triton

    wide = torch.randn(2, 8192, device="cuda", dtype=torch.bfloat16)
    x = wide[:, :4096]
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) / 64
    torch.testing.assert_close(gemv_triton(x, w).float(), gemv_reference(x, w).float(),
                               rtol=2**-7, atol=2**-7)  # fmt: skip
