"""Model-runner metadata: which prefill chunks share one varlen attention call (CUDA path)."""

from __future__ import annotations

import torch

from harness.engine.model.attention import PrefillChunk
from harness.engine.model_runner import fresh_prefills


def _chunk(start: int, n: int, context: int = 0) -> PrefillChunk:
    mask = torch.ones(n, context + n, dtype=torch.bool) if context else None
    return PrefillChunk(start, n, context, torch.zeros(1, dtype=torch.int64), mask)


def test_fresh_prefills_packs_the_new_prompts_after_a_continued_chunk():
    chunks = [_chunk(3, 10, context=16), _chunk(13, 5), _chunk(18, 1), _chunk(19, 7)]
    fresh = fresh_prefills(chunks, torch.device("cpu"))
    assert (fresh.row_start, fresh.row_end, fresh.max_len) == (13, 26, 7)
    assert fresh.cu_seqlens.tolist() == [0, 5, 6, 13]
    assert fresh.cu_seqlens.dtype == torch.int32


def test_fresh_prefills_none_without_fresh_chunks():
    assert fresh_prefills([], torch.device("cpu")) is None
    assert fresh_prefills([_chunk(0, 4, context=8)], torch.device("cpu")) is None
