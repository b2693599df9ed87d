"""Tokens generated per engine step over time, and the steady-state rate they imply.

Plain Python. A short Offline run spends a large share of its time ramping up (every prompt
prefilled before the first answer) and draining (the longest answers alone at the end); the
rate between the 10% and the 90% marks of all generated tokens shows the engine while full.
"""

from __future__ import annotations

import bisect
import time
from array import array


class StepLog:
    """25 bytes per step (typed arrays), so a long-running server keeps it cheaply."""

    def __init__(self) -> None:
        self.times = array("d")  # [num_steps] seconds (perf_counter) at each step's end
        self.durations = array("d")  # [num_steps] seconds each step took
        self.cumulative_tokens = array("q")  # [num_steps] tokens generated up to that step
        self.with_prefill = array("b")  # [num_steps] 1 where the step computed prompt tokens
        # Where the engine loop's time went, summed over steps. queue: schedule, build the
        # inputs and queue the model (on a GPU host work and launches; on a CPU the model
        # itself); wait: for the sampled tokens; apply: update requests, make events.
        self.queue_s = self.wait_s = self.apply_s = 0.0

    def record(
        self, num_tokens: int, seconds: float, now: float | None = None, prefill: bool = False
    ) -> None:
        """A step that ended now (perf_counter), took `seconds` and generated num_tokens."""
        total = (self.cumulative_tokens[-1] if self.cumulative_tokens else 0) + num_tokens
        self.times.append(time.perf_counter() if now is None else now)
        self.durations.append(seconds)
        self.cumulative_tokens.append(total)
        self.with_prefill.append(prefill)

    def time_split(self) -> tuple[int, float, int, float]:
        """(decode-only steps, their seconds, steps with prompt tokens, their seconds)."""
        n = [0, 0]
        seconds = [0.0, 0.0]
        for kind, duration in zip(self.with_prefill, self.durations, strict=True):
            n[kind] += 1
            seconds[kind] += duration
        return n[0], seconds[0], n[1], seconds[1]

    def loop_split_ms(self) -> tuple[float, float, float]:
        """(queue, wait, apply) milliseconds per step on average."""
        n = max(1, len(self.times))
        return self.queue_s * 1e3 / n, self.wait_s * 1e3 / n, self.apply_s * 1e3 / n

    @property
    def span(self) -> float:
        """Seconds from the first step's start to the last step's end (idle gaps included)."""
        return self.times[-1] - self.times[0] + self.durations[0] if self.times else 0.0

    @property
    def num_tokens(self) -> int:
        return self.cumulative_tokens[-1] if self.cumulative_tokens else 0

    def rate_between(self, lo: float = 0.1, hi: float = 0.9) -> float:
        """Tokens/s from the step that reached lo x all tokens to the one that reached hi x;
        0.0 when there are too few steps to tell."""
        total = self.num_tokens
        i = bisect.bisect_left(self.cumulative_tokens, lo * total)
        j = bisect.bisect_left(self.cumulative_tokens, hi * total)
        if total == 0 or j <= i or self.times[j] <= self.times[i]:
            return 0.0
        return (self.cumulative_tokens[j] - self.cumulative_tokens[i]) / (
            self.times[j] - self.times[i]
        )
