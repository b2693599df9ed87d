"""pool_trace.pool_mallocs: the graphs' pool's cudaMallocs by the harness line that asked."""

from __future__ import annotations

from harness.engine.pool_trace import pool_mallocs, pool_segments


def _frame(path: str, line: int, name: str) -> dict[str, object]:
    return {"filename": path, "line": line, "name": name}


def test_pool_mallocs_groups_the_pools_segments_by_their_innermost_harness_caller():
    decode = [_frame("/site/torch/cuda/memory.py", 9, "empty"),  # innermost first
              _frame("/repo/harness/engine/kernels/paged_attention.py", 340, "paged_decode"),
              _frame("/repo/harness/engine/cuda_graph.py", 250, "_capture")]  # fmt: skip
    snapshot = {
        "segments": [
            {"address": 1000, "total_size": 3000, "segment_pool_id": (1, 2), "device": 0},
            {"address": 9000, "total_size": 500, "segment_pool_id": (1, 2), "device": 0},
            {"address": 5000, "total_size": 1000, "segment_pool_id": (0, 0), "device": 0},
        ],
        "device_traces": [[
            {"action": "segment_alloc", "addr": 1000, "size": 2000, "frames": decode},
            {"action": "alloc", "addr": 1000, "size": 1500, "frames": decode},
            {"action": "segment_alloc", "addr": 2000, "size": 1000, "frames": decode},
            {"action": "segment_alloc", "addr": 9000, "size": 500,
             "frames": [_frame("/site/torch/nn/linear.py", 5, "forward")]},
            {"action": "segment_alloc", "addr": 5000, "size": 1000, "frames": decode},
        ]],
    }  # fmt: skip
    assert pool_segments(snapshot["segments"], (1, 2), 0) == [(1000, 4000), (9000, 9500)]
    assert pool_segments(snapshot["segments"], None, 0) == []
    assert pool_mallocs(snapshot, (1, 2), 0) == [
        ("paged_attention.py:340 paged_decode", 2, 3000),
        ("linear.py:5 forward", 1, 500),
    ]
    assert pool_mallocs(snapshot, (7, 7), 0) == []
    assert pool_mallocs(snapshot, None, 0) == []
