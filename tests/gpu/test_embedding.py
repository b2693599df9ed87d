"""The embedding gather from pinned host memory (kernels/embedding.py) against its reference."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("width", [64, 1000, 8192])
def test_gather_rows_from_pinned_host_memory_matches_reference(width: int) -> None:
    """Every row exact (a copy), the first and last ids and repeats included, for widths
    under, between and over the kernel's block; an empty step gives an empty result."""
    from harness.engine.kernels.embedding import gather_rows, gather_rows_reference

    table = torch.randn(3000, width, dtype=torch.bfloat16).pin_memory()
    ids = torch.tensor([0, 2999, 7, 7, 1234] + list(range(40, 300, 3)), device="cuda")
    assert torch.equal(gather_rows(ids, table), gather_rows_reference(ids, table))
    assert gather_rows(ids[:0], table).shape == (0, width)


def test_gather_rows_replays_in_a_cuda_graph_with_new_ids() -> None:
    from harness.engine.kernels.embedding import gather_rows, gather_rows_reference

    table = torch.randn(500, 256, dtype=torch.bfloat16).pin_memory()
    ids = torch.arange(16, device="cuda")
    gather_rows(ids, table)  # compiled before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gather_rows(ids, table)
    ids.copy_(torch.randint(0, 500, (16,), device="cuda"))
    graph.replay()
    assert torch.equal(out, gather_rows_reference(ids, table))
