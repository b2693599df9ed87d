"""The input embedding read by the GPU from pinned host memory (engine knob
`embedding_on_host`): a step's rows cross PCIe, and the table's GPU bytes go to the KV cache
instead (0.49 GiB for Llama-2-70B's bf16 table). Pinned host memory is addressable from a
kernel under CUDA's unified addressing, so the gather is an ordinary launch, fine inside a CUDA
graph. Plain-torch reference here; tests/gpu/test_embedding.py compares them. Importable
without Triton (the reference still works).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference only
    triton = None
    tl = None

BLOCK = 1024  # values a program copies


if triton is not None:

    @triton.jit
    def _gather_rows_kernel(ids_ptr, table_ptr, out_ptr, width, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = cols < width
        token = tl.load(ids_ptr + row).to(tl.int64)
        values = tl.load(table_ptr + token * width + cols, mask=keep)
        tl.store(out_ptr + row.to(tl.int64) * width + cols, values, mask=keep)


def gather_rows(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """ids [N] on the GPU, table [vocab, width] in pinned host memory -> [N, width] on ids'
    device. No host sync."""
    out = torch.empty(ids.shape[0], table.shape[1], dtype=table.dtype, device=ids.device)
    if ids.shape[0]:
        grid = (ids.shape[0], triton.cdiv(table.shape[1], BLOCK))
        _gather_rows_kernel[grid](ids, table, out, table.shape[1], BLOCK=BLOCK)
    return out


def gather_rows_reference(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return table[ids.cpu()].to(ids.device)
