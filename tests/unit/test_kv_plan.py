"""KV-cache sizing (engine/kv_plan.py): the tensor-parallel agreement and its error; the
lowest free memory and the out-of-memory detail that the engine's reports quote."""

from __future__ import annotations

import pytest
import torch

from harness.engine.kv_plan import (
    KVCacheCapacityError,
    lowest_free_bytes,
    oom_detail,
    plan_kv_cache,
)
from harness.engine.model.llama import LlamaConfig

CONFIG = LlamaConfig(256, 64, 128, 2, 4, 2)
CPU = torch.device("cpu")


def _plan(agree=None, utilization: float = 0.5, num_kv_blocks: int = 10):  # noqa: ANN001, ANN202
    return plan_kv_cache(CONFIG, torch.float32, CPU, 16, utilization, num_kv_blocks, 0, agree)


def test_every_rank_takes_the_least_block_count() -> None:
    asked = []

    def agree(values: list[float], op: str) -> list[float]:
        asked.append((values, op))
        return [7.0]  # another rank fits 7

    assert _plan(agree).num_blocks == 7
    assert asked == [([10], "min")]


def test_a_rank_without_room_fails_every_rank_with_the_knob() -> None:
    with pytest.raises(KVCacheCapacityError, match="tensor-parallel rank has no room") as err:
        _plan(lambda values, op: [0.0])  # this rank fits 10, another none
    assert "10 blocks fit on this rank" in str(err.value)
    assert "gpu_memory_utilization (now 0.5)" in str(err.value)


def test_no_room_on_one_device() -> None:
    with pytest.raises(KVCacheCapacityError, match="no room for a KV block"):
        _plan(utilization=1e-15, num_kv_blocks=0)


def test_lowest_free_memory_is_free_now_less_what_the_allocator_held_above_now(monkeypatch) -> None:
    """The allocator peaked 0.75 GiB above what it holds now: free was that much lower then."""
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 1 * gib)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 1.75 * gib)
    assert lowest_free_bytes(torch.device("cuda", 0)) == 1.25 * gib


def test_the_out_of_memory_detail_is_the_first_line_of_torchs_message() -> None:
    first = "CUDA out of memory. Tried to allocate 168.00 MiB. GPU 0 has 95.00 MiB free."
    err = torch.OutOfMemoryError(
        first + "\nIf reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF"
    )
    assert oom_detail(err) == first
    assert oom_detail(torch.OutOfMemoryError()) == "OutOfMemoryError"
