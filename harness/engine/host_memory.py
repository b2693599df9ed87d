"""The engine process's host memory: glibc malloc settings for an engine on the CPU, and
Python's garbage collector during a run.

Malloc: keep freed tensors for reuse. A prefill step's activations are tens of MB each. glibc
serves blocks that large with a fresh mmap() and unmaps them on free (and trims the heap top
past 128 KiB), so every step's tensors page-fault in again. Measured on the 2-core dev VM, one
100-sample Offline query through the engine: 2.04M minor page faults and 35.6 s before, 0.43M
and 33.2 s after (same script, one run each). The cost: the process keeps its peak heap
instead of returning it to the system, which an engine process, at its peak every step, does
anyway.

Garbage collector: a full collection scans every tracked object and stops every thread that
holds the GIL, the engine's loop and LoadGen's callbacks alike. A run's process holds ~360k
(the default model's Server run on the 2-core dev VM: 361,702, a full collection 166.9 ms), and
one comes due once a quarter as many again have outlived two younger collections: requests
that stay for seconds in a Server run do. So a run freezes the heap it starts with
(`GcPauses.begin`: later full collections scan only what the run made), counts the full
collections it still sees, and unfreezes it at the end (`end`), so that cycles among the
frozen objects are collected once the run is over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 1 << 30  # blocks below this come from the heap, and return to it
TRIM_THRESHOLD = (1 << 31) - 1  # free heap top kept before it is given back (C int max)
TOP_PAD = 256 << 20  # extra heap asked for each time it grows


@functools.cache
def keep_freed_memory() -> bool:
    """Set the thresholds once per process; False (logged) where this is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        logger.info("no glibc mallopt (%s): malloc left as it is", e)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
    logger.info("malloc keeps freed memory for reuse (mmap/trim thresholds raised): %s", ok)
    return ok


@dataclass
class GcPauses:
    """Full collections (Python's oldest generation) from `begin` to `end`: count and time."""

    frozen: int = 0  # objects moved to the permanent generation at begin
    before_ms: float = 0.0  # a full collection at begin, before and after the freeze
    after_ms: float = 0.0
    count: int = 0
    total_s: float = 0.0
    longest_s: float = 0.0
    _started: float | None = None

    @classmethod
    def begin(cls) -> GcPauses:
        """Collect, freeze what is alive (the engine, the dataset, the modules), time a full
        collection before and after, and count the run's full collections from now."""
        pauses = cls()
        start = time.perf_counter()
        gc.collect()
        pauses.before_ms = (time.perf_counter() - start) * 1e3
        gc.freeze()
        pauses.frozen = gc.get_freeze_count()
        start = time.perf_counter()
        gc.collect()
        pauses.after_ms = (time.perf_counter() - start) * 1e3
        gc.callbacks.append(pauses._on_gc)
        return pauses

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            took = time.perf_counter() - self._started
            self._started = None
            self.count += 1
            self.total_s += took
            self.longest_s = max(self.longest_s, took)

    def end(self) -> str:
        """Stop counting and unfreeze the heap; the account for the closing log."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()
        return (
            f"{self.count} full garbage collections during the run, {self.total_s * 1e3:.1f} ms "
            f"in all, the longest {self.longest_s * 1e3:.1f} ms (the starting heap of "
            f"{self.frozen:,} objects frozen: a full collection took {self.before_ms:.1f} ms "
            f"before, {self.after_ms:.1f} ms after)"
        )
