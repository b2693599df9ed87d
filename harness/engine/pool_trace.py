"""Which allocations made the CUDA graphs' memory pool: a diagnosis, on when the environment
sets HARNESS_GRAPH_POOL_TRACE=1. The capture then records torch's allocator history (Python
stacks only) and logs the pool's cudaMallocs grouped by the harness line whose allocation
asked for each. Off by default: recording slows the capture."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any

import torch

logger = logging.getLogger(__name__)

ENV = "HARNESS_GRAPH_POOL_TRACE"


def wanted() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def start() -> None:
    torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)


def stop_and_log(pool: tuple[int, int] | None, device: torch.device) -> None:
    snapshot = torch.cuda.memory._snapshot(device)
    torch.cuda.memory._record_memory_history(enabled=None)
    rows = pool_mallocs(snapshot, pool, device_index(device))
    logger.info(
        "CUDA graphs' pool, %s: %s", ENV,
        "; ".join(f"{b / 2**20:.1f} MiB in {n} from {caller}" for caller, n, b in rows) or "none",
    )  # fmt: skip


def pool_segments(
    segments: list[dict[str, Any]], pool: tuple[int, int] | None, device: int
) -> list[tuple[int, int]]:
    """(start, end) addresses of the segments that `pool` holds on `device` (entries of
    torch.cuda.memory_snapshot())."""
    return [
        (s["address"], s["address"] + s["total_size"]) for s in segments
        if pool is not None and tuple(s.get("segment_pool_id", ())) == tuple(pool)
        and s.get("device", device) == device
    ]  # fmt: skip


def pool_mallocs(
    snapshot: dict[str, Any], pool: tuple[int, int] | None, device: int
) -> list[tuple[str, int, int]]:
    """(caller, cudaMallocs, bytes) of the segments that `pool` holds in the snapshot, most
    bytes first; caller: the innermost frame under harness/ of the allocation that asked
    ("file:line function"), or the innermost frame if none is."""
    if pool is None:
        return []
    held = pool_segments(snapshot["segments"], pool, device)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in snapshot["device_traces"][device]:
        if entry["action"] != "segment_alloc":
            continue
        if not any(lo <= entry["addr"] < hi for lo, hi in held):
            continue
        frames = entry.get("frames") or []
        ours = [f for f in frames if "/harness/" in f["filename"]] or frames
        caller = (
            f"{ours[0]['filename'].rsplit('/', 1)[-1]}:{ours[0]['line']} {ours[0]['name']}"
            if ours else "?"
        )  # fmt: skip
        totals[caller][0] += 1
        totals[caller][1] += entry["size"]
    return sorted(((c, n, b) for c, (n, b) in totals.items()), key=lambda r: -r[2])
