"""Tokens generated per engine step over time, and the steady-state rate they imply.

Plain Python. A short Offline run spends a large share of its time ramping up (every prompt
prefilled before the first answer) and draining (the longest answers alone at the end); the
rate between the 10% and the 90% marks of all generated tokens shows the engine away from both
ends (with longest-first admission the longest prompts come first, so that rate runs above a
long run's average), the time each share of the tokens took shows the ends themselves, and
the decode-only steps grouped by their sequences show how long it ran far from full.
"""

from __future__ import annotations

import bisect
import itertools
import time
from array import array
from collections.abc import Sequence

TOKEN_SHARES = (0.1, 0.9, 0.99)  # the ramp, the middle, the drain's start and its last 1%


def time_by_token_share(
    end_s: Sequence[float], cumulative_tokens: Sequence[int], start_s: float = 0.0,
    cuts: Sequence[float] = TOKEN_SHARES,
) -> str:  # fmt: skip
    """How long each share of the generated tokens took, split at `cuts`: "0%-10% 60.4 s
    (1,461 tok/s), 10%-90% ...". end_s: each step's end, cumulative_tokens: tokens generated up
    to it (both per step, in order), start_s: the first step's start."""
    if not cumulative_tokens or cumulative_tokens[-1] == 0:
        return ""
    parts, last_s, last_tokens, total = [], start_s, 0, cumulative_tokens[-1]
    for lo, hi in itertools.pairwise([0.0, *cuts, 1.0]):
        i = bisect.bisect_left(cumulative_tokens, hi * total)  # the step that reached hi
        seconds, tokens = end_s[i] - last_s, cumulative_tokens[i] - last_tokens
        rate = tokens / seconds if seconds > 0 else 0.0
        parts.append(f"{lo:.0%}-{hi:.0%} {seconds:.1f} s ({rate:,.0f} tok/s)")
        last_s, last_tokens = end_s[i], cumulative_tokens[i]
    return ", ".join(parts)


class StepLog:
    """33 bytes per step (typed arrays), so a long-running server keeps it cheaply."""

    def __init__(self) -> None:
        self.times = array("d")  # [num_steps] seconds (perf_counter) at each step's end
        self.durations = array("d")  # [num_steps] seconds each step took
        self.cumulative_tokens = array("q")  # [num_steps] tokens generated up to that step
        self.with_prefill = array("b")  # [num_steps] 1 where the step computed prompt tokens
        self.rows = array("i")  # [num_steps] sequences the step ran (decodes and prompt chunks)
        self.gpu_seconds = array("f")  # [num_steps] the device's part of each step (CUDA; else 0)
        # Where the engine loop's time went, summed over steps. queue: schedule, build the
        # inputs and queue the model (on a GPU host work and launches; on a CPU the model
        # itself); wait: for the sampled tokens; apply: update requests, make events.
        self.queue_s = self.wait_s = self.apply_s = 0.0

    def record(
        self,
        num_tokens: int,
        seconds: float,
        now: float | None = None,
        prefill: bool = False,
        rows: int = 0,
        gpu_seconds: float = 0.0,
    ) -> None:
        """A step of `rows` sequences that ended now (perf_counter), took `seconds`, of which
        the device worked gpu_seconds (CUDA events), and generated num_tokens."""
        total = (self.cumulative_tokens[-1] if self.cumulative_tokens else 0) + num_tokens
        self.times.append(time.perf_counter() if now is None else now)
        self.durations.append(seconds)
        self.cumulative_tokens.append(total)
        self.with_prefill.append(prefill)
        self.rows.append(rows)
        self.gpu_seconds.append(gpu_seconds)

    def _by_kind(self, values: array) -> tuple[float, float]:
        """values summed over the decode-only steps, then over the steps with prompt tokens."""
        sums = [0.0, 0.0]
        for kind, value in zip(self.with_prefill, values, strict=True):
            sums[kind] += value
        return sums[0], sums[1]

    def time_split(self) -> tuple[int, float, int, float]:
        """(decode-only steps, their seconds, steps with prompt tokens, their seconds)."""
        with_prompts = sum(self.with_prefill)
        decode_s, prompt_s = self._by_kind(self.durations)
        return len(self.with_prefill) - with_prompts, decode_s, with_prompts, prompt_s

    def gpu_split(self) -> tuple[float, float]:
        """(GPU seconds of the decode-only steps, of the steps with prompt tokens)."""
        return self._by_kind(self.gpu_seconds)

    def decode_steps_by_sequences(self) -> list[tuple[int, int, int, float, int, float]]:
        """Decode-only steps grouped by their sequences, 1-16, 17-32, 33-64 and so on doubling:
        (fewest, most, steps, seconds, tokens, GPU seconds) for each group that has steps."""
        groups: dict[int, list] = {}
        previous = 0
        for prefill, rows, seconds, total, gpu in zip(
            self.with_prefill, self.rows, self.durations, self.cumulative_tokens,
            self.gpu_seconds, strict=True,
        ):  # fmt: skip
            tokens, previous = total - previous, total
            if prefill:
                continue
            most = 16
            while most < rows:
                most *= 2
            group = groups.setdefault(most, [0, 0.0, 0, 0.0])
            group[0] += 1
            group[1] += seconds
            group[2] += tokens
            group[3] += gpu
        return [
            (1 if most == 16 else most // 2 + 1, most, *groups[most]) for most in sorted(groups)
        ]

    def format_decode_steps_by_sequences(self) -> str:
        """decode_steps_by_sequences as one line: "1-16 sequences: 812 steps, 24.1 s, 9,120 tokens;
        ..."; on CUDA each group's seconds also say the GPU's: "24.1 s (GPU 21.5 s)"."""
        return "; ".join(
            f"{lo}-{hi} sequences: {n} steps, {s:.1f} s"
            + (f" (GPU {g:.1f} s)" if g else "")
            + f", {t:,} tokens"
            for lo, hi, n, s, t, g in self.decode_steps_by_sequences()
        )

    def format_time_by_token_share(self) -> str:
        """time_by_token_share of this log's steps: where a run ramps up and drains."""
        start = self.times[0] - self.durations[0] if self.times else 0.0
        return time_by_token_share(self.times, self.cumulative_tokens, start)

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
